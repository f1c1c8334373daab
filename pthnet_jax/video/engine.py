"""Windows of many clips through a backbone, in fixed-size batches on every local device.

Each local device holds a ring of resized frames (`pool`: (P, 224, 224, 3)). A chunk of a clip (its
uint8 frames, bottom/right-padded to a bucket shape so one compiled program serves many frame sizes)
is written into a device's ring by a jitted step that scales and resizes on the device; its windows
are then just 16 slot numbers each. The feature step gathers every device's B windows from its ring
and runs the backbone, all devices in one `shard_map` call. A frame is resized once however many
windows (strides, directions) use it; the reversed windows index the same frames backwards.

The host never waits for the device unless it has `max_in_flight` feature steps outstanding.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pthnet_jax.video.windows import SIZE, WINDOW, bucket, resize_coordinates, resize_frames

_AXIS = "devices"


@dataclasses.dataclass
class Backbone:
    """A feature extractor: `apply(params, frames)` maps (B, 16, 224, 224, 3) float32 in [0, 1]
    to (B, dim) features; pure and jittable."""

    apply: Callable[[Any, jax.Array], jax.Array]
    params: Any
    dim: int
    name: str = "backbone"
    input_dtype: Any = jnp.float32  # dtype the resized frames are kept in on the device
    compute_dtype: str = "float32"  # the backbone's compute dtype (recorded with the features it makes)


@dataclasses.dataclass
class _Region:
    start: int
    end: int
    pending: int  # windows reading this region that are not yet in a dispatched step


def default_pool_frames() -> int:
    return 192 if jax.devices()[0].platform == "cpu" else 4096


def default_batch_per_device() -> int:
    return 2 if jax.devices()[0].platform == "cpu" else 32  # CPU: small batches stay in cache (measured faster per window)


class WindowEngine:
    """Feed `add_chunk`, then `flush`; `take_results` returns `(key, feature row)` pairs as they finish."""

    def __init__(self, backbone: Backbone, batch_per_device: int | None = None, pool_frames: int | None = None,
                 devices: Sequence[jax.Device] | None = None, frame_multiple: int = 16, pixel_multiple: int = 32,
                 max_in_flight: int = 2):
        self.backbone = backbone
        self.devices = list(devices or jax.local_devices())
        self.batch = int(batch_per_device or default_batch_per_device())
        self.pool_frames = bucket(int(pool_frames or default_pool_frames()), frame_multiple)
        self.frame_multiple, self.pixel_multiple = frame_multiple, pixel_multiple
        if self.pool_frames < 2 * WINDOW:
            raise ValueError(f"the frame pool needs at least {2 * WINDOW} frames, got {self.pool_frames}")
        # Chunks stay well under the ring so a new one always fits beside the windows still pending.
        self.chunk_frames = max(WINDOW, (self.pool_frames // 3) // frame_multiple * frame_multiple)
        self.max_in_flight = max_in_flight
        self.mesh = Mesh(np.array(self.devices), (_AXIS,))
        self._sharded = NamedSharding(self.mesh, PartitionSpec(_AXIS))
        self.params = jax.device_put(backbone.params, NamedSharding(self.mesh, PartitionSpec()))
        shape = (1, self.pool_frames, SIZE, SIZE, 3)
        self._pools = [jnp.zeros(shape, backbone.input_dtype, device=d) for d in self.devices]
        self._head = [0] * len(self.devices)
        self._regions: list[collections.deque[_Region]] = [collections.deque() for _ in self.devices]
        self._pending: list[collections.deque] = [collections.deque() for _ in self.devices]
        self._in_flight: collections.deque = collections.deque()
        self._results: list[tuple[Hashable, np.ndarray]] = []
        self._write = _write_fn(jnp.dtype(backbone.input_dtype))
        self._step = _step_fn(backbone.apply, tuple(self.devices))
        self.windows_computed = 0  # real windows (padding excluded)
        self.steps_dispatched = 0

    # -- host side ------------------------------------------------------------------------------
    def add_chunk(self, frames: np.ndarray, windows: np.ndarray, keys: Sequence[Hashable]) -> None:
        """frames (F, H, W, 3) uint8 with F <= chunk_frames; windows (k, 16) indices into `frames`."""
        frames = np.asarray(frames)
        windows = np.asarray(windows, np.int32)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (F, H, W, 3), got {frames.shape}")
        if len(frames) > self.chunk_frames:
            raise ValueError(f"a chunk holds at most {self.chunk_frames} frames, got {len(frames)}")
        if windows.shape != (len(keys), WINDOW) or windows.min() < 0 or windows.max() >= len(frames):
            raise ValueError("windows must be (len(keys), 16) indices into the chunk's frames")
        device = min(range(len(self.devices)), key=lambda d: len(self._pending[d]))
        count, height, width = frames.shape[:3]
        slots = bucket(count, self.frame_multiple)
        start = self._allocate(device, slots)
        padded = np.zeros((slots, bucket(height, self.pixel_multiple), bucket(width, self.pixel_multiple), 3),
                          frames.dtype)
        padded[:count, :height, :width] = frames
        coords = (*resize_coordinates(height), *resize_coordinates(width))
        target = self.devices[device]
        self._pools[device] = self._write(self._pools[device], jax.device_put(padded, target),
                                          *(jax.device_put(c, target) for c in coords), np.int32(start))
        region = _Region(start, start + slots, len(keys))
        self._regions[device].append(region)
        self._pending[device].extend((window + start, key, region) for window, key in zip(windows, keys))
        while all(len(p) >= self.batch for p in self._pending):
            self._dispatch()

    def flush(self) -> None:
        """Run every pending window (the last batches padded) and wait for all results."""
        while any(self._pending):
            self._dispatch()
        while self._in_flight:
            self._collect()

    def take_results(self) -> list[tuple[Hashable, np.ndarray]]:
        results, self._results = self._results, []
        return results

    def _allocate(self, device: int, slots: int) -> int:
        if slots > self.pool_frames:
            raise ValueError(f"{slots} frames do not fit the frame pool of {self.pool_frames}")
        start = self._head[device] if self._head[device] + slots <= self.pool_frames else 0
        regions = self._regions[device]
        while True:
            while regions and regions[0].pending == 0:
                regions.popleft()
            if not any(r.pending and r.start < start + slots and start < r.end for r in regions):
                break
            self._dispatch()  # frees the oldest pending windows (FIFO), padding a partial batch
        self._head[device] = start + slots
        return start

    def _dispatch(self) -> None:
        indices = np.zeros((len(self.devices), self.batch, WINDOW), np.int32)
        keys = []
        for device, pending in enumerate(self._pending):
            device_keys = []
            for row in range(min(self.batch, len(pending))):
                window, key, region = pending.popleft()
                indices[device, row] = window
                region.pending -= 1
                device_keys.append(key)
            keys.append(device_keys)
        pool = jax.make_array_from_single_device_arrays(
            (len(self.devices), self.pool_frames, SIZE, SIZE, 3), self._sharded, self._pools)
        features = self._step(self.params, pool, jax.device_put(indices, self._sharded))
        self._in_flight.append((features, keys))
        self.windows_computed += sum(len(k) for k in keys)
        self.steps_dispatched += 1
        while len(self._in_flight) > self.max_in_flight:
            self._collect()

    def _collect(self) -> None:
        features, keys = self._in_flight.popleft()
        features = np.asarray(features)  # (devices, B, D)
        for device, device_keys in enumerate(keys):
            for row, key in enumerate(device_keys):
                self._results.append((key, features[device, row]))

    # -- cost model, for benchmarks -------------------------------------------------------------
    def step_cost(self) -> dict[str, float]:
        """XLA's cost analysis of one feature step (all devices' batches): flops, bytes accessed."""
        pool = jax.ShapeDtypeStruct((len(self.devices), self.pool_frames, SIZE, SIZE, 3), self.backbone.input_dtype,
                                    sharding=self._sharded)
        indices = jax.ShapeDtypeStruct((len(self.devices), self.batch, WINDOW), jnp.int32, sharding=self._sharded)
        compiled = self._step.lower(self.params, pool, indices).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return {"flops": float(cost.get("flops", 0.0)), "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


@functools.lru_cache(maxsize=None)
def _write_fn(dtype):
    return jax.jit(functools.partial(_write_frames, dtype=dtype), donate_argnums=0)


@functools.lru_cache(maxsize=16)
def _step_fn(apply, devices: tuple):
    """One jitted feature step per (backbone function, devices): engines built again reuse its compilations."""
    mesh = Mesh(np.array(devices), (_AXIS,))
    return jax.jit(jax.shard_map(functools.partial(_features, apply=apply), mesh=mesh,
                                 in_specs=(PartitionSpec(), PartitionSpec(_AXIS), PartitionSpec(_AXIS)),
                                 out_specs=PartitionSpec(_AXIS)))


def _write_frames(pool, frames, low_h, high_h, weight_h, low_w, high_w, weight_w, start, *, dtype):
    """Scale + resize a chunk's frames on the device and store them at `start` in the ring."""
    resized = resize_frames(frames, (low_h, high_h, weight_h), (low_w, high_w, weight_w)).astype(dtype)
    return jax.lax.dynamic_update_slice(pool, resized[None], (0, start, 0, 0, 0))


