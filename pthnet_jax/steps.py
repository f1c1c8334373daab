"""Pure, pmapped step functions: training (one step, or many fused with lax.scan) and prediction.

Dependencies are keyword-only and bound with functools.partial; inside pmap the axis is
`parallel.AXIS`. Losses and accuracy are sums over the valid clips of the GLOBAL batch divided by
the global valid count, so padded rows (a partial last batch, uneven device shares) change nothing:
a partial batch of 13 clips gives the update PyTorch gives on those 13 clips.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from pthnet_jax import parallel
from pthnet_jax.data.sampling import ResidentFeatures, sample_batch
from pthnet_jax.losses import per_clip_loss
from pthnet_jax.models.pthnet import PTHNet


# Per-step training metrics (sums over the valid clips of the global batch, plus counts and norms).
TRAIN_METRICS = ("ce", "kl_L", "kl_M", "total", "correct", "count", "grad_norm")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def create_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def train_step(state: TrainState, batch: dict[str, Any], *, model: PTHNet,
               optimizer: optax.GradientTransformation, seed: int) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on this device's share of a global batch (inside pmap)."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0x0D0), state.step)
    dropout_key = parallel.device_rng(key)
    weights = batch["valid"].astype(jnp.float32)
    count = parallel.global_sum(weights.sum())
    denominator = jnp.maximum(count, 1.0)

    def loss_fn(params):
        logits = model.apply({"params": params}, batch["features"], batch["masks"], train=True,
                             rngs={"dropout": dropout_key})
        terms = per_clip_loss(logits, batch["labels"])
        return jnp.sum(terms["total"] * weights) / denominator, (terms, logits)

    (_, (terms, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = parallel.global_sum(grads)  # each device's loss is already divided by the global count
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    correct = (jnp.argmax(logits["H"], -1) == batch["labels"]).astype(jnp.float32) * weights
    metrics = {name: parallel.global_sum(jnp.sum(value * weights)) for name, value in terms.items()}
    metrics.update(correct=parallel.global_sum(correct.sum()), count=count,
                   grad_norm=optax.tree.norm(grads))
    return TrainState(state.step + 1, params, opt_state), metrics


def train_chunk(state: TrainState, resident: ResidentFeatures, indices: jax.Array, valid: jax.Array,
                epoch: jax.Array, *, model: PTHNet, optimizer: optax.GradientTransformation, seed: int,
                max_len: int, noise_std: float) -> tuple[TrainState, dict[str, jax.Array]]:
    """Several steps in one device call: sampling from the resident features happens on the device.

    indices/valid: (steps, per_device_batch) for this device. Returns per-step metrics (steps,).
    """
    def one_step(carry: TrainState, step_indices: jax.Array, step_valid: jax.Array):
        batch = sample_batch(resident, step_indices, step_valid, seed=seed, epoch=epoch, train=True,
                             max_len=max_len, noise_std=noise_std)
        return train_step(carry, batch, model=model, optimizer=optimizer, seed=seed)

    if indices.shape[0] == 1:  # one step per call: no loop, no conditional
        new, metrics = one_step(state, indices[0], valid[0])
        return new, jax.tree.map(lambda x: x[None], metrics)

    def body(carry, plan):
        step_indices, step_valid = plan
        # Chunks have a fixed length (one compilation); steps past the epoch's end are all padding:
        # skip them (no compute, and no weight decay, momentum or step count). Every device of every
        # process takes the same branch because the decision is a global sum.
        real = parallel.global_sum(jnp.any(step_valid).astype(jnp.int32)) > 0

        def skip(carry):  # the metric names are static: tracing the step a second time costs seconds
            return carry, {name: jnp.zeros((), jnp.float32) for name in TRAIN_METRICS}

        return jax.lax.cond(real, lambda c: one_step(c, step_indices, step_valid), skip, carry)

    return jax.lax.scan(body, state, (indices, valid))


def predict(params: Any, batch: dict[str, Any], *, model: PTHNet, levels: Sequence[str] = ("H",)
            ) -> jax.Array:
    """Evaluation logits of the H level (the original evaluates H only)."""
    features = {lvl: batch["features"][lvl] for lvl in levels}
    masks = {lvl: batch["masks"][lvl] for lvl in levels}
    return model.apply({"params": params}, features, masks, train=False)["H"]


def predict_resident(params: Any, resident: ResidentFeatures, indices: jax.Array, valid: jax.Array,
                     *, model: PTHNet, max_len: int) -> jax.Array:
    batch = sample_batch(resident, indices, valid, seed=0, epoch=0, train=False, max_len=max_len,
                         noise_std=0.0, levels=("H",))
    return predict(params, batch, model=model)


def pmapped(function, *, donate_state: bool = False, **bound) -> Any:
    """pmap over the local devices with keyword dependencies bound (static).

    The same function and dependencies give the same pmapped object, so a second run in one process
    (the folds of a multi-fold protocol, a resumed run, tests) reuses the traced and compiled program
    instead of tracing the model again (seconds on CPU).
    """
    try:
        return _pmapped_cached(function, donate_state, tuple(sorted(bound.items())))
    except TypeError:  # an unhashable dependency: no reuse
        return _pmapped_cached.__wrapped__(function, donate_state, tuple(sorted(bound.items())))


@functools.lru_cache(maxsize=32)
def _pmapped_cached(function, donate_state: bool, bound: tuple[tuple[str, Any], ...]) -> Any:
    return jax.pmap(functools.partial(function, **dict(bound)), axis_name=parallel.AXIS,
                    donate_argnums=(0,) if donate_state else ())
