"""Read and validate the original's data lists: `<npy path> <num_windows> <label>` per line."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable

import numpy as np

from pthnet_jax.data.benchmarks import LEVEL_FOLDERS
from pthnet_jax.pyramid import LEVELS


class DataListError(ValueError):
    """A data list or feature file that breaks the format; the message names file and line."""


@dataclasses.dataclass(frozen=True)
class ListEntry:
    path: str  # as written in the list (relative to ROOT); the H level's path is the clip id
    num_windows: int
    label: int


@dataclasses.dataclass(frozen=True)
class Clip:
    list_index: int  # line number - 1
    clip_id: str
    label: int
    paths: dict  # level -> path as listed
    num_windows: dict  # level -> count as listed


def read_list(path: Path) -> list[ListEntry]:
    if not path.is_file():
        raise DataListError(f"{path}: data list not found")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3:
            raise DataListError(f"{path}:{number}: expected '<npy path> <num_windows> <label>', got {line!r}")
        try:
            entries.append(ListEntry(parts[0], int(parts[1]), int(parts[2])))
        except ValueError as err:
            raise DataListError(f"{path}:{number}: window count and label must be integers, got {line!r}") from err
    return entries


def align_lists(list_files: dict[str, Path], num_classes: int,
                on_error: Callable[[DataListError], None] | None = None) -> list[Clip]:
    """The three levels' lists of one split, checked line by line (same clip, same label).

    A bad line raises `DataListError`, or with `on_error` is reported to it and left out.
    """
    entries = {level: read_list(path) for level, path in list_files.items()}
    lengths = {level: len(rows) for level, rows in entries.items()}
    if len(set(lengths.values())) != 1:
        raise DataListError("the level lists of one split must have the same number of lines: " +
                            ", ".join(f"{list_files[lvl]} has {n}" for lvl, n in lengths.items()))
    clips = []
    for index in range(lengths["H"]):
        try:
            clips.append(_aligned_clip(index, entries, list_files, num_classes))
        except DataListError as err:
            if on_error is None:
                raise
            on_error(err)
    return clips


def _aligned_clip(index: int, entries: dict[str, list[ListEntry]], list_files: dict[str, Path],
                  num_classes: int) -> Clip:
    rows = {level: entries[level][index] for level in LEVELS}
    stems = {level: _clip_stem(row.path, level) for level, row in rows.items()}
    line = index + 1
    if len(set(stems.values())) != 1:
        raise DataListError(f"line {line}: the level lists disagree on the clip: " +
                            "; ".join(f"{list_files[lvl]}:{line} is {rows[lvl].path}" for lvl in LEVELS))
    labels = {level: row.label for level, row in rows.items()}
    if len(set(labels.values())) != 1:
        raise DataListError(f"line {line}: the level lists disagree on the label: " +
                            "; ".join(f"{list_files[lvl]}:{line} has {labels[lvl]}" for lvl in LEVELS))
    label = labels["H"]
    if not 0 <= label < num_classes:
        raise DataListError(f"{list_files['H']}:{line}: label {label} is outside 0..{num_classes - 1}")
    for level, row in rows.items():
        if row.num_windows < 1:
            raise DataListError(f"{list_files[level]}:{line}: window count must be >= 1, got {row.num_windows}")
    return Clip(index, rows["H"].path, label, {lvl: rows[lvl].path for lvl in LEVELS},
                {lvl: rows[lvl].num_windows for lvl in LEVELS})


def _clip_stem(path: str, level: str) -> str:
    """The path with the level's folder name removed, to compare the same clip across levels."""
    parts = path.split("/")
    return "/".join(p for p in parts if not p.startswith(LEVEL_FOLDERS[level]))


# ---- .npy files without ast ------------------------------------------------------------------------
# `np.load` parses the header with `ast.literal_eval`, and CPython 3.11's AST construction is not
# thread-safe (python/cpython#106905: "SystemError: AST constructor recursion depth mismatch" when
# threads parse at once). The importer reads files from a thread pool, so it parses headers here:
# the header is a fixed-form dict literal written by `numpy.lib.format`, matched strictly.

