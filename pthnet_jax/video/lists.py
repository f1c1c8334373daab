"""The annotation lists `pthnet extract --labels` writes beside the features (the original layout:
`<npy path relative to ROOT> <num_windows> <label>`, one line per clip, the level lists aligned)."""
from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from pthnet_jax.fsutil import atomic_write
from pthnet_jax.video.decode import VIDEO_EXTENSIONS

FEATURE_STEM = "th14_vit_g_16"


def variant_folder(stride: int, direction: str, face: bool = False) -> str:
    """`th14_vit_g_16_<s>[_face][_rv]`."""
    return f"{FEATURE_STEM}_{stride}" + ("_face" if face else "") + ("_rv" if direction == "reverse" else "")


def read_labels(path: Path, default_split: str) -> tuple[dict[str, tuple[str, str]], int]:
    """`<relative video path> <label> [split]` lines -> ({clip name: (label as written, split)}, the
    number of lines without a split column). The labels are checked by `record.resolve_labels`."""
    labels, defaulted = {}, 0
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such labels file")
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) not in (2, 3):
            raise ValueError(f"{path}:{number}: expected '<relative video path> <label> [train|test]', got {line!r}")
        split = parts[2] if len(parts) == 3 else default_split
        defaulted += len(parts) == 2
        if split not in ("train", "test"):
            raise ValueError(f"{path}:{number}: split must be train or test, got {split!r}")
        name = parts[0]
        stem, suffix = os.path.splitext(name)
        key = stem if suffix.lower() in VIDEO_EXTENSIONS else name
        if key in labels:
            raise ValueError(f"{path}:{number}: {name} is labelled twice")
        labels[key] = (parts[1], split)
    return labels, defaulted


def write_lists(out: Path, dataset: str, names: Sequence[str], label_map: dict[str, tuple[int, str]],
                options, fold: int | None) -> list[str]:
    """The annotation lists of every (stride, direction): one line per labelled clip whose files all
    exist, in the labels file's order, the level lists aligned line by line."""
    from pthnet_jax.data.benchmarks import get_benchmark

    try:
        bench = get_benchmark(dataset)
        list_name = lambda split: bench.list_file(split, fold if bench.list_style == "fold" else None)  # noqa: E731
        if bench.list_style == "fold" and fold is None:
            list_name = lambda split: bench.list_file(split, 1)  # noqa: E731
    except ValueError:  # a dataset of the user's own: plain {split}.txt lists
        list_name = lambda split: f"{split}.txt"  # noqa: E731
    lines: dict[Path, list[str]] = collections.defaultdict(list)
    feature_root = Path("get_features") / dataset
    available = set(names)
    for name, (label, split) in label_map.items():  # the labels file's order
        if name not in available:
            continue
        files = {(s, d): feature_root / variant_folder(s, d, options.face) / f"{name}.npy"
                 for s in options.strides for d in options.directions}
        if not all((out / f).exists() for f in files.values()):
            continue
        for (stride, direction), relative in files.items():
            count = np.load(out / relative, mmap_mode="r").shape[0]  # main thread only (np.load is not thread-safe)
            list_file = out / "annotation" / dataset / variant_folder(stride, direction, options.face) / list_name(split)
            lines[list_file].append(f"{relative.as_posix()} {count} {label}")
    for list_file, rows in lines.items():
        atomic_write(list_file, "\n".join(rows) + "\n")
    return sorted(str(p) for p in lines)
