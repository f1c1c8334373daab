"""All device placement: the local devices, replication, sharding batches, per-device RNG.

Data parallel with `jax.pmap` over the local devices of every process (multi-host through
`jax.distributed`); changing the strategy (e.g. to `jit` + `NamedSharding`) touches this file only.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

AXIS = "devices"


def maybe_initialize_distributed() -> bool:
    """Join a multi-process run when the environment describes one; True if it did.

    PTHNET_COORDINATOR=host:port, PTHNET_NUM_PROCESSES and PTHNET_PROCESS_ID name the run
    explicitly; PTHNET_DISTRIBUTED=auto lets JAX detect a cluster (SLURM, TPU pods...).
    On CPU, cross-process collectives need an implementation (gloo): without it a psum across
    processes fails at run time.
    """
    address = os.environ.get("PTHNET_COORDINATOR")
    auto = os.environ.get("PTHNET_DISTRIBUTED", "").lower() == "auto"
    if not address and not auto:
        return False
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or os.environ.get("PTHNET_CPU_COLLECTIVES"):
        jax.config.update("jax_cpu_collectives_implementation",
                          os.environ.get("PTHNET_CPU_COLLECTIVES", "gloo"))
    if auto:
        jax.distributed.initialize()
        return True
    missing = [name for name in ("PTHNET_NUM_PROCESSES", "PTHNET_PROCESS_ID") if name not in os.environ]
    if missing:
        raise RuntimeError(f"PTHNET_COORDINATOR={address} is set but {', '.join(missing)} is not; set "
                           "all three to run on several processes")
    jax.distributed.initialize(coordinator_address=address,
                               num_processes=int(os.environ["PTHNET_NUM_PROCESSES"]),
                               process_id=int(os.environ["PTHNET_PROCESS_ID"]))
    return True


def local_device_count() -> int:
    return jax.local_device_count()


def _sharding(shape: tuple[int, ...]) -> jax.sharding.Sharding:
    """Leading axis split over the local devices, the layout pmap consumes without copies."""
    del shape
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()), (AXIS,))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def replicate(tree: Any) -> Any:
    """One copy of every leaf on every local device, laid out for pmap (leading device axis)."""
    count = jax.local_device_count()

    def put(leaf):
        leaf = np.asarray(leaf) if not isinstance(leaf, jax.Array) else jax.device_get(leaf)
        stacked = np.broadcast_to(leaf, (count, *leaf.shape))  # a view: no host copy
        return jax.device_put(stacked, _sharding(stacked.shape))

    return jax.tree.map(put, tree)


def unreplicate(tree: Any) -> Any:
    """The first local device's copy, as host numpy arrays.

    Reads the device buffer directly: `x[0]` would dispatch a slicing computation per leaf.
    """
    def first(x):
        if isinstance(x, jax.Array):  # pmap outputs hold (...) per device, our placements (1, ...)
            return np.asarray(x.addressable_data(0)).reshape(x.shape[1:])
        return np.asarray(x)[0]

    return jax.tree.map(first, tree)


def first_device(tree: Any) -> Any:
    """The first local device's copy of a replicated tree, as device arrays (for `jax.jit`)."""
    return jax.tree.map(lambda x: x.addressable_data(0).reshape(x.shape[1:]), tree)


def shard(tree: Any) -> Any:
    """Host arrays with a leading (local devices, ...) axis -> device arrays, one slice per device."""
    return jax.tree.map(lambda x: jax.device_put(x, _sharding(np.shape(x))), tree)


def split_for_devices(tree: Any, axis: int = 0) -> Any:
    """Reshape axis `axis` of size B into (devices, B // devices) in front; clear error if uneven."""
    count = jax.local_device_count()

    def reshape(x):
        x = np.asarray(x)
        size = x.shape[axis]
        if size % count:
            raise ValueError(f"a batch of {size} does not split evenly over {count} local devices")
        split = x.reshape(*x.shape[:axis], count, size // count, *x.shape[axis + 1:])
        return np.moveaxis(split, axis, 0)

    return jax.tree.map(reshape, tree)


def device_rng(key: jax.Array) -> jax.Array:
    """Inside pmap: a key of this device's own, from the global device index."""
    return jax.random.fold_in(key, jax.lax.axis_index(AXIS))


def global_sum(x: Any) -> Any:
    """Inside pmap: sum over every device of every process (nothing to do when there is one)."""
    if jax.device_count() == 1:  # XLA:CPU still copies ~40 MB of gradients through an all-reduce of one
        return x
    return jax.lax.psum(x, AXIS)


def all_gather_hosts(x: np.ndarray) -> np.ndarray:
    """Concatenate a host-local array over processes (identity on one process)."""
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(x)
    return np.concatenate(list(gathered))


def _any_over_devices(flags: jax.Array) -> jax.Array:
    return jax.lax.psum(flags, AXIS)


_pmapped_any = jax.pmap(_any_over_devices, axis_name=AXIS)


def any_process_async(flag: bool) -> Any:
    """Dispatch "is `flag` set on any process?"; read the answer later with `read_flag`.

    Every process must call this at the same points (it is a collective). With one process the
    answer is the flag itself and nothing is dispatched. The answer is a device value so that the
    caller can read it one device call later, like the step metrics, without stalling the device.
    """
    if jax.process_count() == 1:
        return bool(flag)
    flags = np.full((jax.local_device_count(),), int(bool(flag)), np.int32)
    return _pmapped_any(shard(flags))


def read_flag(answer: Any) -> bool:
    if isinstance(answer, bool):
        return answer
    return bool(unreplicate(answer) > 0)


_barriers = {"count": 0}


def wait_for_all_processes(name: str, timeout_s: float = 3600.0) -> None:
    """Block until every process got here (a coordination-service barrier, no device collective).

    Used after compiling the training step: on CPU, gloo gives the first collective only ~30 s for
    every process to arrive, less than one process may spend compiling when another was faster.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    _barriers["count"] += 1
    distributed.global_state.client.wait_at_barrier(f"pthnet/{name}/{_barriers['count']}",
                                                     int(timeout_s * 1000))
