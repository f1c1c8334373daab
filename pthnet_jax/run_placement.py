"""Where the runs of one program sit on the local devices (`config.train.runs_placement`).

"inside" (`run_stack`, the first placement): the data-parallel `pmap` over the local devices, the
run axis inside each device's program; every device takes its share of every run's global batch and
the gradients are summed over the devices. A run ends as it does alone on the same devices.

"spread": the run axis split over the local devices (a 1-D mesh, `jax.shard_map`), each device
training K / D whole runs on their whole global batches, with no cross-device sum. The per-device
program is the inside placement's (`run_stack.runs_chunk`) under a `vmap` of size one named
`parallel.AXIS`, so the step's collectives (`psum`, `pmean`, `axis_index` on that axis) see one
device: a run ends as it does alone on ONE device (same dropout keys, up to float rounding where XLA
batches the runs' matrix products). K is padded up to a multiple of D with inert runs (copies of the
first run's state whose steps are all invalid: skipped, their results dropped). One process only.

"auto": spread when one process has several devices and the global batch does not split over them
(inside cannot run then), or when there are at least as many runs as devices and spread was measured
faster (`SPREAD_WHEN_AUTO`); inside otherwise.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import numpy as np

from pthnet_jax import parallel, run_stack
from pthnet_jax.config_check import RUNS_PLACEMENTS
from pthnet_jax.epochs import TrainingError

RUNS = "runs"  # the mesh axis the spread placement splits the run axis over
# What "auto" picks when both placements can run: spread, measured faster (README, "Many runs in one
# program": `benchmarks.runs throughput --placement both`, tiny width, 2 fake CPU devices: 1.1-2.4x).
SPREAD_WHEN_AUTO = True


def resolve(requested: str, runs: int, global_batch: int, devices: int | None = None,
            processes: int | None = None) -> str:
    """"inside" or "spread" for `runs` runs of one program; a clear error for an impossible request."""
    devices = parallel.local_device_count() if devices is None else devices
    processes = jax.process_count() if processes is None else processes
    if requested not in RUNS_PLACEMENTS:
        raise TrainingError(f"config.train.runs_placement must be one of {', '.join(RUNS_PLACEMENTS)}, "
                            f"got {requested!r}")
    if requested == "spread" and processes > 1:
        raise TrainingError(f"config.train.runs_placement 'spread' runs in one process; this run has {processes} "
                            "processes: use 'inside' (or 'auto')")
    if requested != "auto":
        return "inside" if devices == 1 else requested  # one device: the two are one program
    if processes > 1 or devices == 1:
        return "inside"
    if global_batch % devices:
        return "spread"  # inside splits every run's batch over the devices: it cannot run
    return "spread" if SPREAD_WHEN_AUTO and runs >= devices else "inside"


def choose(train_config, runs: int) -> Any:
    """The placement object for `runs` runs under `train_config` (`.name` says which)."""
    name = resolve(str(train_config.get("runs_placement", "auto")), runs, int(train_config.global_batch))
    if parallel.local_device_count() > 1 and jax.process_index() == 0:
        print(f"{runs} runs placed {name} ({_DESCRIBE[name]} of the {parallel.local_device_count()} local devices)",
              flush=True)
    return Spread(runs) if name == "spread" else Inside(runs)


_DESCRIBE = {"inside": "each run's batch split over each", "spread": "whole runs on each"}


class Inside:
    """The inside placement: `run_stack`'s functions, called as the loop always called them."""

    name = "inside"

    def __init__(self, count: int):
        self.count = count

    def put_states(self, states: Sequence[Any]) -> Any:
        return parallel.replicate(run_stack.stack(states))

    def states(self, placed: Any) -> list[Any]:
        return run_stack.unstack(parallel.unreplicate(placed), self.count)

    def per_run(self, values: Sequence[int]) -> Any:
        return run_stack.per_device(values)

    def chunk(self, indices: np.ndarray, valid: np.ndarray, start: int, length: int) -> tuple[Any, Any]:
        return run_stack.chunk(indices, valid, start, length)

    def metrics(self, metrics: Any) -> dict[str, np.ndarray]:
        return parallel.unreplicate(metrics)

    def shared_store(self, store: Any) -> Any:
        return store

    def stacked_store(self, stacked: Any) -> Any:
        return parallel.replicate(stacked)

    def chunk_fn(self, task, model, optim: tuple, options, sync: str, shared: bool, vmap_width: int = 0):
        return run_stack.runs_chunk_fn(task, model, optim, options, sync, shared, vmap_width)


