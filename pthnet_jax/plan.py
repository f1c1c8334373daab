"""Which clips each step of an epoch takes, for every family: the epoch's order from (seed, epoch)
and each process's share of every global batch, the last partial batch padded (valid False)."""
from __future__ import annotations

import numpy as np


def epoch_order(num_clips: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Clip order of one epoch: a permutation derived from (seed, epoch), or list order."""
    if not shuffle:
        return np.arange(num_clips, dtype=np.int64)
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_clips)


def batch_plan(order: np.ndarray, *, global_batch: int, process_index: int = 0,
               process_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(num_steps, local_batch) clip indices and validity for this host.

    The last partial global batch is kept and padded (valid False, index 0), as the original keeps
    the last partial batch; each host takes a contiguous slice of every global batch.
    """
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} is not divisible by the {process_count} processes")
    num_steps = -(-len(order) // global_batch)
    padded = np.zeros(num_steps * global_batch, np.int64)
    padded[:len(order)] = order
    valid = np.arange(num_steps * global_batch) < len(order)
    local = global_batch // process_count
    shape = (num_steps, process_count, local)
    indices = padded.reshape(shape)[:, process_index].astype(np.int32)
    return indices, valid.reshape(shape)[:, process_index]