def _features(params, pool, indices, *, apply):
    """Per device: pool (1, P, 224, 224, 3), indices (1, B, 16) -> (1, B, D) float32."""
    windows = pool[0][indices[0]]  # (B, 16, 224, 224, 3)
    return apply(params, windows).astype(jnp.float32)[None]


def chunk_windows(frame_indices: np.ndarray, chunk_frames: int) -> list[tuple[int, int, np.ndarray]]:
    """Group windows (rows of (n, 16) frame indices) into chunks spanning at most `chunk_frames` frames.

    Returns (first frame, end frame, rows) per chunk; windows are taken in order of their first frame.
    """
    if len(frame_indices) == 0:
        return []
    low, high = frame_indices.min(axis=1), frame_indices.max(axis=1)
    order = np.argsort(low, kind="stable")
    chunks, rows = [], []
    first = last = None
    for row in order:
        new_first = low[row] if first is None else min(first, low[row])
        new_last = high[row] if last is None else max(last, high[row])
        if rows and new_last - new_first + 1 > chunk_frames:
            chunks.append((int(first), int(last) + 1, np.asarray(rows)))
            rows, new_first, new_last = [], low[row], high[row]
        rows.append(row)
        first, last = new_first, new_last
    chunks.append((int(first), int(last) + 1, np.asarray(rows)))
    return chunks
