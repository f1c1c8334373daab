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
`DataLoader` (see `bench_torch.py`). Default sizes are FERv39k's (31,088 train / 7,847 test clips,
window counts from the real lists when present); `--quick` uses 2,000 / 500 clips and 3 epochs.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# Dense peaks (TFLOP/s) for the fraction-of-peak line; CPUs are not listed (it depends on the SKU).
PEAK_TFLOPS = {"H100": {"bfloat16": 989.0, "float32": 67.0}, "H200": {"bfloat16": 989.0, "float32": 67.0}}


def _atomic_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, default=float))
    os.replace(tmp, path)


def prepare_data(workdir: Path, train_clips: int, test_clips: int) -> tuple[Path, Path, float]:
    """Synthetic features in the original layout + their TFDS import (reused when present)."""
    from pthnet_jax.data.importer import import_features
    from pthnet_jax.data.synth import synthesize

    root, data_dir = workdir / f"features-{train_clips}-{test_clips}", workdir / f"data-{train_clips}-{test_clips}"
    import_seconds = float("nan")
    if not data_dir.exists():
        if not (root / "annotation").exists():
            synthesize(root, "FERv39k", clips=train_clips, test_clips=test_clips, reverse=False)
        started = time.perf_counter()
        import_features("FERv39k", root, data_dir)
        import_seconds = time.perf_counter() - started
    return root, data_dir, import_seconds


def model_config(name: str):
    from pthnet_jax.models.pthnet import ModelConfig

    if name == "default":
        return ModelConfig()
    if name == "tiny":  # for tests of the benchmark itself
        from pthnet_jax.configs import tiny

        return ModelConfig.from_dict({**tiny.get_config().model.to_dict(), "n_in": 1408})
    raise ValueError(f"--model must be 'default' or 'tiny', got {name!r}")


def flops_per_clip(config, batch: int = 32) -> dict[str, float]:
    """XLA cost analysis of the trainer's own programs: one training step (3 levels, forward + backward
    + SGD) and one evaluation forward (H level), per clip.

    From the lowered programs (no compilation needed); XLA's optimised programs count within ~2%.
    """
    import jax
    import jax.numpy as jnp

    from pthnet_jax import steps
    from pthnet_jax.models.pthnet import PTHNet, abstract_variables, dummy_inputs
    from pthnet_jax.optim import make_optimizer

    model = PTHNet(config)
    optimizer = make_optimizer(lr=0.005, momentum=0.9, weight_decay=1e-4, milestones=(), gamma=1.0,
                               steps_per_epoch=1)
    params = abstract_variables(config)["params"]
    state = jax.eval_shape(lambda p: steps.create_train_state(p, optimizer), params)
    features, masks = dummy_inputs(config, batch)
    train_batch = {"features": features, "masks": masks, "labels": jnp.zeros((batch,), jnp.int32),
                   "valid": jnp.ones((batch,), bool)}
    eval_batch = {"features": {"H": features["H"]}, "masks": {"H": masks["H"]}}

    def one_device(tree):  # the pmapped programs take a leading device axis
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct((1, *x.shape), x.dtype), tree)

    def cost(lowered) -> float:
        analysis = lowered.cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list) else analysis
        return float((analysis or {}).get("flops", float("nan")))

    train = steps.pmapped(steps.train_step, model=model, optimizer=optimizer, seed=0).lower(
        one_device(state), one_device(train_batch))
    evaluate = steps.pmapped(steps.predict, model=model).lower(one_device(params), one_device(eval_batch))
    return {"train_flops_per_clip": cost(train) / batch, "eval_flops_per_clip": cost(evaluate) / batch}


# ---- profile summary ------------------------------------------------------------------------------

_KINDS = (  # first match wins; names are XLA's fusion/thunk/kernel names, lower-cased
    ("matmul / convolution", ("dot", "gemm", "ynn", "xnn", "conv", "cublas", "cutlass", "matmul", "onednn")),
    ("collectives", ("all-reduce", "all_reduce", "allreduce", "nccl", "collective", "psum")),
    ("layout copies / transposes", ("copy", "transpose")),
    ("random numbers", ("rng", "threefry", "philox")),
    ("gather / scatter", ("gather", "scatter", "dynamic-slice", "dynamic_slice", "dynamic-update")),
    ("elementwise & reductions (fused)", ("fusion", "reduce", "broadcast", "add", "multiply", "select", "exp")),
)


def _kind(name: str) -> str:
    lowered = name.lower()
    for kind, needles in _KINDS:
        if any(needle in lowered for needle in needles):
            return kind
    return "other"


