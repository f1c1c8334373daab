"""`pthnet bench`: pthnet-jax and a PyTorch baseline, side by side, on FERv39k-sized synthetic data.

    pthnet bench [--quick] [--workdir DIR] [--epochs N] [--torch-epochs N] [--output results.json]

Measures for both: end-to-end training throughput over full epochs with data loading included,
evaluation throughput over the whole test split, start-up time (data placement and compilation for
JAX, model and loader construction for PyTorch) and peak memory; for JAX also the FLOPs of the
compiled programs (XLA cost analysis), the achieved FLOP/s and where the wall-clock time went.
The baseline follows the original's data path: three `.npy` reads per clip per epoch through a
`DataLoader` (see `bench_torch.py`). Default sizes are FERv39k's (31,088 train / 7,847 test clips,
window counts from the real lists when present); `--quick` uses 2,000 / 500 clips.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

# Dense bf16 / fp32 peaks (TFLOP/s) for the fraction-of-peak line; CPUs are not listed.
PEAK_TFLOPS = {"H100": {"bfloat16": 989.0, "float32": 67.0}, "H200": {"bfloat16": 989.0, "float32": 67.0}}


def _peak_host_memory_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _device_memory_gib() -> float | None:
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def prepare_data(workdir: Path, train_clips: int, test_clips: int) -> tuple[Path, Path, float]:
    """Synthetic features in the original layout + their TFDS import (reused when present)."""
    from pthnet_jax.data.importer import import_features
    from pthnet_jax.data.synth import synthesize

    root, data_dir = workdir / f"features-{train_clips}", workdir / f"data-{train_clips}"
    import_seconds = float("nan")
    if not data_dir.exists():
        if not (root / "annotation").exists():
            synthesize(root, "FERv39k", clips=train_clips, test_clips=test_clips, reverse=False)
        started = time.perf_counter()
        import_features("FERv39k", root, data_dir)
        import_seconds = time.perf_counter() - started
    return root, data_dir, import_seconds


def _cost(compiled) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0]
    return float((analysis or {}).get("flops", float("nan")))


def flops_per_clip(model_config, batch: int = 32) -> dict[str, float]:
    """FLOPs of one training step (3 levels, forward + backward + update) and one H-level forward."""
    import jax
    import jax.numpy as jnp
    import optax

    from pthnet_jax.losses import per_clip_loss
    from pthnet_jax.model import PTHNet, dummy_inputs, init_variables

    model = PTHNet(model_config)
    params = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))["params"]
    features, masks = dummy_inputs(model_config, batch)
    labels = jnp.zeros((batch,), jnp.int32)
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.005, momentum=0.9))

    def train_step(params, opt_state, features, masks, labels):
        def loss_fn(p):
            logits = model.apply({"params": p}, features, masks, train=True,
                                 rngs={"dropout": jax.random.key(0)})
            return per_clip_loss(logits, labels)["total"].mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = jax.eval_shape(tx.init, params)
    train = jax.jit(train_step).lower(params, opt_state, features, masks, labels).compile()
    h_only = ({"H": features["H"]}, {"H": masks["H"]})
    evaluate = jax.jit(lambda p, f, m: model.apply({"params": p}, f, m)["H"]).lower(params, *h_only).compile()
    return {"train_flops_per_clip": _cost(train) / batch, "eval_flops_per_clip": _cost(evaluate) / batch}


def run_jax(data_dir: Path, workdir: Path, epochs: int, dtype: str, steps_per_dispatch: int,
            eval_batch: int) -> dict[str, Any]:
    import jax

    from pthnet_jax.configs import ferv39k
    from pthnet_jax.data import open_split
    from pthnet_jax.evaluate import Predictor
    from pthnet_jax.train import train_and_evaluate
    from pthnet_jax import load_model

    config = ferv39k.get_config()
    config.data.data_dir = str(data_dir)
    config.data.mode = "resident"
    config.train.epochs = epochs
    config.train.steps_per_dispatch = steps_per_dispatch
    config.eval.batch_size = eval_batch
    config.model_dtype = dtype
    run_dir = workdir / f"jax-run-{dtype}"
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    summary = train_and_evaluate(config, run_dir)
    wall = time.perf_counter() - started
    history = json.loads((run_dir / "history.json").read_text())
    train_clips = sum(r["train_clips_per_s"] * r["epoch_seconds"] for r in history)
    train_seconds = sum(r["epoch_seconds"] for r in history)
    steady = history[1:] or history  # the first epoch includes compilation
    steady_rate = (sum(r["train_clips_per_s"] * r["epoch_seconds"] for r in steady) /
                   sum(r["epoch_seconds"] for r in steady))

    model, variables = load_model(run_dir / "best", dtype=None if dtype == "float32" else jax.numpy.bfloat16)
    split = open_split(data_dir, "test")
    predictor = Predictor(model, mode="resident", batch_size=eval_batch)
    warm = time.perf_counter()
    logits, labels = predictor.predict(variables["params"], split)  # includes compile + placement
    first_eval = time.perf_counter() - warm
    timings = []
    for _ in range(3):
        tick = time.perf_counter()
        logits, labels = predictor.predict(variables["params"], split)
        timings.append(time.perf_counter() - tick)
    eval_seconds = float(np.median(timings))
    return {
        "device": str(jax.devices()[0].device_kind), "devices": jax.device_count(), "dtype": dtype,
        "epochs": epochs, "wall_s": wall, "train_clips": train_clips, "train_s": train_seconds,
        "train_clips_per_s": train_clips / train_seconds, "train_clips_per_s_steady": steady_rate,
        "first_epoch_s": history[0]["epoch_seconds"],
        "startup_s": wall - train_seconds - sum(0 for _ in history),
        "eval_clips": int(len(labels)), "eval_s": eval_seconds, "eval_clips_per_s": len(labels) / eval_seconds,
        "eval_first_call_s": first_eval, "test_WAR_last_epoch": history[-1]["test"]["WAR"],
        "peak_host_memory_gib": _peak_host_memory_gib(), "peak_device_memory_gib": _device_memory_gib(),
        "logits_sample": logits[:256].tolist(), "labels": labels.tolist(),
        "summary_best": summary.get("best", {}).get("metrics", {}).get("test"),
    }


def bf16_drift(f32: dict[str, Any], bf16: dict[str, Any]) -> dict[str, float]:
    a, b = np.asarray(f32["logits_sample"]), np.asarray(bf16["logits_sample"])
    return {"max_abs_logit_diff_first_256": float(np.abs(a - b).max()),
            "test_WAR_f32": f32["test_WAR_last_epoch"], "test_WAR_bf16": bf16["test_WAR_last_epoch"]}


def format_table(jax_result: dict[str, Any], torch_result: dict[str, Any] | None) -> str:
    rows = [("training clips/s (full epochs, data incl.)", "train_clips_per_s", True),
            ("training clips/s, epochs after the first", "train_clips_per_s_steady", True),
            ("evaluation clips/s (whole test split)", "eval_clips_per_s", True),
            ("start-up s (data placement + compile / loaders)", "startup_s", False),
            ("peak host memory GiB", "peak_host_memory_gib", False)]
    lines = [f"{'metric':<50} {'pthnet-jax':>12} {'PyTorch':>12} {'ratio':>8}"]
    for label, key, higher_better in rows:
        ours = jax_result.get(key)
        theirs = (torch_result or {}).get(key if key != "train_clips_per_s_steady" else "train_clips_per_s")
        ratio = (ours / theirs if higher_better else theirs / ours) if ours and theirs else float("nan")
        fmt = lambda v: "-" if v is None else f"{v:12.1f}" if v >= 10 else f"{v:12.3f}"  # noqa: E731
        lines.append(f"{label:<50} {fmt(ours)} {fmt(theirs)} {ratio:8.2f}x")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pthnet bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 / 500 clips, 2 JAX epochs (CI-sized)")
    parser.add_argument("--workdir", type=Path, default=Path("pthnet-bench"))
    parser.add_argument("--epochs", type=int, help="JAX epochs (default 20 full, 2 quick)")
    parser.add_argument("--torch-epochs", type=int, default=1, help="PyTorch baseline epochs")
    parser.add_argument("--torch-max-steps", type=int, help="cap the baseline's steps per epoch")
    parser.add_argument("--torch-device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="also run JAX in bfloat16 and report the drift")
    parser.add_argument("--steps-per-dispatch", type=int, default=0,
                        help="training steps per device call (0: auto, 1 on CPU and 32 elsewhere)")
    parser.add_argument("--eval-batch", type=int, default=2048)
    parser.add_argument("--output", type=Path, help="JSON results (default WORKDIR/results.json)")
    args = parser.parse_args(argv)

    import jax

    from pthnet_jax.model import ModelConfig

    train_clips, test_clips = (2000, 500) if args.quick else (31088, 7847)
    epochs = args.epochs or (2 if args.quick else 20)
    workdir = args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    root, data_dir, import_seconds = prepare_data(workdir, train_clips, test_clips)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "cpu_count": os.cpu_count(),
        "jax_device": str(jax.devices()[0].device_kind), "train_clips": train_clips, "test_clips": test_clips,
        "import_s": import_seconds, "command": "pthnet bench " + " ".join(argv)}
    results["flops"] = flops_per_clip(ModelConfig())
    jax_result = run_jax(data_dir, workdir, epochs, "float32", args.steps_per_dispatch, args.eval_batch)
    results["jax"] = jax_result
    achieved = jax_result["train_clips_per_s_steady"] * results["flops"]["train_flops_per_clip"] / 1e12
    results["jax"]["achieved_train_tflops"] = achieved
    results["jax"]["achieved_eval_tflops"] = (jax_result["eval_clips_per_s"] *
                                              results["flops"]["eval_flops_per_clip"] / 1e12)
    kind = next((k for k in PEAK_TFLOPS if k in results["jax_device"]), None)
    if kind:
        results["jax"]["fraction_of_fp32_peak_train"] = achieved / PEAK_TFLOPS[kind]["float32"]
    if args.bf16:
        bf16 = run_jax(data_dir, workdir, epochs, "bfloat16", args.steps_per_dispatch, args.eval_batch)
        results["jax_bf16"] = bf16
        results["bf16_drift"] = bf16_drift(jax_result, bf16)
    torch_result = None
    if not args.skip_torch:
        try:
            import torch

            from pthnet_jax.bench_torch import run_baseline

            device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
            torch_result = run_baseline(root, root / "annotation" / "FERv39k", ModelConfig().to_dict(),
                                        epochs=args.torch_epochs, max_train_steps=args.torch_max_steps,
                                        device=device)
            torch_result["peak_host_memory_gib"] = _peak_host_memory_gib()
            torch_result["device"] = device
            results["torch"] = torch_result
        except ImportError:
            print("PyTorch is not installed: skipping the baseline (pip install \"pthnet-jax[torch]\")")
    for result in (results.get("jax"), results.get("jax_bf16")):
        if result:
            result.pop("logits_sample", None), result.pop("labels", None)
    table = format_table(jax_result, torch_result)
    results["table"] = table
    output = args.output or workdir / "results.json"
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=float))
    os.replace(tmp, output)
    flops = results["flops"]
    print(f"\n{train_clips} train / {test_clips} test clips, {epochs} JAX epochs on {results['jax_device']} "
          f"(x{jax.device_count()}); PyTorch baseline {args.torch_epochs} epoch(s)"
          f"{' capped at %d steps' % args.torch_max_steps if args.torch_max_steps else ''}")
    print(table)
    print(f"FLOPs per clip (XLA cost analysis): training {flops['train_flops_per_clip'] / 1e9:.2f} GFLOP, "
          f"evaluation {flops['eval_flops_per_clip'] / 1e9:.3f} GFLOP; achieved {achieved * 1e3:.1f} GFLOP/s "
          f"in training")
    print(f"JAX time: {jax_result['wall_s']:.1f}s wall for {epochs} epochs with per-epoch evaluation and "
          f"checkpoints; first epoch {jax_result['first_epoch_s']:.1f}s (includes compilation), import "
          f"{import_seconds:.1f}s")
    if "bf16_drift" in results:
        print(f"bf16: {results['bf16_drift']}")
    print(f"results -> {output}")
    return 0
