"""Synthetic FERv39k-sized features in memory for the GPU report (`scripts/gpu_report.py`).

The report runs where only the packages it needs can be carried (no TFDS, no array_record): the
splits are built here in memory, as `pthnet_jax.data.FeatureSplit`s whose records come from numpy
arrays, and `memory_data` makes the project's `open_split` return them for the duration of a run, so
`train_and_evaluate` and `pthnet_jax.benchmarks.jax_run.run_jax` train on them unchanged.
`write_original_layout` writes the same clips as the original's `.npy` files and lists, for the
PyTorch baseline's data path. Window counts follow `pthnet_jax.data.synth`'s model of FERv39k clip
lengths (8-48 frames); each clip carries a learnable class signal in unit Gaussian noise.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np

LEVELS = ("L", "M", "H")
STRIDES = {"H": 4, "M": 8, "L": 16}
CLASSES = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")  # FERv39k's order
FERV39K_SIZES = (31088, 7847)
MEMORY_DATA_DIR = "memory:ferv39k-synthetic"  # the config's data_dir while `memory_data` is active


@dataclasses.dataclass
class SplitArrays:
    """One split: per level all windows of all clips stacked (list order), with offsets and counts."""

    name: str
    labels: np.ndarray  # (N,) int32
    counts: dict[str, np.ndarray]  # level -> (N,) int32
    offsets: dict[str, np.ndarray]  # level -> (N,) int64
    windows: dict[str, np.ndarray]  # level -> (sum of counts, D) float32

    @property
    def num_clips(self) -> int:
        return len(self.labels)

    def clip(self, index: int, level: str) -> np.ndarray:
        start = int(self.offsets[level][index])
        return self.windows[level][start:start + int(self.counts[level][index])]


def make_split(name: str, clips: int, feature_dim: int = 1408, seed: int = 0, signal: float = 1.0) -> SplitArrays:
    """`clips` FERv39k-like clips (numpy only: no JAX, so PyTorch processes can use it too)."""
    from pthnet_jax.data.synth import windows_for_frames

    rng = np.random.default_rng([seed, 0 if name == "train" else 1])
    frames = rng.integers(8, 49, clips)
    labels = rng.integers(0, len(CLASSES), clips).astype(np.int32)
    directions = np.random.default_rng([seed, 7]).standard_normal((len(CLASSES), feature_dim)).astype(np.float32)
    directions *= math.sqrt(feature_dim) / 8.0 / np.linalg.norm(directions, axis=1, keepdims=True)  # as synth's
    counts, offsets, windows = {}, {}, {}
    for level in LEVELS:
        counts[level] = windows_for_frames(frames, STRIDES[level]).astype(np.int32)
        offsets[level] = np.concatenate([[0], np.cumsum(counts[level])[:-1]]).astype(np.int64)
        rows = rng.standard_normal((int(counts[level].sum()), feature_dim), dtype=np.float32)
        owner = np.repeat(np.arange(clips), counts[level])
        strength = signal * rng.uniform(0.3, 1.0, clips).astype(np.float32)
        rows += strength[owner, None] * directions[labels[owner]]
        windows[level] = rows
    return SplitArrays(name, labels, counts, offsets, windows)


class _MemoryRecords:
    """Random-access records in the layout `open_split`'s source yields (one dict per clip)."""

    def __init__(self, arrays: SplitArrays):
        self.arrays = arrays

    def __len__(self) -> int:
        return self.arrays.num_clips

    def __getitem__(self, index: int) -> dict[str, Any]:
        a = self.arrays
        record = {"clip_id": f"{a.name}/clip_{index:06d}", "label": int(a.labels[index]), "list_index": index}
        for level in LEVELS:
            record[f"features_{level}"] = a.clip(index, level)
            record[f"num_windows_{level}"] = int(a.counts[level][index])
        return record

    def __getitems__(self, indices) -> list[dict[str, Any]]:
        return [self[int(i)] for i in indices]


def feature_split(arrays: SplitArrays):
    """A `pthnet_jax.data.FeatureSplit` over in-memory arrays."""
    from pthnet_jax.data import FeatureSplit

    info = {"benchmark": "FERv39k", "variant": "synthetic-in-memory", "class_names": list(CLASSES),
            "feature_dim": arrays.windows["H"].shape[1]}
    return FeatureSplit(arrays.name, Path(MEMORY_DATA_DIR), list(CLASSES), info["feature_dim"],
                        np.array([f"{arrays.name}/clip_{i:06d}" for i in range(arrays.num_clips)]),
                        arrays.labels, dict(arrays.counts), info, _MemoryRecords(arrays))


@contextlib.contextmanager
def memory_data(splits: dict[str, Any]) -> Iterator[str]:
    """While active, the project's `open_split(MEMORY_DATA_DIR, name)` returns `splits[name]`.

    Every loaded `pthnet_jax` module that holds the original function (imported by name) is patched,
    so the trainer finds the splits wherever it imports `open_split` from. Yields the data_dir to use.
    """
    import sys

    import pthnet_jax.data
    import pthnet_jax.train  # noqa: F401 - loads the modules that import open_split by name

    original = pthnet_jax.data.open_split

    def open_split(data_dir, split):
        if str(data_dir) == MEMORY_DATA_DIR:
            if split not in splits:
                raise KeyError(f"{MEMORY_DATA_DIR}: no split {split!r}; available: {sorted(splits)}")
            return splits[split]
        return original(data_dir, split)

    patched = [m for name, m in list(sys.modules.items())
               if name.startswith("pthnet_jax") and getattr(m, "open_split", None) is original]
    for module in patched:
        module.open_split = open_split
    try:
        yield MEMORY_DATA_DIR
    finally:
        for module in patched:
            module.open_split = original


def write_original_layout(root: Path, splits: dict[str, SplitArrays]) -> Path:
    """The clips as the original's `.npy` files (one per clip and level) and `<split>_All.txt` lists
    (`<npy path> <num_windows> <label>`) under ROOT/annotation/FERv39k/<level folder>/; returns the
    list directory (what `torch_baseline.run_baseline` takes as `list_dir`)."""
    from pthnet_jax.benchmarks.torch_baseline import LEVEL_FOLDERS

    list_dir = root / "annotation" / "FERv39k"
    for level, folder in LEVEL_FOLDERS.items():
        (list_dir / folder).mkdir(parents=True, exist_ok=True)
        for split_name, arrays in splits.items():
            features = root / "get_features" / "FERv39k" / folder / split_name
            features.mkdir(parents=True, exist_ok=True)
            lines = []
            for i in range(arrays.num_clips):
                relative = f"get_features/FERv39k/{folder}/{split_name}/clip_{i:06d}.npy"
                np.save(root / relative, arrays.clip(i, level))
                lines.append(f"{relative} {int(arrays.counts[level][i])} {int(arrays.labels[i])}")
            (list_dir / folder / f"{split_name}_All.txt").write_text("\n".join(lines) + "\n")
    return list_dir
