"""GPU report parts: PTH-Net training at FERv39k size (31,088 / 7,847 synthetic clips in memory).

`pthnet_float32` / `pthnet_bfloat16` run `pthnet bench`'s JAX side (`jax_run.run_jax`: the
20-epoch recipe through `train_and_evaluate`, resident data, evaluation after every epoch,
checkpoints, a profile of 64 steps, then the whole test split evaluated with the best checkpoint)
on the in-memory splits. The run stops after the last epoch that fits the part's budget (SIGTERM,
as a user's interruption: the state is saved); the figures say how many epochs ran and estimate
the 20. `pthnet_variants` trains 2 epochs per variant of what keeps a tiny model busy on a big GPU.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from pthnet_jax.benchmarks.gpu_data import FERV39K_SIZES, feature_split, make_split, memory_data

RECIPE_EPOCHS = 20
TINY_SIZES = (64, 32)


def _splits(ctx) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    train, test = TINY_SIZES if ctx.tiny else FERV39K_SIZES
    splits = {"train": feature_split(make_split("train", train)), "test": feature_split(make_split("test", test))}
    return splits, time.perf_counter() - started


def _history(run_dir: Path) -> list[dict[str, Any]]:
    try:
        return json.loads((run_dir / "history.json").read_text())
    except (OSError, ValueError):
        return []


def _epoch_cost(record: dict[str, Any]) -> float:
    return record["epoch_seconds"] + record.get("eval_seconds", 0.0) + record.get("save_seconds", 0.0)


@contextlib.contextmanager
def stop_training_at(run_dir: Path, stop_at: float) -> Iterator[dict[str, Any]]:
    """SIGTERM this process (the trainer's own interruption) once the next epoch would end after
    `stop_at` (time.time()), judged from the last finished epoch in run_dir/history.json (after the
    first epoch, which compiles, once `stop_at` has passed); never before the first epoch has
    finished (the runner's kill at the budget is the limit then). Only
    while the trainer's handler is installed: after training the signal would end the process."""
    state: dict[str, Any] = {"stopped": False}
    done = threading.Event()

    def watch():
        while not done.wait(0.25):
            history = _history(run_dir)  # never before the first epoch: a run with no epoch reports nothing
            if not history:
                continue
            # The first epoch compiles: it does not predict the next one; later epochs do.
            next_epoch = 1.05 * _epoch_cost(history[-1]) if len(history) > 1 else 0.0
            if time.time() + next_epoch < stop_at:
                continue
            if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None):
                state["stopped"], state["after_epochs"] = True, len(history)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        done.set()
        thread.join()


def _compilation_cache(ctx, full: str | None = None) -> None:
    """Full size: a fresh cache (the compile time is a cold one) or `full`; --tiny: one cache shared
    by the parts (a CPU smoke run compiles each program once)."""
    if ctx.tiny:
        os.environ["PTHNET_COMPILATION_CACHE"] = str(ctx.scratch.parent / "xla-cache-tiny")
    elif full is not None:
        os.environ["PTHNET_COMPILATION_CACHE"] = full
    else:
        os.environ["PTHNET_COMPILATION_CACHE"] = str(ctx.scratch / "xla-cache")
        shutil.rmtree(ctx.scratch / "xla-cache", ignore_errors=True)


def _fraction(value: float | None, peak: float | None) -> float | None:
    return value / peak if value is not None and peak else None


def _run(ctx, dtype: str) -> dict[str, Any]:
    from pthnet_jax.benchmarks import jax_run
    from pthnet_jax.benchmarks.costs import flops_per_clip, format_profile
    from pthnet_jax.benchmarks.speed import model_config

    splits, data_s = _splits(ctx)
    model = "tiny" if ctx.tiny else "default"
    epochs = 2 if ctx.tiny else RECIPE_EPOCHS
    run_dir = ctx.scratch / f"run-{dtype}"
    _compilation_cache(ctx)
    flops = flops_per_clip(model_config(model))
    ctx.record(dtype=dtype, data_build_s=data_s, train_split_clips=splits["train"].num_clips,
               test_split_clips=splits["test"].num_clips, **flops)
    spec = {"run_dir": str(run_dir), "epochs": epochs, "steps_per_dispatch": 0, "eval_batch": 0,
            "eval_repeats": 1 if ctx.tiny else 3, "model": model,
            "profile_steps": 64 if not ctx.tiny else 2 if dtype == "float32" else 0,
            "dtype": dtype, "bf16_inference": False}
    reserve = 10.0 if ctx.tiny else 20.0  # the best checkpoint's evaluation after training
    with memory_data(splits) as data_dir, stop_training_at(run_dir, ctx.deadline - reserve) as stop:
        result = jax_run.run_jax({**spec, "data_dir": data_dir})
    history = _history(run_dir)
    later = [_epoch_cost(r) for r in history[1:]] or [_epoch_cost(history[-1])]
    result["epochs_planned"] = epochs
    result["stopped_by_budget"] = stop["stopped"]
    result[f"estimated_wall_{epochs}_epochs_s"] = result["wall_s"] + (epochs - len(history)) * sum(later) / len(later)
    result["achieved_train_tflops"] = result["train_clips_per_s_steady"] * flops["train_flops_per_clip"] / 1e12
    result["achieved_eval_tflops"] = result["eval_clips_per_s"] * flops["eval_flops_per_clip"] / 1e12
    peak = ctx.peak_tflops(dtype)
    result["fraction_of_measured_peak_train"] = _fraction(result["achieved_train_tflops"], peak)
    result["fraction_of_measured_peak_eval"] = _fraction(result["achieved_eval_tflops"], peak)
    profile = result.get("profile")
    if profile:
        result["profile_gap_fraction"] = max(0.0, 1.0 - profile["op_ms_per_step"] / profile["wall_ms_per_step"])
    result["profile_text"] = format_profile(profile)
    result.pop("time", None)
    fraction = result["fraction_of_measured_peak_train"]
    result["summary"] = (
        f"{result['epochs']}/{epochs} epochs in {result['wall_s']:.1f}s (est. {epochs}: "
        f"{result[f'estimated_wall_{epochs}_epochs_s']:.0f}s), compile ~{result['compile_estimate_s']:.1f}s, "
        f"train {result['train_clips_per_s_steady']:.0f} clips/s, eval {result['eval_clips_per_s']:.0f} clips/s, "
        f"{result['achieved_train_tflops']:.3g} TFLOP/s"
        + (f" = {100 * fraction:.2g}% of measured {dtype} peak" if fraction is not None else "")
        + (f", {100 * result['profile_gap_fraction']:.0f}% of a step between kernels"
           if "profile_gap_fraction" in result else ""))
    return result


def pthnet_float32(ctx) -> dict[str, Any]:
    return _run(ctx, "float32")


def pthnet_bfloat16(ctx) -> dict[str, Any]:
    return _run(ctx, "bfloat16")


VARIANTS = (  # label, training steps per device call (a large number: the whole epoch), dtype
    ("1 step per call", 1, "float32"),
    ("32 steps per call (the default)", 32, "float32"),
    ("whole epoch per call", 1 << 20, "float32"),
    ("whole epoch per call, bfloat16", 1 << 20, "bfloat16"),
)


def _variant_config(model: str, steps_per_dispatch: int, dtype: str, epochs: int, data_dir: str):
    from pthnet_jax.benchmarks.speed import model_config
    from pthnet_jax.configs import ferv39k

    mcfg = model_config(model)
    config = ferv39k.get_config()
    config.model.update({name: getattr(mcfg, name) for name in mcfg.to_dict()})
    config.data.data_dir = data_dir
    config.data.mode = "resident"
    config.train.epochs = epochs
    config.optim.milestones = tuple(m for m in config.optim.milestones if m <= epochs)
    config.train.steps_per_dispatch = steps_per_dispatch
    config.model_dtype = dtype
    return config


def pthnet_variants(ctx) -> dict[str, Any]:
    """2 epochs per variant; the second epoch's training clips/s is the figure (the first compiles).
    Buffer donation is on in every variant (the trainer donates the training state to each call)."""
    from pthnet_jax.train import train_and_evaluate

    splits, _ = _splits(ctx)
    model, epochs = ("tiny" if ctx.tiny else "default"), 2
    _compilation_cache(ctx, "0")  # every variant compiles cold
    variants: dict[str, Any] = {}
    spent: list[float] = []
    with memory_data(splits) as data_dir:
        for index, (label, chunk, dtype) in enumerate(VARIANTS):
            left = ctx.remaining() - 3.0
            share = left / (len(VARIANTS) - index)
            needed = max(spent) if spent else 0.0
            if left <= 0 or needed > left:
                variants[label] = {"status": "skipped", "reason": f"{max(left, 0):.0f} s of the part's budget left, "
                                                                  f"a variant took {needed:.0f} s"}
                continue
            run_dir = ctx.scratch / f"variant-{index}"
            started = time.time()
            with stop_training_at(run_dir, time.time() + max(share, needed)) as stop:
                train_and_evaluate(_variant_config(model, chunk, dtype, epochs, data_dir), run_dir)
            spent.append(time.time() - started)
            history = _history(run_dir)
            entry: dict[str, Any] = {"status": "measured", "seconds": spent[-1], "epochs": len(history),
                                     "stopped_by_budget": stop["stopped"], "dtype": dtype}
            if history:
                entry["first_epoch_s"] = history[0]["epoch_seconds"]
            if len(history) > 1:  # the first epoch compiles
                entry["train_clips_per_s"] = history[-1]["train_clips_per_s"]
            else:  # stopped within the second epoch: no figure free of compilation
                entry.update(status="skipped", reason="its second epoch did not fit its share of the budget")
            variants[label] = entry
            ctx.record(variants=variants)
    measured = {k: v["train_clips_per_s"] for k, v in variants.items() if "train_clips_per_s" in v}
    summary = ", ".join(f"{k}: {v:.0f}" for k, v in measured.items())
    return {"variants": variants, "donation": "on (the trainer donates the state in every variant)",
            "summary": f"training clips/s (epoch {epochs}): {summary or 'none measured'}"}
