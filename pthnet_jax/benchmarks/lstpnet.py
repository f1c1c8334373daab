"""LSTPNet speed: training and evaluation clips/s of the Flax model against the PyTorch reference.

    python -m pthnet_jax.benchmarks.lstpnet [--size 64] [--batch 2] [--frames 16] [--tiny]
        [--dtype float32|bfloat16] [--repeats 5] [--only jax|torch] [--torch-threads N]

Same config, same weights (the Flax variables are converted from the PyTorch model's state dict and
both are checked to give the same evaluation logits before timing), random frames. A training step
is forward in training mode (batch statistics), cross-entropy, backward and an SGD update (momentum
0.9, weight decay 1e-4, as Former-DFER); evaluation is the forward with running statistics. Each
framework's first calls (compilation, cuDNN autotuning) are not timed; medians of `repeats` calls are
reported. The full size is `--size 224 --batch 32` (GPU). `gpu_part(ctx)` is the same measurement as
a part of the GPU report (scripts/gpu_report.py): tiny on a CPU, full size on a GPU, within its budget.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import numpy as np

SGD = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)


def _median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _batch(config, batch: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = rng.random((batch, config.num_frames, size, size, 3), dtype=np.float32)
    return frames, rng.integers(0, config.num_classes, batch).astype(np.int32)


def jax_steps(config, variables: dict, frames: np.ndarray, labels: np.ndarray, dtype: str = "float32"):
    """(train_step, eval_step) of the Flax model: callables that run one step and wait for it."""
    import jax
    import jax.numpy as jnp
    import optax

    from pthnet_jax.families.lstpnet.model import LSTPNet

    model = LSTPNet(config, dtype=jnp.dtype(dtype))
    tx = optax.chain(optax.add_decayed_weights(SGD["weight_decay"]), optax.sgd(SGD["lr"], SGD["momentum"]))
    frames_d, labels_d = jax.device_put(frames), jax.device_put(labels)

    def loss_fn(params, stats):
        out, updates = model.apply({"params": params, "batch_stats": stats}, frames_d, train=True,
                                   mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(out["logits"], labels_d).mean()
        return loss, updates["batch_stats"]

    @jax.jit
    def train(state):
        params, stats, opt = state
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), stats, opt), loss

    evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False)["logits"])
    params = jax.device_put(variables["params"])
    holder = {"state": (params, jax.device_put(variables["batch_stats"]), tx.init(params))}

    def train_step():
        holder["state"], loss = train(holder["state"])
        return float(loss)

    def eval_step():
        return np.asarray(jax.block_until_ready(evaluate(variables, frames_d)))

    return train_step, eval_step


def torch_steps(model, frames: np.ndarray, labels: np.ndarray, device: str = "cpu", bf16: bool = False):
    """(train_step, eval_step) of the PyTorch reference, synchronised on a GPU."""
    import torch
    from torch.nn import functional as F

    model = model.to(device)
    x = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).contiguous().to(device)
    y = torch.from_numpy(labels).long().to(device)
    opt = torch.optim.SGD(model.parameters(), **SGD)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    autocast = (lambda: torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16))

    def train_step():
        model.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(x)[0].float(), y)
        loss.backward()
        opt.step()
        sync()
        return float(loss.detach())

    def eval_step():
        model.eval()
        with torch.inference_mode(), autocast():
            logits = model(x)[0]
        sync()
        return logits.float().cpu().numpy()

    return train_step, eval_step


def run(config, batch: int, size: int, repeats: int = 5, dtype: str = "float32", only: tuple[str, ...] = ("jax", "torch"),
        device: str = "cpu", record: Callable[..., None] = lambda **_: None, seed: int = 0) -> dict[str, Any]:
    """Measure both frameworks; returns clips/s figures (and records each as it comes)."""
    import torch

    from pthnet_jax.benchmarks.torch_lstpnet import from_config
    from pthnet_jax.families.lstpnet.convert import torch_to_flax

    torch.manual_seed(seed)
    reference = from_config(config)
    state = {k: v.detach().cpu().numpy() for k, v in reference.state_dict().items()}
    _, variables, _ = torch_to_flax(state, config)
    frames, labels = _batch(config, batch, size, seed)
    result: dict[str, Any] = {"batch": batch, "size": size, "frames": config.num_frames, "dtype": dtype,
                              "widths": list(config.widths)}
    steps = {}
    if "jax" in only:
        steps["jax"] = jax_steps(config, variables, frames, labels, dtype)
    if "torch" in only:
        steps["torch"] = torch_steps(reference, frames, labels, device, bf16=dtype == "bfloat16")
    if len(steps) == 2:  # the same function before timing (evaluation, running statistics)
        got, want = steps["jax"][1](), steps["torch"][1]()
        result["logits_max_rel_diff"] = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
    for name, (train_step, eval_step) in steps.items():
        start = time.perf_counter()
        eval_step()
        result[f"{name}_eval_first_s"] = time.perf_counter() - start
        result[f"{name}_eval_clips_per_s"] = batch / _median_seconds(eval_step, repeats)
        record(**{k: v for k, v in result.items() if k.startswith(name)})
        start = time.perf_counter()
        train_step()
        result[f"{name}_train_first_s"] = time.perf_counter() - start
        result[f"{name}_train_clips_per_s"] = batch / _median_seconds(train_step, repeats)
        record(**{k: v for k, v in result.items() if k.startswith(name)})
    return result


def gpu_part(ctx) -> dict[str, Any]:
    """A part of the GPU report: LSTPNet at full size (224 x 224, 16 frames, batch 32) on the device,
    Flax float32 and bfloat16 and PyTorch float32 (tiny sizes with `ctx.tiny`)."""
    import jax
    import torch

    from pthnet_jax.families.lstpnet.model import LSTPNetConfig

    config = LSTPNetConfig.tiny() if ctx.tiny else LSTPNetConfig()
    batch, size, repeats = (2, 32, 2) if ctx.tiny else (32, 224, 10)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out: dict[str, Any] = {"device": str(jax.devices()[0]), "torch_device": device}
    for dtype in ("float32", "bfloat16"):
        if ctx.remaining() < (20 if ctx.tiny else 90):
            out[f"{dtype}_skipped"] = f"{ctx.remaining():.0f} s left"
            continue
        only = ("jax", "torch") if dtype == "float32" else ("jax",)
        figures = run(config, batch, size, repeats, dtype, only, device,
                      record=lambda **kv: ctx.record(**{f"{dtype}_{k}": v for k, v in kv.items()}))
        out.update({f"{dtype}_{k}": v for k, v in figures.items()})
    summary = ", ".join(f"{k.replace('_clips_per_s', '')} {v:.1f}" for k, v in out.items() if k.endswith("clips_per_s"))
    return {"summary": f"LSTPNet clips/s ({batch} x {config.num_frames} x {size}^2): {summary}", **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64, help="frame height and width (released: 224)")
    parser.add_argument("--batch", type=int, default=2, help="clips per step (the original's: 32)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--tiny", action="store_true", help="the reduced widths (LSTPNetConfig.tiny)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=("jax", "torch"), default=None)
    parser.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    args = parser.parse_args()
    import torch

    from pthnet_jax.families.lstpnet.model import LSTPNetConfig

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    config = (LSTPNetConfig.tiny if args.tiny else LSTPNetConfig)(num_frames=args.frames)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    only = (args.only,) if args.only else ("jax", "torch")
    result = run(config, args.batch, args.size, args.repeats, args.dtype, only, device)
    for key, value in result.items():
        print(f"{key:28s} {value:.4g}" if isinstance(value, float) else f"{key:28s} {value}")


if __name__ == "__main__":
    main()
