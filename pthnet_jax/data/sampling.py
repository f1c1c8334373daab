"""The original's window sampling (segments per level, a random or the middle window of each), vectorised in jax.numpy so it runs jitted on a device.

Random choices for a clip come only from (seed, epoch, clip index, level), never from the clip's
position in a batch, so every input pipeline (resident or streaming, any batch size or host count)
gives a clip the same sample.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pthnet_jax.plan import batch_plan, epoch_order  # noqa: F401 - re-exported (data.batch_plan)
from pthnet_jax.pyramid import LEVELS, level_lengths

_LEVEL_IDS = {"L": 0, "M": 1, "H": 2}


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ResidentFeatures:
    """All windows of a split in memory: per level a flat (total_windows, D) array + offsets/counts."""

    windows: dict[str, Any]  # level -> (W_level, D) float32 (or bfloat16 to halve memory)
    offsets: dict[str, Any]  # level -> (N,) int32 start row of each clip
    counts: dict[str, Any]  # level -> (N,) int32 windows per clip
    labels: Any  # (N,) int32

    @classmethod
    def from_split(cls, split, levels: Sequence[str] = LEVELS, dtype=np.float32,
                   chunk: int = 1024, bucketed: bool = False) -> "ResidentFeatures":
        """Read every record of an opened split once (list order).

        `bucketed`: every array gets zero rows up to `bucket(rows)`. Programs that read resident
        features take their shapes from these arrays; only the rows of real clips are ever read
        (through offsets and clip indices), so padding changes no number, and splits of similar
        size (the folds of a protocol, both directions) run one compiled program instead of one each.
        """
        size = bucket if bucketed else (lambda n: n)
        counts = {lvl: _padded(np.asarray(split.num_windows[lvl], np.int32), size) for lvl in levels}
        offsets = {lvl: np.concatenate([[0], np.cumsum(c)[:-1]]).astype(np.int32) for lvl, c in counts.items()}
        windows = {}
        for lvl, c in counts.items():
            total = int(c.sum())  # padded clips have no windows
            windows[lvl] = np.empty((size(total), split.feature_dim), dtype)
            windows[lvl][total:] = 0
        for start in range(0, split.num_clips, chunk):
            for i, record in enumerate(split.read(range(start, min(start + chunk, split.num_clips))), start):
                for lvl in levels:
                    rows = record[f"features_{lvl}"]
                    windows[lvl][offsets[lvl][i]:offsets[lvl][i] + counts[lvl][i]] = rows
        return cls(windows, offsets, counts, _padded(np.asarray(split.labels, np.int32), size))

    @property
    def num_clips(self) -> int:
        return int(self.labels.shape[0])  # rows: clips plus any bucket padding


def bucket(n: int) -> int:
    """`n` rounded up to 3 significant bits (8 to 15 times a power of two): at most 12.5% more."""
    if n <= 16:
        return max(n, 1)
    shift = n.bit_length() - 4
    return -(-n >> shift) << shift


def _padded(array: np.ndarray, size) -> np.ndarray:
    rows = size(len(array))
    if rows == len(array):
        return array
    return np.concatenate([array, np.zeros((rows - len(array), *array.shape[1:]), array.dtype)])


# Segment bounds of step counts that are not powers of two come from a float64 table up to this many
# windows (longer clips use the exact rational rule, which can differ from float64 at exact halves).
FLOAT64_TABLE_WINDOWS = 4096


@functools.lru_cache(maxsize=None)
def _float64_bounds_table(num_steps: int) -> np.ndarray:
    """(FLOAT64_TABLE_WINDOWS + 1, num_steps + 1): int(np.round(float(n) / num_steps * i)), as numpy does."""
    seg = np.arange(FLOAT64_TABLE_WINDOWS + 1, dtype=np.float64)[:, None] / num_steps
    return np.round(seg * np.arange(num_steps + 1, dtype=np.float64)).astype(np.int32)


def segment_bounds(num_windows: jax.Array, num_steps: int, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Segment i's [start, end): np.round(n / num * i) and np.round(n / num * (i + 1)), as numpy float64.

    With num a power of two (4, 8, 16 for the original's max_len 16) float64 computes n * i / num
    exactly and rounds half to even, so the integer form below is bit-identical to numpy and needs no
    float64 on the device (float32 would misround long clips). Other step counts can land a hair off
    an exact half in float64; for them the bounds are looked up in a numpy-made float64 table.
    """
    def round_half_even(numerator):
        quotient, remainder = numerator // num_steps, numerator % num_steps
        twice = 2 * remainder
        up = (twice > num_steps) | ((twice == num_steps) & (quotient % 2 == 1))
        return quotient + up.astype(quotient.dtype)

    num_windows = jnp.asarray(num_windows, jnp.int32)
    start, end = round_half_even(num_windows * step), round_half_even(num_windows * (step + 1))
    if num_steps & (num_steps - 1):  # not a power of two
        table = jnp.asarray(_float64_bounds_table(num_steps))
        row = jnp.clip(num_windows, 0, FLOAT64_TABLE_WINDOWS)
        in_table = num_windows <= FLOAT64_TABLE_WINDOWS
        start = jnp.where(in_table, table[row, step], start)
        end = jnp.where(in_table, table[row, step + 1], end)
    return start, end