class Spread:
    """The spread placement: stacked trees of `padded` runs, the run axis sharded over the devices."""

    name = "spread"

    def __init__(self, count: int):
        if jax.process_count() > 1:
            raise TrainingError("the spread placement of many runs runs in one process only")
        self.count = count
        self.devices = parallel.local_device_count()
        self.padded = -(-count // self.devices) * self.devices
        self.mesh = jax.sharding.Mesh(np.array(jax.local_devices()), (RUNS,))
        self.sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(RUNS))

    def _pad(self, tree: Any, fill_first: bool) -> Any:
        """(count, ...) host leaves -> (padded, ...): the first run's values, or zeros, behind."""
        def pad(x):
            x = np.asarray(x)
            extra = self.padded - x.shape[0]
            if not extra:
                return x
            tail = np.repeat(x[:1], extra, 0) if fill_first else np.zeros((extra, *x.shape[1:]), x.dtype)
            return np.concatenate([x, tail])

        return jax.tree.map(pad, tree)

    def _put(self, tree: Any) -> Any:
        return jax.device_put(tree, self.sharding)

    def put_states(self, states: Sequence[Any]) -> Any:
        return self._put(self._pad(run_stack.stack(states), fill_first=True))

    def states(self, placed: Any) -> list[Any]:
        return run_stack.unstack(jax.tree.map(lambda x: np.asarray(x)[:self.count], placed), self.count)

    def per_run(self, values: Sequence[int]) -> Any:
        return self._put(self._pad(np.asarray(values, np.int32), fill_first=True))

    def chunk(self, indices: np.ndarray, valid: np.ndarray, start: int, length: int) -> tuple[Any, Any]:
        """Steps [start, start + length) of a round, padded past its end; (padded runs, length, batch):
        every run's whole global batch, on the device that holds the run."""
        part_i, part_v = run_stack.round_steps(indices, valid, start, length)
        return self._put(self._pad(part_i, fill_first=False)), self._put(self._pad(part_v, fill_first=False))

    def metrics(self, metrics: Any) -> dict[str, np.ndarray]:
        return jax.tree.map(lambda x: np.asarray(x)[:self.count], metrics)

    def shared_store(self, store: Any) -> Any:
        """The store replicated in pmap layout (devices, ...): the same buffers, seen on the run mesh
        (each device's block is its own copy)."""
        return self._put(store)

    def stacked_store(self, stacked: Any) -> Any:
        return self._put(self._pad(stacked, fill_first=False))

    def chunk_fn(self, task, model, optim: tuple, options, sync: str, shared: bool, vmap_width: int = 0):
        bound = dict(task=task, model=model, optim=optim, options=options, sync=sync, shared_store=bool(shared),
                     vmap_width=int(vmap_width))
        try:
            return _spread_fn(self.mesh, tuple(sorted(bound.items())))
        except TypeError:  # an unhashable dependency: no reuse
            return _spread_fn.__wrapped__(self.mesh, tuple(sorted(bound.items())))


def _one_device(state, store, indices, valid, epochs, seeds, spes, *, shared_store: bool, **bound):
    """One device's block of runs: the inside placement's program for a single device (a leading
    device axis of size one, named `parallel.AXIS`, so the step's collectives are over that device)."""
    def lead(tree):
        return jax.tree.map(lambda x: x[None], tree)

    step = jax.vmap(functools.partial(run_stack.runs_chunk, shared_store=shared_store, **bound),
                    axis_name=parallel.AXIS)
    # A shared store arrives in pmap layout: its device block already has the leading axis of one.
    new, metrics = step(lead(state), store if shared_store else lead(store), lead(indices), lead(valid),
                        lead(epochs), lead(seeds), lead(spes))
    return jax.tree.map(lambda x: x[0], (new, metrics))


@functools.lru_cache(maxsize=8)
def _spread_fn(mesh, bound: tuple[tuple[str, Any], ...]):
    """The jitted spread chunk: every argument split over the mesh on its leading axis (one trace per
    setting, cached like the pmapped steps)."""
    spec = jax.sharding.PartitionSpec(RUNS)
    mapped = jax.shard_map(functools.partial(_one_device, **dict(bound)), mesh=mesh, in_specs=(spec,) * 7,
                           out_specs=(spec, spec), check_vma=False)
    return jax.jit(mapped, donate_argnums=(0,))
