"""Which 16-frame windows a clip gives, and how a window's frames become the backbone's input.

Window schedules (videomae-reference §3.2):
- `cover_end` (default; every FERv39k, CASME2, CREMA-D, MAFW, MELD, RAVDESS, eNTERFACE05 list and
  DFEW's `_rv`/`_face_rv`/`_face_new`): starts 0, s, 2s, ... while start <= N - 16, plus one more
  window when s does not divide N - 16. `end="aligned"` (default) starts that window at N - 16;
  `end="clamp"` starts it at the next multiple of s and repeats the last frame past the end.
  Clips shorter than 16 frames give one window (`short="clamp"`: indices past the end repeat the last
  frame) or none (`short="skip"`).
- `public`: the public extraction script's `range(0, N - 15, s)`: no end window, nothing for N < 16
  (DFEW forward lists, plain and `_face`).

A window is identified by its start frame in its direction's frame order; its frame indices are
`min(start + i, N - 1)` for i in 0..15, so equal starts are equal windows and a clip's distinct
windows over several strides are the union of the starts (with `end="aligned"` every stride-8 and
stride-16 window is also a stride-4 window).

Per window (§3.4): float32 / 255, each frame resized straight to 224 x 224, bilinear with half-pixel
centres and no antialiasing (PyTorch `F.interpolate(mode="bilinear", align_corners=False,
antialias=False)`), no mean/std normalisation. `resize_frames` does it in jax.numpy on the device.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

WINDOW = 16  # frames per window
SIZE = 224  # the backbone's frame size
SCHEDULES = ("cover_end", "public")
END_CHOICES = ("aligned", "clamp")
SHORT_CHOICES = ("clamp", "skip")
DIRECTIONS = ("forward", "reverse")
DEFAULT_STRIDES = (4, 8, 16)


def window_starts(num_frames: int, stride: int, schedule: str = "cover_end", end: str = "aligned",
                  short: str = "clamp") -> list[int]:
    """Start frames of a clip's windows at one stride, in order."""
    if num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {num_frames}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown window schedule {schedule!r}; choose one of {SCHEDULES}")
    if end not in END_CHOICES or short not in SHORT_CHOICES:
        raise ValueError(f"end must be one of {END_CHOICES} and short one of {SHORT_CHOICES}, got {end!r}, {short!r}")
    if schedule == "public":
        return list(range(0, num_frames - WINDOW + 1, stride))
    if num_frames <= WINDOW:
        return [0] if num_frames == WINDOW or short == "clamp" else []
    starts = list(range(0, num_frames - WINDOW + 1, stride))
    if (num_frames - WINDOW) % stride:
        starts.append(num_frames - WINDOW if end == "aligned" else starts[-1] + stride)
    return starts


def num_windows(num_frames: int, stride: int, **schedule) -> int:
    return len(window_starts(num_frames, stride, **schedule))


def window_frames(num_frames: int, start: int) -> np.ndarray:
    """(16,) frame indices of the window starting at `start` (past the end: the last frame)."""
    return np.minimum(np.arange(start, start + WINDOW), num_frames - 1)


@dataclasses.dataclass(frozen=True)
class ClipPlan:
    """A clip's windows: the distinct ones per direction, and each (stride, direction)'s rows of them.

    `starts[direction]`: sorted distinct start frames (in that direction's frame order).
    `rows[(stride, direction)]`: for each window of that variant, its row in `starts[direction]`.
    """

    num_frames: int
    starts: dict[str, np.ndarray]
    rows: dict[tuple[int, str], np.ndarray]

    @property
    def num_distinct(self) -> int:
        return int(sum(len(s) for s in self.starts.values()))

    @property
    def num_listed(self) -> int:
        return int(sum(len(r) for r in self.rows.values()))

    def frame_indices(self, direction: str) -> np.ndarray:
        """(distinct windows, 16) indices into the ORIGINAL (forward) frame order."""
        indices = np.stack([window_frames(self.num_frames, int(s)) for s in self.starts[direction]]) \
            if len(self.starts[direction]) else np.zeros((0, WINDOW), np.int64)
        if direction == "reverse":
            indices = self.num_frames - 1 - indices
        return indices.astype(np.int32)


def plan_clip(num_frames: int, strides: Sequence[int] = DEFAULT_STRIDES,
              directions: Sequence[str] = DIRECTIONS, **schedule) -> ClipPlan:
    """The distinct windows of a clip over all strides and directions (each computed once)."""
    for direction in directions:
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; choose from {DIRECTIONS}")
    per_stride = {s: np.asarray(window_starts(num_frames, s, **schedule), np.int64) for s in strides}
    distinct = np.unique(np.concatenate(list(per_stride.values()))) if per_stride else np.zeros(0, np.int64)
    starts = {d: distinct for d in directions}  # the reversed clip has the same N, so the same starts
    rows = {(s, d): np.searchsorted(distinct, per_stride[s]) for s in strides for d in directions}
    return ClipPlan(num_frames, starts, rows)


def resize_coordinates(in_size: int, out_size: int = SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output pixel: the two source neighbours and the weight of the second, as PyTorch computes
    them for align_corners=False: src = max(scale * (dst + 0.5) - 0.5, 0) with scale = in / out in
    float32 and the multiply-add rounded once (PyTorch's compiled kernel fuses it; a plain float32
    multiply then subtract differs by one ulp at some pixels, up to 1.5e-5 in a weight)."""
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    src = (scale * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    low = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
    high = np.minimum(low + 1, in_size - 1).astype(np.int32)
    weight_high = (src - low.astype(np.float32)).astype(np.float32)
    return low, high, weight_high


def resize_frames(frames: jax.Array, coordinates_h=None, coordinates_w=None, size: int = SIZE) -> jax.Array:
    """(..., H, W, 3) uint8 or float -> (..., size, size, 3) float32 in [0, 1]; jittable.

    Scales by 1/255 (integer input), then bilinear, half-pixel centres, no antialiasing, straight to
    size x size. `coordinates_h`/`coordinates_w` (from `resize_coordinates` of the TRUE height and
    width; may be traced arrays) let `frames` be padded at the bottom/right to a bucket shape, so one
    compiled program serves many frame sizes: padded pixels are never read.
    """
    frames = jnp.asarray(frames)
    scaled = frames.astype(jnp.float32) / 255.0 if jnp.issubdtype(frames.dtype, jnp.integer) \
        else frames.astype(jnp.float32)
    if coordinates_h is None:
        coordinates_h = resize_coordinates(frames.shape[-3], size)
    if coordinates_w is None:
        coordinates_w = resize_coordinates(frames.shape[-2], size)
    # Along W, then along H: the same products and sums as PyTorch's bilinear kernel
    # (h0 * (w0 * a + w1 * b) + h1 * (w0 * c + w1 * d)).
    low, high, weight = coordinates_w
    weight = jnp.asarray(weight)[:, None]
    scaled = jnp.take(scaled, low, axis=-2) * (1.0 - weight) + jnp.take(scaled, high, axis=-2) * weight
    low, high, weight = coordinates_h
    weight = jnp.asarray(weight)[:, None, None]
    return jnp.take(scaled, low, axis=-3) * (1.0 - weight) + jnp.take(scaled, high, axis=-3) * weight


def bucket(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)
