"""The pthnet-jax side of `pthnet bench`, run in a process of its own.

    python -m pthnet_jax.benchmarks.jax_run SPEC.json OUT.json
"""
from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pthnet_jax.benchmarks.costs import summarize_profile
from pthnet_jax.fsutil import atomic_write_json


def model_config(name: str):
    from pthnet_jax.benchmarks.speed import model_config as by_name

    return by_name(name)


def run_jax(spec: dict[str, Any]) -> dict[str, Any]:
    """Train + evaluate with `train_and_evaluate` on resident data; evaluation timed separately."""
    import jax

    from pthnet_jax import load_model
    from pthnet_jax.configs import ferv39k
    from pthnet_jax.data import open_split
    from pthnet_jax.evaluation import Predictor
    from pthnet_jax.train import train_and_evaluate

    data_dir, run_dir = Path(spec["data_dir"]), Path(spec["run_dir"])
    mcfg = model_config(spec["model"])
    config = ferv39k.get_config()
    config.model.update({name: getattr(mcfg, name) for name in mcfg.to_dict()})
    config.data.data_dir = str(data_dir)
    config.data.mode = "resident"
    config.train.epochs = spec["epochs"]
    # The recipe's milestones that fall inside a shorter run (the others would never be reached).
    config.optim.milestones = tuple(m for m in config.optim.milestones if m <= spec["epochs"])
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
        "time": summary.get("time", {}),  # the run's own breakdown (timing.RunClock)
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


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    from pthnet_jax import reporting

    reporting.enable_compilation_cache()
    result = run_jax(spec)
    atomic_write_json(Path(argv[1]), result)
    return 0



if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