def summarize_profile(profile_dir: Path, num_steps: int, wall_seconds: float) -> dict[str, Any] | None:
    """Operation time per training step by kind, from a jax.profiler trace (CPU threads or GPU streams)."""
    import jax

    traces = sorted(Path(profile_dir).glob("**/*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not traces or num_steps <= 0:
        return None
    data = jax.profiler.ProfileData.from_file(str(traces[-1]))
    totals: collections.Counter = collections.Counter()
    device_planes = [plane for plane in data.planes if plane.name.startswith("/device:")]
    if device_planes:  # accelerators: kernels on the device's op line(s)
        for plane in device_planes:
            lines = list(plane.lines)
            ops = [line for line in lines if line.name == "XLA Ops"] or [
                line for line in lines if line.name not in ("XLA Modules", "Steps", "Source", "Framework Ops")]
            for line in ops:
                for event in line.events:
                    totals[re.sub(r"[.\d]+$", "", event.name)] += event.duration_ns
    else:  # XLA:CPU: operations run on the runtime's worker threads
        for plane in data.planes:
            for line in plane.lines:
                if not line.name.startswith("tf_XLAEigen"):
                    continue
                for event in line.events:
                    if "Thunk" in event.name or "Await" in event.name:
                        continue
                    totals[re.sub(r"[.\d]+$", "", event.name)] += event.duration_ns
    if not totals:
        return None
    by_kind: collections.Counter = collections.Counter()
    for name, duration in totals.items():
        by_kind[_kind(name)] += duration
    op_ms = sum(totals.values()) / 1e6 / num_steps
    return {
        "steps": num_steps, "wall_ms_per_step": 1e3 * wall_seconds / num_steps, "op_ms_per_step": op_ms,
        "device": "accelerator" if device_planes else "cpu threads",
        "by_kind_ms_per_step": {k: v / 1e6 / num_steps for k, v in by_kind.most_common()},
        "top_ops_ms_per_step": {k: v / 1e6 / num_steps for k, v in totals.most_common(8)},
    }


def format_profile(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "profile: no trace"
    wall, busy = summary["wall_ms_per_step"], summary["op_ms_per_step"]
    where = "summed over the CPU runtime threads" if summary["device"] == "cpu threads" else "on the device"
    lines = [f"profile of {summary['steps']} training steps: {wall:.1f} ms wall per step, {busy:.1f} ms of "
             f"operations per step {where} ({100 * busy / wall:.0f}% of wall)"]
    for kind, ms in summary["by_kind_ms_per_step"].items():
        lines.append(f"  {kind:<36} {ms:8.2f} ms/step  {100 * ms / busy:5.1f}%")
    return "\n".join(lines)


# ---- the two sides, each in a process of its own ----------------------------------------------------

def run_jax(spec: dict[str, Any]) -> dict[str, Any]:
    """Train + evaluate with `train_and_evaluate` on resident data; evaluation timed separately."""
    import jax

    from pthnet_jax import load_model
    from pthnet_jax.configs import ferv39k
    from pthnet_jax.data import open_split
    from pthnet_jax.evaluate import Predictor
    from pthnet_jax.train import train_and_evaluate

    data_dir, run_dir = Path(spec["data_dir"]), Path(spec["run_dir"])
    mcfg = model_config(spec["model"])
    config = ferv39k.get_config()
    config.model.update({name: getattr(mcfg, name) for name in mcfg.to_dict()})
    config.data.data_dir = str(data_dir)
    config.data.mode = "resident"
    config.train.epochs = spec["epochs"]
    config.train.steps_per_dispatch = spec["steps_per_dispatch"]
    config.train.profile_steps = spec["profile_steps"]
    config.eval.batch_size = spec["eval_batch"]
    config.model_dtype = spec["dtype"]
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    summary = train_and_evaluate(config, run_dir)
    wall = time.perf_counter() - started
    history = json.loads((run_dir / "history.json").read_text())
    epoch_s = [r["epoch_seconds"] for r in history]
    clips = [r["train_clips_per_s"] * r["epoch_seconds"] for r in history]
    eval_s = sum(r.get("eval_seconds", 0.0) for r in history)
    save_s = sum(r.get("save_seconds", 0.0) for r in history)
    later = slice(1, None) if len(history) > 1 else slice(None)  # the first epoch includes compilation
    steady_clips, steady_s = sum(clips[later]), sum(epoch_s[later])
    profiled = next((r["profile"] for r in history if "profile" in r), None)
    traced_clips = profiled["steps"] * config.train.global_batch if profiled else 0
    if profiled and (len(history) == 1 or profiled["epoch"] > 1) and traced_clips < steady_clips:
        steady_clips -= traced_clips  # traced steps run slower: leave them out
        steady_s -= profiled["seconds"]
    steady = steady_clips / steady_s
    steps_per_epoch = history[0]["step"]
    result = {
        "device": str(jax.devices()[0].device_kind), "platform": jax.devices()[0].platform,
        "devices": jax.device_count(), "dtype": spec["dtype"], "epochs": len(history), "wall_s": wall,
        "train_clips": sum(clips), "train_s": sum(epoch_s), "train_clips_per_s": sum(clips) / sum(epoch_s),
        "train_clips_per_s_steady": steady, "first_epoch_s": epoch_s[0],
        "compile_estimate_s": epoch_s[0] - steps_per_epoch * config.train.global_batch / steady,
        "eval_in_training_s": eval_s, "checkpoint_s": save_s,
        "startup_s": wall - sum(epoch_s) - eval_s - save_s,
        "test_WAR_last_epoch": history[-1]["test"]["WAR"], "test_UAR_last_epoch": history[-1]["test"]["UAR"],
        "best": summary.get("best", {}).get("metrics", {}).get("test"),
    }
    if profiled:
        result["profile"] = summarize_profile(Path(profiled["dir"]), profiled["steps"], profiled["seconds"])

    # Evaluation of the whole test split with the best checkpoint, as `pthnet evaluate` does it.
    model, variables = load_model(run_dir / "best", dtype=None if spec["dtype"] == "float32" else jax.numpy.bfloat16)
    split = open_split(data_dir, "test")
    predictor = Predictor(model, mode="resident", batch_size=spec["eval_batch"])
    tick = time.perf_counter()
    logits, labels = predictor.predict(variables["params"], split)  # compiles and places the split
    result["eval_first_call_s"] = time.perf_counter() - tick
    timings = []
    for _ in range(spec["eval_repeats"]):
        tick = time.perf_counter()
        logits, labels = predictor.predict(variables["params"], split)
        timings.append(time.perf_counter() - tick)
    result.update(eval_clips=int(len(labels)), eval_s=float(np.median(timings)), eval_batch=predictor.batch_size,
                  eval_clips_per_s=len(labels) / float(np.median(timings)))
    np.save(run_dir / "eval_logits.npy", logits)
    if spec.get("bf16_inference"):  # the same float32 weights, computed in bfloat16
        from pthnet_jax.metrics import classification_metrics

        model16, _ = load_model(run_dir / "best", dtype=jax.numpy.bfloat16)
        predictor16 = Predictor(model16, mode="resident", batch_size=spec["eval_batch"])
        predictor16.predict(variables["params"], split)
        tick = time.perf_counter()
        logits16, _ = predictor16.predict(variables["params"], split)
        seconds16 = time.perf_counter() - tick
        ours, theirs = (classification_metrics(x, labels, split.num_classes) for x in (logits, logits16))
        result["bf16_inference"] = {
            "eval_clips_per_s": len(labels) / seconds16, "max_abs_logit_diff": float(np.abs(logits - logits16).max()),
            "prediction_agreement": float((logits.argmax(1) == logits16.argmax(1)).mean()),
            "UAR_f32": ours["UAR"], "UAR_bf16": theirs["UAR"], "WAR_f32": ours["WAR"], "WAR_bf16": theirs["WAR"]}
    result["peak_host_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    stats = jax.local_devices()[0].memory_stats() or {}
    if stats.get("peak_bytes_in_use") is not None:
        result["peak_device_memory_gib"] = stats["peak_bytes_in_use"] / 2**30
    return result


def _child(side: str, spec: dict[str, Any], workdir: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    spec_path, out_path = workdir / f".{side}-spec.json", workdir / f"{side}-result.json"
    _atomic_json(spec_path, spec)
    out_path.unlink(missing_ok=True)
    module = "pthnet_jax.bench_torch" if side == "torch" else "pthnet_jax.bench"
    args = [sys.executable, "-m", module] + (["--child"] if side != "torch" else []) + [str(spec_path), str(out_path)]
    completed = subprocess.run(args, env={**os.environ, **(env or {})})
    if completed.returncode != 0 or not out_path.exists():
        raise RuntimeError(f"the {side} benchmark process failed (exit {completed.returncode}); see its output above")
    return json.loads(out_path.read_text())


def _child_main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    from pthnet_jax import reporting

    reporting.enable_compilation_cache()
    result = run_jax(spec)
    _atomic_json(Path(argv[1]), result)
    return 0


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


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        return _child_main(argv[1:])
    parser = argparse.ArgumentParser(prog="pthnet bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="2,000 / 500 clips, 3 JAX and 2 PyTorch epochs (a few minutes on 2 CPU cores)")
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
    args = parser.parse_args(argv)

    import jax

    train_clips, test_clips = (2000, 500) if args.quick else (31088, 7847)
    train_clips, test_clips = args.train_clips or train_clips, args.test_clips or test_clips
    epochs = args.epochs or (3 if args.quick else 20)
    workdir = args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    root, data_dir, import_seconds = prepare_data(workdir, train_clips, test_clips)
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
    ours = _child("jax", {**spec, "dtype": "float32", "run_dir": str(workdir / "jax-run-float32")}, workdir, cache_env)
    results["jax"] = ours
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

    theirs = None
    if not args.skip_torch:
        try:
            import torch

            device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
            torch_spec = {"root": str(root), "list_dir": str(root / "annotation" / "FERv39k"),
                          "model_kwargs": model_config(args.model).to_dict(), "epochs": args.torch_epochs,
                          "max_train_steps": args.torch_max_steps, "device": device,
                          "num_workers": args.torch_workers}
            del torch
            theirs = _child("torch", torch_spec, workdir)
            results["torch"] = theirs
        except ImportError:
            print("PyTorch is not installed: skipping the baseline (pip install \"pthnet-jax[torch]\")")

    table = format_table(ours, theirs)
    results["table"] = table
    output = args.output or workdir / "results.json"
    _atomic_json(output, results)

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
    print(f"results -> {output}")
    return 0


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