def pick_windows(key: jax.Array, num_windows: jax.Array, num_steps: int, train: bool) -> jax.Array:
    """Window index per step for one clip (valid only where step < min(n, num_steps))."""
    steps = jnp.arange(num_steps, dtype=jnp.int32)
    start, end = segment_bounds(num_windows, num_steps, steps)
    if train:
        uniform = jax.random.uniform(key, (num_steps,))
        picked = start + jnp.floor(uniform * (end - start)).astype(jnp.int32)
        picked = jnp.minimum(picked, end - 1)
    else:
        picked = start + num_windows // (2 * num_steps)  # int(seg / 2) with seg = n / num
    # Short clips take all their windows in order.
    return jnp.where(num_windows < num_steps, steps, picked)


def clip_key(seed, epoch, clip_index, level: str) -> jax.Array:
    key = jax.random.fold_in(jax.random.key(0), seed)
    key = jax.random.fold_in(key, epoch)
    key = jax.random.fold_in(key, clip_index)
    return jax.random.fold_in(key, _LEVEL_IDS[level])


def _level_keys(seed, epoch, clip_ids: jax.Array, level: str) -> tuple[jax.Array, jax.Array]:
    """Per clip of a batch: the key that picks windows and the key of the training noise."""
    keys = jax.vmap(lambda c: clip_key(seed, epoch, c, level))(clip_ids)
    pick_keys, noise_keys = jax.vmap(jax.random.split)(keys).transpose(1, 0)
    return pick_keys, noise_keys


def sample_positions(counts: dict[str, Any], clip_ids, valid, *, seed, epoch, train: bool,
                     max_len: int = 16, levels: Sequence[str] = LEVELS) -> dict[str, tuple[Any, Any]]:
    """Which windows a batch takes: level -> (window index within the clip (B, T), mask (B, T)).

    `counts`: level -> (B,) windows of each clip. Pure and jittable; masked positions hold 0.
    """
    clip_ids = jnp.asarray(clip_ids, jnp.int32)
    valid = jnp.asarray(valid, bool)
    lengths = level_lengths(max_len)
    positions = {}
    for level in levels:
        num_steps = lengths[level]
        level_counts = jnp.asarray(counts[level], jnp.int32)
        pick_keys, _ = _level_keys(seed, epoch, clip_ids, level)
        picks = jax.vmap(lambda k, n: pick_windows(k, n, num_steps, train))(pick_keys, level_counts)
        mask = (jnp.arange(num_steps)[None] < jnp.minimum(level_counts, num_steps)[:, None]) & valid[:, None]
        positions[level] = (jnp.where(mask, picks, 0), mask)
    return positions


def finish_batch(gathered: dict[str, Any], masks: dict[str, Any], labels, valid, clip_ids, *, seed, epoch,
                 train: bool, noise_std: float = 0.0005) -> dict[str, Any]:
    """Zero the padding, add the training noise, and pack the batch dict (see `sample_batch`)."""
    clip_ids = jnp.asarray(clip_ids, jnp.int32)
    valid = jnp.asarray(valid, bool)
    features = {}
    for level, windows in gathered.items():
        mask = jnp.asarray(masks[level], bool)
        windows = jnp.where(mask[..., None], jnp.asarray(windows).astype(jnp.float32), 0.0)
        if train:  # noise on the whole padded array, padding included (as-is)
            _, noise_keys = _level_keys(seed, epoch, clip_ids, level)
            shape = windows.shape[1:]
            noise = jax.vmap(lambda k: jax.random.normal(k, shape))(noise_keys)
            windows = windows + noise_std * noise
        features[level] = windows
    labels = jnp.where(valid, jnp.asarray(labels, jnp.int32), 0)
    return {"features": features, "masks": {lvl: jnp.asarray(m, bool) for lvl, m in masks.items()},
            "labels": labels, "valid": valid, "index": clip_ids}


def sample_batch(resident: ResidentFeatures, indices, valid, *, seed, epoch, train: bool,
                 max_len: int = 16, noise_std: float = 0.0005, levels: Sequence[str] = LEVELS,
                 clip_ids=None) -> dict[str, Any]:
    """A batch for clip `indices` (rows of `resident`): features, masks, labels, valid, index.

    Pure and jittable: features {level: (B, T_level, D) float32}, masks {level: (B, T_level) bool},
    labels (B,) int32 (0 where not valid), valid (B,), index (B,) = `clip_ids`. Random choices
    depend only on (seed, epoch, clip id, level). `clip_ids` (defaults to `indices`) are the clips'
    indices in the split, for when `indices` point into a subset held in `resident`.
    """
    indices = jnp.asarray(indices, jnp.int32)
    clip_ids = indices if clip_ids is None else jnp.asarray(clip_ids, jnp.int32)
    counts = {lvl: resident.counts[lvl][indices] for lvl in levels}
    positions = sample_positions(counts, clip_ids, valid, seed=seed, epoch=epoch, train=train,
                                 max_len=max_len, levels=levels)
    gathered, masks = {}, {}
    for level, (picks, mask) in positions.items():
        rows = resident.offsets[level][indices][:, None] + picks
        gathered[level] = jnp.asarray(resident.windows[level])[rows]
        masks[level] = mask
    return finish_batch(gathered, masks, jnp.asarray(resident.labels)[indices], valid, clip_ids, seed=seed,
                        epoch=epoch, train=train, noise_std=noise_std)