_NPY_MAGIC = b"\x93NUMPY"
_HEADER = re.compile(
    r"\{\s*(?:(?:'descr'\s*:\s*'(?P<descr>[<>|=]?[a-zA-Z]\d*)'|'fortran_order'\s*:\s*(?P<fortran>True|False)"
    r"|'shape'\s*:\s*\((?P<shape>\s*(?:\d+\s*,\s*)*(?:\d+\s*)?)\))\s*,?\s*){3}\}\s*$")


class NpyFormatError(ValueError):
    """A file that is not a plain numeric `.npy` array."""


def parse_npy_header(header: str) -> tuple[np.dtype, bool, tuple[int, ...]]:
    """(dtype, fortran_order, shape) of a `.npy` header dict, or NpyFormatError."""
    match = _HEADER.match(header)
    if not match or None in (match["descr"], match["fortran"], match["shape"]):
        raise NpyFormatError(f"unexpected .npy header {header.strip()[:200]!r}")
    for key in ("descr", "fortran_order", "shape"):
        if header.count(f"'{key}'") != 1:
            raise NpyFormatError(f"unexpected .npy header {header.strip()[:200]!r}")
    try:
        dtype = np.dtype(match["descr"])
    except TypeError as err:
        raise NpyFormatError(f"unknown dtype {match['descr']!r} in the .npy header") from err
    shape = tuple(int(x) for x in match["shape"].replace(",", " ").split())
    return dtype, match["fortran"] == "True", shape


def read_npy(path: str | Path) -> np.ndarray:
    """A numeric `.npy` array, read without `ast` (safe from many threads) and without pickle."""
    with open(path, "rb") as f:
        prefix = f.read(len(_NPY_MAGIC) + 2)
        if len(prefix) < len(_NPY_MAGIC) + 2 or not prefix.startswith(_NPY_MAGIC):
            raise NpyFormatError("not a .npy file (bad magic string)")
        major = prefix[-2]
        if major not in (1, 2, 3):
            raise NpyFormatError(f"unsupported .npy format version {major}.{prefix[-1]}")
        length_bytes = 2 if major == 1 else 4
        raw_length = f.read(length_bytes)
        if len(raw_length) != length_bytes:
            raise NpyFormatError("truncated .npy header")
        header_length = int.from_bytes(raw_length, "little")
        raw_header = f.read(header_length)
        if len(raw_header) != header_length:
            raise NpyFormatError("truncated .npy header")
        header = raw_header.decode("latin1" if major < 3 else "utf8")
        dtype, fortran, shape = parse_npy_header(header)
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
            raise NpyFormatError(f"dtype {dtype} is not a plain numeric dtype")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        buffer = np.empty(count * dtype.itemsize, np.uint8)
        found = f.readinto(buffer)
        extra = f.read(1)
    if found != buffer.size or extra:
        raise NpyFormatError(f"expected {buffer.size} data bytes for shape {shape} {dtype}, found "
                             f"{found}{' and more' if extra else ''} (truncated or damaged file)")
    array = buffer.view(dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def load_features(root: Path, clip: Clip, level: str, list_file: Path, feature_dim: int | None) -> np.ndarray:
    """One clip's windows of one level, validated: (num_windows, D) finite float32."""
    path = root / clip.paths[level]
    where = f"{list_file}:{clip.list_index + 1}"
    if not path.is_file():
        raise DataListError(f"{where}: feature file {path} does not exist")
    try:
        array = read_npy(path)
    except (ValueError, OSError) as err:
        raise DataListError(f"{where}: {path} is not a readable .npy file ({err})") from err
    expected_dim = feature_dim if feature_dim is not None else "D"
    if array.ndim != 2 or (feature_dim is not None and array.shape[1] != feature_dim):
        raise DataListError(f"{where}: {path} has shape {array.shape}, expected "
                            f"({clip.num_windows[level]}, {expected_dim})")
    if array.shape[0] != clip.num_windows[level]:
        raise DataListError(f"{where}: {path} has {array.shape[0]} windows but the list says "
                            f"{clip.num_windows[level]}")
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise DataListError(f"{where}: {path} has dtype {array.dtype}, expected a float32-compatible dtype")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise DataListError(f"{where}: {path} contains NaN or Inf")
    return array
