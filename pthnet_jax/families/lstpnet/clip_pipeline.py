"""Batches of sampled, resized clips: a grain MapDataset over the records, decoding on the host.

A clip's frames, flip and pixels depend only on (seed, epoch, clip index) (clips.sample_clip), and the
clip order of an epoch only on (seed, epoch) (data.sampling.epoch_order), so batches are the same
for any worker count, and a run restarted at an epoch (or a step) reads the same batches again.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from pthnet_jax.data.sampling import batch_plan, epoch_order
from pthnet_jax.families.lstpnet.clips import DURATION, IMAGE_SIZE, NUM_SEGMENTS, clip_frames, sample_clip


def load_clip(split, index: int, *, seed: int, epoch: int, train: bool, size: int = IMAGE_SIZE,
              flip: bool = True, segments: int = NUM_SEGMENTS, duration: int = DURATION) -> np.ndarray:
    """(segments * duration, size, size, 3) uint8: clip `index` of `split`, sampled and resized."""
    frames = split.frames(index)
    indices, flipped = sample_clip(int(split.num_frames[index]), seed=seed, epoch=epoch, clip=split.record_id(index),
                                   train=train, flip=flip, segments=segments, duration=duration)
    return clip_frames(frames, indices, size=size, flip=flipped,
                       where=f"{split.dataset_dir} split {split.name} clip {index} ({split.clip_ids[index]})")


def clip_subset(split, min_frames: int = 0, subset: np.ndarray | None = None) -> np.ndarray:
    """The clips an epoch reads: `subset` (default all) without those under `min_frames` frames
    (min_frames = 16 is the original's short-clip filter; 0 keeps every clip)."""
    chosen = np.arange(split.num_clips) if subset is None else np.asarray(subset, np.int64)
    if min_frames:
        chosen = chosen[np.asarray(split.num_frames)[chosen] >= min_frames]
    return chosen


def epoch_plan(split, *, train: bool, global_batch: int, seed: int = 0, epoch: int = 0,
               process_index: int = 0, process_count: int = 1, min_frames: int = 0,
               subset: np.ndarray | None = None, shuffle: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, local batch) clip indices and validity of this process for one epoch."""
    chosen = clip_subset(split, min_frames, subset)
    shuffle = train if shuffle is None else shuffle
    order = chosen[epoch_order(len(chosen), seed=seed, epoch=epoch, shuffle=shuffle)]
    return batch_plan(order, global_batch=global_batch, process_index=process_index,
                      process_count=process_count)


def iterate_clip_batches(split, *, train: bool, global_batch: int, seed: int = 0, epoch: int = 0,
                         process_index: int | None = None, process_count: int | None = None,
                         min_frames: int = 0, subset: np.ndarray | None = None,
                         plan: tuple[np.ndarray, np.ndarray] | None = None, start_step: int = 0,
                         stop_step: int | None = None, size: int = IMAGE_SIZE, flip: bool = True,
                         num_devices: int | None = None, num_threads: int = 4,
                         shuffle: bool | None = None, pad_with_clips: bool = False) -> Iterator[dict[str, Any]]:
    """One epoch's batches for this process: frames (B, T, size, size, 3) uint8, label (B,) int32,
    valid (B,) bool, index (B,) int32 (the clip's record index; 0 on padding rows).

    The last global batch is padded with valid=False rows (label 0, index 0) of zero frames, or with
    `pad_with_clips` the frames of the clip the plan names there (clip 0), so that the batch
    statistics of a BatchNorm model see real images only. `plan` (indices,
    valid) replaces the epoch plan made here from (seed, epoch, shuffle, min_frames, subset);
    `start_step`/`stop_step` select a range of its steps. With `num_devices` every array gets a
    leading (num_devices, B // num_devices) layout. Decoding runs in `num_threads` grain threads
    (Pillow releases the GIL while it decodes and resizes).
    """
    import grain

    if plan is None:
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        plan = epoch_plan(split, train=train, global_batch=global_batch, seed=seed, epoch=epoch,
                          process_index=process_index, process_count=process_count,
                          min_frames=min_frames, subset=subset, shuffle=shuffle)
    indices, valid = (np.asarray(a) for a in plan)
    indices, valid = indices[start_step:stop_step], valid[start_step:stop_step]
    if not len(indices):
        return
    local = indices.shape[1]
    if num_devices is not None and local % num_devices:
        raise ValueError(f"local batch {local} is not divisible by {num_devices} devices")
    rows_index, rows_valid = indices.reshape(-1), valid.reshape(-1)
    frames_per_clip = NUM_SEGMENTS * DURATION
    labels = np.asarray(split.labels, np.int32)

    def load(row: int) -> dict[str, Any]:
        index, ok = int(rows_index[row]), bool(rows_valid[row])
        if ok or pad_with_clips:
            frames = load_clip(split, index, seed=seed, epoch=epoch, train=train, size=size, flip=flip)
        else:
            frames = np.zeros((frames_per_clip, size, size, 3), np.uint8)
        return {"frames": frames, "label": np.int32(labels[index] if ok else 0), "valid": np.bool_(ok),
                "index": np.int32(index if ok else 0)}

    threads = max(1, num_threads)  # clips decode in parallel, batches are assembled in order
    dataset = grain.MapDataset.range(len(rows_index)).map(load).to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)).batch(local)
    for batch in dataset:
        batch = {key: np.asarray(value) for key, value in batch.items()}
        if num_devices is not None:
            batch = {k: v.reshape(num_devices, local // num_devices, *v.shape[1:]) for k, v in batch.items()}
        yield batch
