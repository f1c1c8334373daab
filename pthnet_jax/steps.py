"""Pure, pmapped step functions for every family: training (one step, or many fused with lax.scan)
and prediction.

Dependencies are keyword-only and bound with functools.partial; inside pmap the axis is
`parallel.AXIS`. The family (`task`, see `pthnet_jax.task`) gives the per-row loss terms, the logits
and its updated mutable collections for one device's rows; everything subtle is here: losses and
accuracy are sums over the valid rows of the GLOBAL batch divided by the global valid count, so
padded rows (a partial last batch, uneven device shares) change nothing (a partial batch of 13 clips
gives the update PyTorch gives on those 13 clips); padded steps are skipped; the mutable collections
(`model_state`, e.g. BatchNorm statistics) are combined over devices as the run chose.

`seed` and `epoch` may be traced (the runners pass them as arrays), so runs that differ only in
their seed share one compiled program and can be vmapped.
"""
from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from pthnet_jax import parallel


def metric_names(task) -> tuple[str, ...]:
    """Per-step training metrics: the task's term sums, then correct, count and the gradient norm."""
    return tuple(task.terms) + ("correct", "count", "grad_norm")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any = flax.struct.field(default_factory=dict)  # mutable collections: {} or {"batch_stats": ...}


def create_train_state(params: Any, optimizer: optax.GradientTransformation,
                       model_state: Any = None) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      model_state=dict(model_state or {}))


def state_from_variables(variables: dict, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh train state from a family's initial variables ({"params", *mutable})."""
    return create_train_state(variables["params"], optimizer,
                              {k: v for k, v in variables.items() if k != "params"})


def _default_task(task):
    if task is not None:
        return task
    from pthnet_jax.task import get_task

    return get_task()


def combine_model_state(model_state: Any, sync: str) -> Any:
    """Inside pmap: one value of each mutable collection on every device.

    "pmean": the mean over devices (Flax's examples). "first": the first device's values (PyTorch's
    DataParallel, where only the master replica's running buffers persist).
    """
    if jax.device_count() == 1 or not jax.tree.leaves(model_state):
        return model_state
    if sync == "pmean":
        return jax.lax.pmean(model_state, parallel.AXIS)
    if sync == "first":
        first = jax.lax.axis_index(parallel.AXIS) == 0
        return jax.lax.psum(jax.tree.map(lambda x: jnp.where(first, x, jnp.zeros_like(x)), model_state),
                            parallel.AXIS)
    raise ValueError(f"unknown model state sync {sync!r}")


def train_step(state: TrainState, batch: dict[str, Any], *, model: Any, optimizer: optax.GradientTransformation,
               seed: Any, task: Any = None, sync: str = "pmean") -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on this device's share of a global batch (inside pmap)."""
    task = _default_task(task)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0x0D0), state.step)
    dropout_key = parallel.device_rng(key)
    weights = batch["valid"].astype(jnp.float32)
    count = parallel.global_sum(weights.sum())
    denominator = jnp.maximum(count, 1.0)

    def loss_fn(params):
        terms, logits, new_state = task.loss(model, {"params": params, **state.model_state}, batch, dropout_key)
        return jnp.sum(terms["total"] * weights) / denominator, (terms, logits, new_state)

    (_, (terms, logits, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = parallel.global_sum(grads)  # each device's loss is already divided by the global count
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    model_state = combine_model_state(dict(new_state), sync) if task.mutable else state.model_state
    correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32) * weights
    # The terms the family returned (`task.terms` in training; fewer when a batch holds fewer inputs).
    metrics = {name: parallel.global_sum(jnp.sum(value * weights)) for name, value in terms.items()}
    metrics.update(correct=parallel.global_sum(correct.sum()), count=count,
                   grad_norm=optax.tree.norm(grads))
    return TrainState(state.step + 1, params, opt_state, model_state), metrics


def train_chunk(state: TrainState, store: Any, indices: jax.Array, valid: jax.Array, epoch: jax.Array,
                seed: jax.Array, *, task: Any, model: Any, optimizer: optax.GradientTransformation, options: Any,
                sync: str = "pmean") -> tuple[TrainState, dict[str, jax.Array]]:
    """Several steps in one device call: the batches are sampled on the device from `store`.

    indices/valid: (steps, per_device_batch) for this device. Returns per-step metrics (steps,).
    """
    def one_step(carry: TrainState, step_indices: jax.Array, step_valid: jax.Array):
        batch = task.sample(store, step_indices, step_valid, seed=seed, epoch=epoch, train=True, options=options)
        return train_step(carry, batch, model=model, optimizer=optimizer, seed=seed, task=task, sync=sync)

    if indices.shape[0] == 1:  # one step per call: no loop, no conditional
        new, metrics = one_step(state, indices[0], valid[0])
        return new, jax.tree.map(lambda x: x[None], metrics)

    names = metric_names(task)

    def body(carry, plan):
        step_indices, step_valid = plan
        # Chunks have a fixed length (one compilation); steps past the epoch's end are all padding:
        # skip them (no compute, and no weight decay, momentum or step count). Every device of every
        # process takes the same branch because the decision is a global sum.
        real = parallel.global_sum(jnp.any(step_valid).astype(jnp.int32)) > 0

        def skip(carry):  # the metric names are static: tracing the step a second time costs seconds
            return carry, {name: jnp.zeros((), jnp.float32) for name in names}

        return jax.lax.cond(real, lambda c: one_step(c, step_indices, step_valid), skip, carry)

    return jax.lax.scan(body, state, (indices, valid))


def seeded_train_step(state: TrainState, batch: dict[str, Any], seed: jax.Array, **bound
                      ) -> tuple[TrainState, dict[str, jax.Array]]:
    """`train_step` with the seed an argument (traced) instead of a bound constant."""
    return train_step(state, batch, seed=seed, **bound)


def predict(variables: Any, batch: dict[str, Any], *, model: Any, task: Any = None) -> jax.Array:
    """Evaluation logits (B, C). `variables`: {"params", *mutable}, or the params alone."""
    task = _default_task(task)
    return task.predict(model, _as_variables(variables), batch)


def predict_resident(variables: Any, store: Any, indices: jax.Array, valid: jax.Array, *, task: Any, model: Any,
                     options: Any) -> jax.Array:
    batch = task.sample(store, indices, valid, seed=0, epoch=0, train=False, options=options)
    return task.predict(model, _as_variables(variables), batch)


def _as_variables(variables: Any) -> dict:
    return variables if isinstance(variables, dict) and "params" in variables else {"params": variables}


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
