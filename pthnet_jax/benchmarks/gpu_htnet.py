"""The GPU report's HTNet part: the leave-one-subject-out protocol's training step at the released
size (batch 256, Adam), K subjects side by side in one program (`jax.vmap` over a run axis, as
`pthnet loso --parallel K` trains them) against the PyTorch reference one subject at a time, and the
whole protocol's projected time (68 subjects x 800 epochs x 2 steps: 441 training samples in batches
of 256 and 185). With `ctx.tiny`: a tiny HTNet, batch 8, on the CPU in seconds."""
from __future__ import annotations

import math
import time
from typing import Any

SUBJECTS, EPOCHS, STEPS_PER_EPOCH = 68, 800, 2


def _jax_step_time(config, batch: int, runs: int, repeats: int) -> tuple[float, float]:
    """(compile + first call s, seconds per step) of `runs` Adam steps side by side."""
    import jax
    import jax.numpy as jnp
    import optax

    from pthnet_jax.families.htnet.model import HTNet, init_params

    model, optimizer = HTNet(config), optax.adam(5e-5, b1=0.9, b2=0.999, eps=1e-8)

    def loss_fn(params, images, labels):
        logits = model.apply(params, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def step(params, opt_state, images, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    keys = jax.random.split(jax.random.key(0), runs)
    params = jax.vmap(lambda k: init_params(config, k))(keys)
    opt_state = jax.vmap(optimizer.init)(params)
    shape = (runs, batch, config.image_size, config.image_size, config.channels)
    images = jax.random.uniform(jax.random.key(1), shape, jnp.float32, 0.0, 255.0)
    labels = jax.random.randint(jax.random.key(2), (runs, batch), 0, config.num_classes)
    stepped = jax.jit(jax.vmap(step), donate_argnums=(0, 1))
    start = time.perf_counter()
    params, opt_state, loss = stepped(params, opt_state, images, labels)
    loss.block_until_ready()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        params, opt_state, loss = stepped(params, opt_state, images, labels)
    loss.block_until_ready()
    return first, (time.perf_counter() - start) / repeats


def _torch_step_time(config, batch: int, repeats: int) -> tuple[str, float]:
    import torch

    from pthnet_jax.benchmarks.torch_htnet import ReferenceHTNet

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ReferenceHTNet(config.image_size, config.patch_size, config.num_classes, config.dim, config.heads,
                           config.num_hierarchies, tuple(config.block_repeats), config.mlp_mult,
                           config.channels).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-5)
    images = torch.rand(batch, config.channels, config.image_size, config.image_size, device=device) * 255
    labels = torch.randint(0, config.num_classes, (batch,), device=device)

    def step():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss

    step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return device, (time.perf_counter() - start) / repeats


def htnet_loso(ctx) -> dict[str, Any]:
    """K = 1, 4, 17, 68 subjects in one program while the budget lasts; PyTorch one subject."""
    from pthnet_jax.families.htnet.config import HTNetConfig

    tiny = ctx.tiny
    config = HTNetConfig(dim=8, heads=1, block_repeats=(1, 1, 1)) if tiny else HTNetConfig()
    batch, repeats = (8, 2) if tiny else (256, 5)
    out: dict[str, Any] = {"batch": batch}
    rows = []
    for runs in ((1, 2) if tiny else (1, 4, 17, 68)):
        if ctx.remaining() < (5 if tiny else 25):
            out[f"K{runs}_skipped"] = f"{ctx.remaining():.0f} s of the budget left"
            break
        try:
            first, per_step = _jax_step_time(config, batch, runs, repeats)
        except Exception as error:  # out of device memory: the largest K is the one before
            out[f"K{runs}_failed"] = f"{type(error).__name__}: {str(error)[:200]}"
            break
        protocol_s = math.ceil(SUBJECTS / runs) * EPOCHS * STEPS_PER_EPOCH * per_step
        rows.append({"runs": runs, "first_call_s": round(first, 2), "step_s": per_step,
                     "samples_per_s": runs * batch / per_step, "protocol_hours": protocol_s / 3600})
        ctx.record(rows=rows)
    out["rows"] = rows
    if ctx.remaining() > (5 if tiny else 30):
        device, torch_step = _torch_step_time(config, batch, repeats)
        torch_hours = SUBJECTS * EPOCHS * STEPS_PER_EPOCH * torch_step / 3600
        out.update(torch_device=device, torch_step_s=torch_step, torch_protocol_hours=torch_hours)
        if rows:
            best = min(rows, key=lambda r: r["protocol_hours"])
            out["protocol_speedup_vs_torch"] = torch_hours / best["protocol_hours"]
    best = min(rows, key=lambda r: r["protocol_hours"]) if rows else None
    out["summary"] = ("no run fitted" if best is None else
                      f"LOSO projected {best['protocol_hours']:.2f} h with K={best['runs']} "
                      f"({best['samples_per_s']:.0f} samples/s)"
                      + (f" vs PyTorch {out['torch_protocol_hours']:.2f} h one subject at a time"
                         if "torch_protocol_hours" in out else ""))
    return out
