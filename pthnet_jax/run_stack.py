"""The run axis: K training runs' states, stores and plans stacked, and the step mapped over them.

A stacked tree has a leading run axis (K, ...) on the host and (devices, K, ...) on the devices
(pmap's axis in front, the run axis inside each device's program). The step is today's
`steps.train_chunk` under `jax.vmap`; what differs between runs is traced: the seed, the epoch,
the steps per epoch (the learning-rate milestones are epochs) and the data.

Runs of one program may have different numbers of steps per epoch (folds differ in size). A round
of the multi-run loop runs every run to the end of its current epoch; a run with fewer steps left
gets all-invalid steps *in front*, which change nothing (the chunk's `lax.cond` skip becomes a
per-run select under `vmap`), so every run ends its epoch at the round's last step and a stop in the
middle of a round never leaves a run with a finished but unsaved epoch.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pthnet_jax import parallel, steps
from pthnet_jax.data.sampling import bucket


# ---- trees with a run axis ---------------------------------------------------------------------

def stack(trees: Sequence[Any]) -> Any:
    """K host trees of equal structure -> one tree with a leading run axis (numpy)."""
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(leaf) for leaf in leaves]), *trees)


def unstack(tree: Any, count: int) -> list[Any]:
    """A tree with a leading run axis -> K trees (numpy views, no copies)."""
    return [jax.tree.map(lambda x, k=k: np.asarray(x)[k], tree) for k in range(count)]


def stacked_store(stores: Sequence[Any]) -> Any:
    """Per-run resident stores (host trees of one structure) padded to common sizes and stacked on a
    run axis.

    Every leaf is indexed by rows or clips on its first axis (a family's `store`: PTH-Net's flat
    windows, offsets, counts and labels); it is zero-padded to the bucketed largest size. Padding
    rows and clips are never read (a plan names only a run's own clips), so a run's samples are the
    ones it draws alone.
    """
    def padded_stack(*arrays):
        arrays = [np.asarray(a) for a in arrays]
        if arrays[0].ndim == 0:
            return np.stack(arrays)
        rows = bucket(max(a.shape[0] for a in arrays))
        return np.stack([np.concatenate([a, np.zeros((rows - a.shape[0], *a.shape[1:]), a.dtype)])
                         if a.shape[0] < rows else a for a in arrays])

    return jax.tree.map(padded_stack, *stores)


# ---- plans: a round of every run's current epoch -------------------------------------------------

def round_plan(plans: Sequence[tuple[np.ndarray, np.ndarray] | None], firsts: Sequence[int]
               ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Stack the runs' epoch plans from their first step, front-padded to the longest remainder.

    plans: per run (steps_per_epoch, local_batch) indices and validity, or None for a run with
    nothing left (all padding). Returns (K, S, local_batch) indices and validity, and per run the
    round position at which its real steps start (S - remaining steps).
    """
    remaining = [0 if p is None else len(p[0]) - first for p, first in zip(plans, firsts)]
    length = max(remaining)
    local = next(p[0].shape[1] for p in plans if p is not None)
    indices = np.zeros((len(plans), length, local), np.int32)
    valid = np.zeros((len(plans), length, local), bool)
    starts = []
    for k, (plan, first, left) in enumerate(zip(plans, firsts, remaining)):
        starts.append(length - left)
        if plan is not None and left:
            indices[k, length - left:], valid[k, length - left:] = plan[0][first:], plan[1][first:]
    return indices, valid, starts


def round_steps(indices: np.ndarray, valid: np.ndarray, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps [start, start + length) of a round, padded past its end with invalid steps; host layout
    (K, length, batch)."""
    part_i, part_v = indices[:, start:start + length], valid[:, start:start + length]
    missing = length - part_i.shape[1]
    if missing:
        part_i = np.concatenate([part_i, np.zeros((part_i.shape[0], missing, part_i.shape[2]), part_i.dtype)], 1)
        part_v = np.concatenate([part_v, np.zeros((part_v.shape[0], missing, part_v.shape[2]), bool)], 1)
    return part_i, part_v


def chunk(indices: np.ndarray, valid: np.ndarray, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """`round_steps` in the device layout (devices, K, length, per_device_batch)."""
    part_i, part_v = round_steps(indices, valid, start, length)
    return parallel.split_for_devices(part_i, axis=2), parallel.split_for_devices(part_v, axis=2)


def per_device(values: Sequence[int]) -> np.ndarray:
    """(devices, K) int32: one value per run, the same on every device."""
    return np.broadcast_to(np.asarray(values, np.int32), (parallel.local_device_count(), len(values))).copy()


# ---- the step over the run axis ------------------------------------------------------------------

def traced_optimizer(lr: float, momentum: float, weight_decay: float, milestones: tuple[int, ...],
                     gamma: float, steps_per_epoch: jax.Array, name: str = "sgd", b1: float = 0.9,
                     b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """`optim.make_optimizer`'s transform (SGD or Adam, `name`) with `steps_per_epoch` traced (one
    per run).

    The schedule is optax's `piecewise_constant_schedule` term for term (same operations, so the same
    bits), with the boundaries `milestone * steps_per_epoch` computed on the device.
    """
    def schedule(count):
        value = lr
        for milestone in sorted(set(milestones)):
            indicator = jnp.maximum(0.0, jnp.sign(milestone * steps_per_epoch - count))
            value = value * indicator + (1 - indicator) * gamma * value
        return value

    if name not in ("sgd", "adam"):
        raise ValueError(f"config.optim.name must be 'sgd' or 'adam', got {name!r}")
    update = optax.adam(schedule, b1=b1, b2=b2, eps=eps) if name == "adam" else \
        optax.sgd(schedule, momentum=momentum or None, nesterov=False)
    return optax.chain(optax.add_decayed_weights(weight_decay), update)


def runs_chunk(state, store, indices, valid, epochs, seeds, steps_per_epoch, *, task, model, optim: tuple,
               options, sync: str, shared_store: bool, vmap_width: int = 0):
    """`steps.train_chunk` mapped over the run axis (inside pmap). `optim`: (lr, momentum,
    weight_decay, milestones, gamma, name, b1, b2, eps): `traced_optimizer`'s arguments but
    steps_per_epoch. `shared_store`: one store for every run (no run axis).

    `vmap_width`: how many runs are batched together. 0 (or >= K): all of them, one `jax.vmap`;
    1: one run after another in a loop (`lax.map`: the compiled body is one run's step, so every
    run computes exactly what it computes alone, padded steps are skipped, not masked); w: `lax.map`
    over groups of w vmapped runs. Which is fastest is the device's business (see `resolve_vmap_width`).
    """
    def one_run(state, store, indices, valid, epoch, seed, per_epoch):
        optimizer = traced_optimizer(*optim[:5], per_epoch, *optim[5:])
        new, metrics = steps.train_chunk(state, store, indices, valid, epoch, seed, task=task, model=model,
                                         optimizer=optimizer, options=options, sync=sync)
        if indices.shape[0] == 1:  # train_chunk skips padded steps only in calls of several steps
            real = parallel.global_sum(jnp.any(valid).astype(jnp.int32)) > 0
            new = jax.tree.map(lambda a, b: jnp.where(real, a, b), new, state)
        return new, metrics

    count = indices.shape[0]
    if vmap_width == 0 or vmap_width >= count:
        in_axes = (0, None if shared_store else 0, 0, 0, 0, 0, 0)
        return jax.vmap(one_run, in_axes=in_axes)(state, store, indices, valid, epochs, seeds, steps_per_epoch)
    mapped = (state, indices, valid, epochs, seeds, steps_per_epoch) + (() if shared_store else (store,))

    def body(args):
        run_store = store if shared_store else args[6]
        return one_run(args[0], run_store, *args[1:6])

    return jax.lax.map(body, mapped, batch_size=None if vmap_width == 1 else vmap_width)


def resolve_vmap_width(setting: int, platform: str | None = None) -> int:
    """config.train.runs_vmap_width: -1 (auto) is 1 on a CPU, where batching runs gains no
    throughput (the matrix products already fill the cores) but costs a larger compilation, and 0
    (every run in one vmap) on accelerators, where one run cannot fill the device."""
    if setting >= 0:
        return int(setting)
    platform = platform or jax.default_backend()
    return 1 if platform == "cpu" else 0


def runs_chunk_fn(task, model, optim: tuple, options, sync: str, shared_store: bool, vmap_width: int = 0):
    """The pmapped multi-run chunk (cached like every pmapped step: one trace per setting)."""
    return steps.pmapped(runs_chunk, donate_state=True, task=task, model=model, optim=optim, options=options,
                         sync=sync, shared_store=bool(shared_store), vmap_width=int(vmap_width))


@functools.lru_cache(maxsize=8)
def jitted_init(task, model, transform):
    """One compiled initialisation per (family, model, optimiser): every run of a protocol reuses it."""
    return jax.jit(lambda key: steps.state_from_variables(task.init(model, key), transform))
