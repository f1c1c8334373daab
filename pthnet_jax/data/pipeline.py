"""Host-side batch iterators: resident (everything in memory) or streaming (grain over the records).

Both call the same jitted `sample_batch`, keyed by clip index, so they give identical batches.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Iterator, Sequence

import jax
import numpy as np

from pthnet_jax.data.sampling import (LEVELS, ResidentFeatures, batch_plan, epoch_order, finish_batch,
                                      level_lengths, sample_batch, sample_positions)

# Resident when the features take less than this share of the machine's memory (auto mode).
RESIDENT_MEMORY_FRACTION = 0.25


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 << 30


def resident_budget() -> int:
    """Bytes of features that auto mode keeps resident: $PTHNET_RESIDENT_BUDGET_GB or 25% of RAM."""
    configured = os.environ.get("PTHNET_RESIDENT_BUDGET_GB")
    if configured:
        return int(float(configured) * (1 << 30))
    return int(RESIDENT_MEMORY_FRACTION * _total_memory())


def choose_mode(split, mode: str = "auto", budget_bytes: int | None = None) -> str:
    """"resident" or "streaming"; auto is resident when the split's features fit the budget."""
    if mode not in ("auto", "resident", "streaming"):
        raise ValueError(f"data mode must be 'auto', 'resident' or 'streaming', got {mode!r}")
    if mode != "auto":
        return mode
    budget = resident_budget() if budget_bytes is None else budget_bytes
    return "resident" if split.feature_bytes() < budget else "streaming"


def resident_features(split, levels: Sequence[str] = LEVELS) -> ResidentFeatures:
    """The split's windows of `levels`, replicated on every local device (pmap layout).

    The one way resident features reach the devices: each level is read from the records once and
    placed once, memoised on the split, and shared by training, evaluation and `iterate_batches`.
    """
    from pthnet_jax import parallel

    cache = split.cache.setdefault("resident", {})
    missing = [lvl for lvl in levels if lvl not in cache]
    if missing:
        # Bucketed lengths: splits of similar size (folds, directions) share compiled programs.
        loaded = ResidentFeatures.from_split(split, missing, bucketed=True)
        for lvl in missing:
            cache[lvl] = parallel.replicate((loaded.windows[lvl], loaded.offsets[lvl], loaded.counts[lvl]))
        cache.setdefault("labels", parallel.replicate(loaded.labels))
    return ResidentFeatures(windows={lvl: cache[lvl][0] for lvl in levels},
                            offsets={lvl: cache[lvl][1] for lvl in levels},
                            counts={lvl: cache[lvl][2] for lvl in levels},
                            labels=cache["labels"])


@functools.partial(jax.jit, static_argnames=("train", "max_len", "levels"))
def _sample_jit(resident, indices, valid, clip_ids, seed, epoch, noise_std, *, train, max_len, levels):
    return sample_batch(resident, indices, valid, seed=seed, epoch=epoch, train=train, max_len=max_len,
                        noise_std=noise_std, levels=levels, clip_ids=clip_ids)


