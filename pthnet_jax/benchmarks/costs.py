"""What a training step costs: FLOPs from XLA's cost analysis, and a profile summarised by kind; the
benchmarks' models by name."""
from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any


def model_config(name: str):
    """The benchmarks' PTH-Net by name: 'default' (the paper's) or 'tiny' (tests of the benchmarks)."""
    from pthnet_jax.models.pthnet import ModelConfig

    if name == "default":
        return ModelConfig()
    if name == "tiny":  # for tests of the benchmark itself: configs/tiny.py's smoke depth
        from pthnet_jax.configs import tiny

        return ModelConfig.from_dict({**tiny.get_config().model.to_dict(), "arch": tiny.SMOKE_ARCH, "n_in": 1408,
                                      "num_classes": 7})
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
                               steps_per_epoch=1).transform
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

