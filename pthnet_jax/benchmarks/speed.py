"""`pthnet bench`: pthnet-jax and a PyTorch baseline, side by side, on FERv39k-sized synthetic data.

    pthnet bench [--quick] [--workdir DIR] [--epochs N] [--torch-epochs N] [--bf16] [--output results.json]

Measures for both: end-to-end training throughput over full epochs with data loading included,
evaluation throughput over the whole test split, start-up time (data placement and compilation for
JAX, model and loader construction for PyTorch) and peak memory; for JAX also the FLOPs per clip
(XLA cost analysis), the achieved FLOP/s and where the time went (a jax.profiler trace of a few
training steps, summarised by kind of operation, and the run's time split into start-up, training,
evaluation and checkpoints). Each side runs in a process of its own, so memory figures are its own
and the JAX start-up is a cold one (a fresh compilation cache under the work directory).

The baseline follows the original's data path: three `.npy` reads per clip per epoch through a
`DataLoader` (see `torch_baseline.py`). Default sizes are FERv39k's (31,088 train / 7,847 test clips,
window counts from the real lists when present); `--quick` uses 2,000 / 500 clips and 3 epochs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pthnet_jax.benchmarks.costs import flops_per_clip, format_profile, model_config
from pthnet_jax.fsutil import atomic_write_json

# Dense peaks (TFLOP/s) for the fraction-of-peak line; CPUs are not listed (it depends on the SKU).
PEAK_TFLOPS = {"H100": {"bfloat16": 989.0, "float32": 67.0}, "H200": {"bfloat16": 989.0, "float32": 67.0}}


def prepare_data(workdir: Path, train_clips: int, test_clips: int, annotation_dir: Path | None = None
                 ) -> tuple[Path, Path, float]:
    """Synthetic features in the original layout + their TFDS import (reused when present)."""
    from pthnet_jax.data.importer import import_features
    from pthnet_jax.data.synth import synthesize

    root, data_dir = workdir / f"features-{train_clips}-{test_clips}", workdir / f"data-{train_clips}-{test_clips}"
    import_seconds = float("nan")
    if not data_dir.exists():
        if not (root / "annotation").exists():
            synthesize(root, "FERv39k", clips=train_clips, test_clips=test_clips, reverse=False,
                       annotation_dir=annotation_dir)
        started = time.perf_counter()
        import_features("FERv39k", root, data_dir)
        import_seconds = time.perf_counter() - started
    return root, data_dir, import_seconds


def _child(side: str, spec: dict[str, Any], workdir: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    spec_path, out_path = workdir / f".{side}-spec.json", workdir / f"{side}-result.json"
    atomic_write_json(spec_path, spec)
    out_path.unlink(missing_ok=True)
    module = "pthnet_jax.benchmarks.torch_baseline" if side == "torch" else "pthnet_jax.benchmarks.jax_run"
    args = [sys.executable, "-m", module, str(spec_path), str(out_path)]
    completed = subprocess.run(args, env={**os.environ, **(env or {})})
    if completed.returncode != 0 or not out_path.exists():
        raise RuntimeError(f"the {side} benchmark process failed (exit {completed.returncode}); see its output above")
    return json.loads(out_path.read_text())


# ---- table ----------------------------------------------------------------------------------------

ROWS = (  # label, key, higher is better
    ("training clips/s, all epochs (data incl.)", "train_clips_per_s", True),
    ("training clips/s, epochs after the first", "train_clips_per_s_steady", True),
    ("evaluation clips/s (whole test split)", "eval_clips_per_s", True),
    ("start-up s (placement+compile / model+loaders)", "startup_s", False),
    ("first epoch s", "first_epoch_s", False),
    ("peak host memory GiB (main process)", "peak_host_memory_gib", False),
    ("peak device memory GiB", "peak_device_memory_gib", False),
)


def format_table(ours: dict[str, Any], theirs: dict[str, Any] | None, name: str = "pthnet-jax") -> str:
    def fmt(value):
        if value is None:
            return f"{'-':>12}"
        return f"{value:12.1f}" if abs(value) >= 10 else f"{value:12.3f}"

    lines = [f"{'metric':<50} {name:>12} {'PyTorch':>12} {'ratio':>8}"]
    for label, key, higher_better in ROWS:
        a, b = ours.get(key), (theirs or {}).get(key)
        if a is None and b is None:
            continue
        ratio = (a / b if higher_better else b / a) if a and b else None
        lines.append(f"{label:<50} {fmt(a)} {fmt(b)} {'-' if ratio is None else f'{ratio:.2f}x':>8}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pthnet bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotation-dir", type=Path,
                        help="the original's annotation/ folder: synthesize with its real window counts")
    parser.add_argument("--quick", action="store_true",
                        help="2,000 / 500 clips, 3 JAX and 2 PyTorch epochs (a few minutes on 2 CPU cores)")
    parser.add_argument("--small", action="store_true",
                        help="a short run end to end instead: 480 / 120 clips, the 20-epoch recipe, "
                             "`pthnet train` against the PyTorch baseline, process start to exit")
    parser.add_argument("--workdir", type=Path, default=Path("pthnet-bench"))
    parser.add_argument("--epochs", type=int, help="JAX epochs (default 20 full size, 3 quick)")
    parser.add_argument("--torch-epochs", type=int, default=2,
                        help="PyTorch baseline epochs (the first also starts its loader workers)")
    parser.add_argument("--torch-max-steps", type=int, help="cap the baseline's steps per epoch")
    parser.add_argument("--torch-device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--torch-workers", type=int, help="DataLoader workers (default: the original's 8, "
                        "capped at the CPU count)")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="also run JAX in bfloat16 and report the drift")
    parser.add_argument("--steps-per-dispatch", type=int, default=0,
                        help="training steps per device call (0: auto, 32)")
    parser.add_argument("--eval-batch", type=int, default=0, help="evaluation batch (0: auto)")
    parser.add_argument("--eval-repeats", type=int, default=3)
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="training steps to trace (default: 10 on CPU, 64 elsewhere; -1: none)")
    parser.add_argument("--train-clips", type=int, help="override the training split size")
    parser.add_argument("--test-clips", type=int, help="override the test split size")
    parser.add_argument("--model", default="default", help="'default' (the paper's) or 'tiny' (tests)")
    parser.add_argument("--output", type=Path, help="JSON results (default WORKDIR/results.json)")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.small:
        return main_small(args, argv)
    import jax

    train_clips, test_clips = (2000, 500) if args.quick else (31088, 7847)
    train_clips, test_clips = args.train_clips or train_clips, args.test_clips or test_clips
    epochs = args.epochs or (3 if args.quick else 20)
    workdir = args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    root, data_dir, import_seconds = prepare_data(workdir, train_clips, test_clips, args.annotation_dir)
    platform_name = jax.devices()[0].platform
    profile_steps = args.profile_steps or (10 if platform_name == "cpu" else 64)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "cpu_count": os.cpu_count(),
        "processor": _cpu_name(), "jax_version": jax.__version__, "jax_device": str(jax.devices()[0].device_kind),
        "train_clips": train_clips, "test_clips": test_clips, "import_s": import_seconds, "model": args.model,
        "command": "pthnet bench " + " ".join(argv)}
    results["flops"] = flops_per_clip(model_config(args.model))

    spec = {"data_dir": str(data_dir), "epochs": epochs, "steps_per_dispatch": args.steps_per_dispatch,
            "eval_batch": args.eval_batch, "eval_repeats": args.eval_repeats, "model": args.model,
            "profile_steps": max(profile_steps, 0), "bf16_inference": args.bf16}
    # A fresh compilation cache: the start-up figure is a cold one.
    cache_env = {"PTHNET_COMPILATION_CACHE": str(workdir / "xla-cache")}
    shutil.rmtree(workdir / "xla-cache", ignore_errors=True)
    results["load_average"] = {"start": os.getloadavg()}
    print(f"== pthnet-jax: {epochs} epochs of {train_clips} clips + evaluation of {test_clips} "
          f"(load average {_load_text()})", flush=True)
    ours = _child("jax", {**spec, "dtype": "float32", "run_dir": str(workdir / "jax-run-float32")}, workdir, cache_env)
    results["jax"] = ours
    results["load_average"]["after_jax"] = os.getloadavg()
    flops = results["flops"]
    ours["achieved_train_tflops"] = ours["train_clips_per_s_steady"] * flops["train_flops_per_clip"] / 1e12
    ours["achieved_eval_tflops"] = ours["eval_clips_per_s"] * flops["eval_flops_per_clip"] / 1e12
    kind = next((k for k in PEAK_TFLOPS if k in results["jax_device"]), None)
    if kind:
        ours["fraction_of_fp32_peak_train"] = ours["achieved_train_tflops"] / PEAK_TFLOPS[kind]["float32"]
    if args.bf16:
        shutil.rmtree(workdir / "xla-cache", ignore_errors=True)
        bf16 = _child("jax-bf16", {**spec, "dtype": "bfloat16", "run_dir": str(workdir / "jax-run-bfloat16")},
                      workdir, cache_env)
        results["jax_bf16"] = bf16
        a = np.load(workdir / "jax-run-float32" / "eval_logits.npy")
        b = np.load(workdir / "jax-run-bfloat16" / "eval_logits.npy")
        results["bf16_vs_f32"] = {  # two separately trained runs: drift of training and of inference
            "max_abs_logit_diff": float(np.abs(a - b).max()), "prediction_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
            "test_WAR_f32": ours["test_WAR_last_epoch"], "test_WAR_bf16": bf16["test_WAR_last_epoch"],
            "test_UAR_f32": ours["test_UAR_last_epoch"], "test_UAR_bf16": bf16["test_UAR_last_epoch"]}

    theirs = None if args.skip_torch else _run_torch(args, root)
    if theirs is not None:
        results["torch"] = theirs
        results["load_average"]["after_torch"] = os.getloadavg()
    table = format_table(ours, theirs)
    results["table"] = table
    output = args.output or workdir / "results.json"
    atomic_write_json(output, results)
    _report(results, args, epochs, data_dir, import_seconds, output)
    return 0


def main_small(args, argv: list[str]) -> int:
    from pthnet_jax.benchmarks import small

    train_clips, test_clips, epochs = args.train_clips or 480, args.test_clips or 120, args.epochs or 20
    workdir = args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    root, data_dir, _ = prepare_data(workdir, train_clips, test_clips, args.annotation_dir)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
                               "cpu_count": os.cpu_count(), "processor": _cpu_name(), "train_clips": train_clips,
                               "test_clips": test_clips, "epochs": epochs, "model": args.model,
                               "command": "pthnet bench " + " ".join(argv), "load_average": {"start": os.getloadavg()}}
    print(f"== pthnet-jax: `pthnet train`, {epochs} epochs of {train_clips} clips, evaluation of {test_clips} "
          f"every epoch, cold compilation cache (load average {_load_text()})", flush=True)
    results["jax"] = small.run_jax(data_dir, workdir, epochs, args.model)
    results["load_average"]["after_jax"] = os.getloadavg()
    theirs = None
    if not args.skip_torch and _have_torch():
        print(f"== PyTorch baseline: {epochs} epochs, evaluation every epoch (load average {_load_text()})", flush=True)
        theirs = small.run_torch(root, workdir, epochs, model_config(args.model).to_dict(),
                                 args.torch_device or "cpu", args.torch_workers)
        results["torch"] = theirs
        results["load_average"]["after_torch"] = os.getloadavg()
    results["report"] = small.report(results["jax"], theirs)
    output = args.output or workdir / "results-small.json"
    atomic_write_json(output, results)
    print(f"\n== pthnet bench --small: {train_clips} train / {test_clips} test clips, {epochs} epochs, model "
          f"{args.model}, {results['date']}, {results['processor']} ({results['cpu_count']} cores)")
    print(results["report"])
    print("load average (1/5/15 min): " + "; ".join(f"{when} {' '.join(f'{x:.1f}' for x in values)}"
                                                  for when, values in results["load_average"].items()))
    print(f"results -> {output}")
    return 0


def _have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        print("PyTorch is not installed: skipping the baseline (pip install \"pthnet-jax[torch]\")")
        return False
    return True


def _run_torch(args, root: Path) -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: skipping the baseline (pip install \"pthnet-jax[torch]\")")
        return None
    device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_spec = {"root": str(root), "list_dir": str(root / "annotation" / "FERv39k"),
                  "model_kwargs": model_config(args.model).to_dict(), "epochs": args.torch_epochs,
                  "max_train_steps": args.torch_max_steps, "device": device, "num_workers": args.torch_workers}
    print(f"== PyTorch baseline: {args.torch_epochs} epochs on {device} + evaluation (load average {_load_text()})",
          flush=True)
    return _child("torch", torch_spec, args.workdir.absolute())


def _load_text() -> str:
    """The 1/5/15-minute load averages; a busy machine (load above its cores) makes timings unreliable."""
    load = os.getloadavg()
    busy = load[0] > (os.cpu_count() or 1)
    return " ".join(f"{x:.1f}" for x in load) + (f", above the {os.cpu_count()} cores: timings will be low"
                                                  if busy else "")


def _report(results: dict[str, Any], args, epochs: int, data_dir: Path, import_seconds: float, output: Path) -> None:
    import jax

    ours, theirs, flops = results["jax"], results.get("torch"), results["flops"]
    train_clips, test_clips, table = results["train_clips"], results["test_clips"], results["table"]
    print(f"\n== pthnet bench: {train_clips} train / {test_clips} test clips, model {args.model}, "
          f"{results['date']}, {results['processor']} ({results['cpu_count']} cores), "
          f"JAX {jax.__version__} on {results['jax_device']} x{jax.device_count()}")
    print(f"JAX: {epochs} epochs, steps per call {'auto' if not args.steps_per_dispatch else args.steps_per_dispatch}"
          f", evaluation batch {ours['eval_batch']}; PyTorch: "
          + (f"{theirs['epochs']} epoch(s) on {theirs['device']}, {theirs['num_workers']} loader workers, "
             f"{theirs['torch_threads']} threads" if theirs else "skipped"))
    print(table)
    print(f"FLOPs per clip (XLA cost analysis): training {flops['train_flops_per_clip'] / 1e9:.3f} GFLOP "
          f"(3 levels, forward + backward + SGD), evaluation {flops['eval_flops_per_clip'] / 1e9:.3f} GFLOP (H level)"
          f"; achieved {ours['achieved_train_tflops'] * 1e3:.1f} GFLOP/s training, "
          f"{ours['achieved_eval_tflops'] * 1e3:.1f} GFLOP/s evaluation"
          + (f" ({100 * ours['fraction_of_fp32_peak_train']:.1f}% of the fp32 dense peak)"
             if "fraction_of_fp32_peak_train" in ours else ""))
    print(f"JAX run: {ours['wall_s']:.1f}s wall for {epochs} epochs = start-up {ours['startup_s']:.1f}s + training "
          f"{ours['train_s']:.1f}s (first epoch {ours['first_epoch_s']:.1f}s, ~{ours['compile_estimate_s']:.1f}s of it "
          f"compilation) + evaluation {ours['eval_in_training_s']:.1f}s + checkpoints {ours['checkpoint_s']:.1f}s; "
          f"evaluation alone {ours['eval_s']:.3f}s for {ours['eval_clips']} clips; "
          + (f"import {import_seconds:.1f}s" if np.isfinite(import_seconds) else f"data reused from {data_dir}"))
    if ours.get("time"):
        from pthnet_jax.timing import describe

        print("JAX run breakdown: " + describe(ours["time"], top=4))
    print(format_profile(ours.get("profile")))
    if "bf16_inference" in ours:
        drift = ours["bf16_inference"]
        print(f"bfloat16 inference of the float32 checkpoint: {drift['eval_clips_per_s']:.1f} clips/s; "
              f"WAR {drift['WAR_bf16']:.2f} vs {drift['WAR_f32']:.2f}, UAR {drift['UAR_bf16']:.2f} vs "
              f"{drift['UAR_f32']:.2f}, same prediction for {100 * drift['prediction_agreement']:.2f}% of clips, "
              f"max |logit diff| {drift['max_abs_logit_diff']:.4f}")
    if "bf16_vs_f32" in results:
        drift = results["bf16_vs_f32"]
        print(f"bfloat16 run: training {results['jax_bf16']['train_clips_per_s_steady']:.1f} clips/s, evaluation "
              f"{results['jax_bf16']['eval_clips_per_s']:.1f} clips/s; vs float32: test WAR "
              f"{drift['test_WAR_bf16']:.2f} vs {drift['test_WAR_f32']:.2f}, UAR {drift['test_UAR_bf16']:.2f} vs "
              f"{drift['test_UAR_f32']:.2f}, predictions agree on {100 * drift['prediction_agreement']:.1f}% "
              f"(max |logit diff| {drift['max_abs_logit_diff']:.3f})")
    load = results["load_average"]
    print("load average (1/5/15 min): " + "; ".join(f"{when} {' '.join(f'{x:.1f}' for x in values)}"
                                                  for when, values in load.items())
          + f" on {results['cpu_count']} cores")
    print(f"results -> {output}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