def _to_device_layout(batch: dict[str, Any], num_devices: int | None) -> dict[str, Any]:
    batch = jax.tree.map(np.asarray, batch)
    if num_devices is None:
        return batch
    local = batch["labels"].shape[0]
    if local % num_devices:
        raise ValueError(f"local batch {local} is not divisible by {num_devices} devices")
    return jax.tree.map(lambda x: x.reshape(num_devices, local // num_devices, *x.shape[1:]), batch)


@functools.partial(jax.jit, static_argnames=("train", "max_len", "levels"))
def _positions_jit(counts, clip_ids, valid, seed, epoch, *, train, max_len, levels):
    return sample_positions(counts, clip_ids, valid, seed=seed, epoch=epoch, train=train, max_len=max_len,
                            levels=levels)


@functools.partial(jax.jit, static_argnames=("train",))
def _finish_jit(gathered, masks, labels, valid, clip_ids, seed, epoch, noise_std, *, train):
    return finish_batch(gathered, masks, labels, valid, clip_ids, seed=seed, epoch=epoch, train=train,
                        noise_std=noise_std)


def _streamed_batch(split, indices: np.ndarray, valid: np.ndarray, *, seed: int, epoch: int, train: bool,
                    max_len: int, noise_std: float, levels: tuple[str, ...]) -> dict[str, Any]:
    """One batch from records read now: the same positions and noise as `sample_batch`.

    Window positions come from the jitted sampler (fixed shapes, one compilation), the windows are
    gathered on the host from the decoded records, and padding/noise are applied by the same jitted
    code the resident path runs.
    """
    unique, inverse = np.unique(indices, return_inverse=True)
    records = split.read(unique)
    inverse = inverse.reshape(-1)
    counts = {lvl: np.array([records[i][f"num_windows_{lvl}"] for i in inverse], np.int32) for lvl in levels}
    positions = jax.device_get(_positions_jit(counts, indices, valid, np.int32(seed), np.int32(epoch),
                                              train=train, max_len=max_len, levels=levels))
    gathered, masks = {}, {}
    for level, (picks, mask) in positions.items():
        windows = np.zeros((len(indices), level_lengths(max_len)[level], split.feature_dim), np.float32)
        for row, (record_index, row_picks, row_mask) in enumerate(zip(inverse, picks, mask)):
            taken = int(row_mask.sum())  # picks are at the front
            windows[row, :taken] = records[record_index][f"features_{level}"][row_picks[:taken]]
        gathered[level], masks[level] = windows, mask
    batch = _finish_jit(gathered, masks, split.labels[indices], valid, indices, np.int32(seed), np.int32(epoch),
                        np.float32(noise_std), train=train)
    return jax.device_get(batch)


def iterate_batches(split, *, train: bool, global_batch: int, seed: int = 0, epoch: int = 0,
                    mode: str = "auto", max_len: int = 16, noise_std: float = 0.0005,
                    process_index: int | None = None, process_count: int | None = None,
                    num_devices: int | None = None, levels: Sequence[str] | None = None,
                    resident: ResidentFeatures | None = None, num_threads: int = 4,
                    shuffle: bool | None = None, clip_subset: np.ndarray | None = None,
                    start_step: int = 0, stop_step: int | None = None,
                    budget_bytes: int | None = None) -> Iterator[dict[str, Any]]:
    """Batches of one epoch as numpy dicts (see `sample_batch`); evaluation keeps list order.

    Every clip appears exactly once per epoch over all hosts; the last global batch is padded with
    `valid=False` rows. With `num_devices`, arrays get a leading (num_devices, per_device) layout.
    `levels` defaults to all three in training and H in evaluation (the original evaluates H only).
    `clip_subset` restricts the epoch to those clip indices (e.g. a held-out validation part);
    `start_step`/`stop_step` select a range of the epoch's batches (resuming mid-epoch).
    Resident mode reads the split once and keeps it on the devices (`resident_features`).
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    levels = tuple(levels or (LEVELS if train else ("H",)))
    shuffle = train if shuffle is None else shuffle
    subset = np.arange(split.num_clips) if clip_subset is None else np.asarray(clip_subset)
    order = subset[epoch_order(len(subset), seed=seed, epoch=epoch, shuffle=shuffle)]
    indices, valid = batch_plan(order, global_batch=global_batch, process_index=process_index,
                                process_count=process_count)
    indices, valid = indices[start_step:stop_step], valid[start_step:stop_step]
    if num_devices is not None and indices.shape[1] % num_devices:
        raise ValueError(f"local batch {indices.shape[1]} (global {global_batch} over {process_count} "
                         f"processes) is not divisible by {num_devices} devices")
    noise = noise_std if train else 0.0
    sample = functools.partial(_sample_jit, seed=np.int32(seed), epoch=np.int32(epoch),
                               noise_std=np.float32(noise), train=train, max_len=max_len, levels=levels)
    if choose_mode(split, mode, budget_bytes) == "resident":
        from pthnet_jax import parallel

        resident = parallel.first_device(resident_features(split, levels)) if resident is None else \
            jax.device_put(resident)
        for step_indices, step_valid in zip(indices, valid):
            yield _to_device_layout(sample(resident, step_indices, step_valid, step_indices), num_devices)
        return

    import grain

    def load(step: int) -> dict[str, Any]:
        return _streamed_batch(split, indices[step], valid[step], seed=seed, epoch=epoch, train=train,
                               max_len=max_len, noise_std=noise, levels=levels)

    dataset = grain.MapDataset.range(len(indices)).map(load).to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads))
    for batch in dataset:
        yield _to_device_layout(batch, num_devices)
