"""`pthnet synth`: synthetic features in the original layout (data lists + one .npy per clip and level).

Window counts, labels and clip paths are drawn from the real data lists of the chosen benchmark when
an annotation directory is given (`--annotation-dir`, laid out as the original's `annotation/`:
realistic lengths, class balance and file names); otherwise from a built-in model of clip lengths
(the window-count rule of the released FERv39k lists applied to random frame counts) with numbered
clip names. Each clip carries a learnable class signal: a class direction in
feature space whose strength varies over the windows, buried in unit Gaussian noise (features of the
real extractor are LayerNorm outputs). The reversed variant (`_rv`) holds the same windows in reverse
order. Lists go to ROOT/annotation/NAME[/single]/<level folder>/<list>, features to
ROOT/get_features/..., so the original's loader run from ROOT finds everything.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from pthnet_jax.data.benchmarks import LEVEL_FOLDERS, Benchmark, get_benchmark, level_folder
from pthnet_jax.data.lists import LEVELS, read_list
from pthnet_jax.fsutil import atomic_path, atomic_write

STRIDES = {"H": 4, "M": 8, "L": 16}
# Frame counts of the built-in fallback, per benchmark: (min, max) frames of a clip.
_FRAME_RANGES = {"FERv39k": (8, 48), "DFEW": (16, 800), "MAFW": (16, 700), "CREMA-D": (30, 450),
                 "eNTERFACE05": (30, 160), "RAVDESS": (60, 150), "MELD": (16, 900), "CASME2": (16, 150)}
# FERv39k's real sizes (train, test); others default to a fold's sizes from the lists or 2000/500.
_DEFAULT_SIZES = {"FERv39k": (31088, 7847)}


def windows_for_frames(frames: np.ndarray, stride: int) -> np.ndarray:
    """Window count of a clip of N frames, as observed in the FERv39k lists: 1 + ceil((N - 16) / stride)."""
    return np.ceil(np.maximum(frames - 16, 0) / stride).astype(np.int64) + 1


def real_rows(benchmark: str, split: str, annotation: Path | None
              ) -> tuple[np.ndarray, dict[str, list[str]]] | None:
    """From the real lists (first fold, forward, no face): (n, 4) int array of (count_L, count_M,
    count_H, label) and the listed paths per level; None without lists."""
    if annotation is None:
        return None
    bench = get_benchmark(benchmark)
    base = annotation / bench.name / ("single" if bench.label_sets else "")
    name = bench.list_file(split, 1 if bench.list_style == "fold" else None)
    try:
        per_level = {lvl: read_list(base / LEVEL_FOLDERS[lvl] / name) for lvl in LEVELS}
    except ValueError:
        return None
    if len({len(rows) for rows in per_level.values()}) != 1:
        return None
    rows = np.array([[per_level["L"][i].num_windows, per_level["M"][i].num_windows,
                      per_level["H"][i].num_windows, per_level["H"][i].label]
                     for i in range(len(per_level["H"]))], np.int64)
    return rows, {lvl: [entry.path for entry in entries] for lvl, entries in per_level.items()}


def _variant_path(path: str, level: str, face: bool, reverse: bool) -> str:
    """A listed path with its level folder renamed to the variant's (`th14_vit_g_16_4` -> `..._face_rv`)."""
    target = level_folder(level, face, reverse)
    return "/".join(target if part == LEVEL_FOLDERS[level] else part for part in path.split("/"))


def synthesize(out: str | os.PathLike, like: str = "FERv39k", clips: int | None = None,
               test_clips: int | None = None, feature_dim: int = 1408, seed: int = 0,
               signal: float = 1.0, reverse: bool = True, quiet: bool = False, face: bool = False,
               annotation_dir: str | os.PathLike | None = None) -> Path:
    """Write a synthetic benchmark under `out` (forward and, with `reverse`, `_rv` features); returns `out`.

    `clips`/`test_clips` default to the real sizes; without `test_clips` the real ratio is kept.
    Benchmarks with folds get fold 1 (`set_1_*`), MAFW its `single` label set. `annotation_dir`: the
    original's `annotation/` folder (one sub-folder per benchmark) to imitate; None: built-in model.
    """
    bench = get_benchmark(like)
    out = Path(out).absolute()
    rng = np.random.default_rng(seed)
    annotation = None if annotation_dir is None else Path(annotation_dir)
    if annotation is not None and not (annotation / bench.name).is_dir():
        raise ValueError(f"{annotation}: no {bench.name}/ folder of data lists (expected the original's "
                         "annotation/ layout)")
    directions = rng.standard_normal((bench.num_classes, feature_dim)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True) / math.sqrt(feature_dim) * 8.0
    started, written = time.perf_counter(), 0
    real = {split: real_rows(bench.name, split, annotation) for split in ("train", "test")}
    real_sizes = (_DEFAULT_SIZES.get(bench.name) or
                  ((len(real["train"][0]), len(real["test"][0])) if real["train"] and real["test"] else (4, 1)))
    for split in ("train", "test"):
        wanted = clips if split == "train" else test_clips
        if wanted is None:
            if clips is not None:  # keep the real train/test ratio
                wanted = max(1, round(clips * real_sizes[1] / real_sizes[0]))
            elif real[split] is not None:
                wanted = len(real[split][0])
            else:
                wanted = real_sizes[0 if split == "train" else 1] if bench.name in _DEFAULT_SIZES else \
                    (2000 if split == "train" else 500)
        paths = None
        if real[split] is not None:
            rows, real_paths = real[split]
            if wanted <= len(rows):  # real clips (and file names), list order kept
                picked = np.sort(rng.choice(len(rows), wanted, replace=False))
                paths = {lvl: [real_paths[lvl][i] for i in picked] for lvl in LEVELS}
            else:
                picked = rng.integers(0, len(rows), wanted)
            counts, labels = rows[picked, :3], rows[picked, 3]
        else:
            low, high = _FRAME_RANGES[bench.name]
            frames = rng.integers(low, high + 1, wanted)
            counts = np.stack([windows_for_frames(frames, STRIDES[lvl]) for lvl in LEVELS], 1)
            labels = rng.integers(0, bench.num_classes, wanted)
        if paths is None:
            paths = {lvl: [f"get_features/{bench.name}/{LEVEL_FOLDERS[lvl]}/{split}/clip_{i:06d}.npy"
                           for i in range(wanted)] for lvl in LEVELS}
        written += _write_split(out, bench, split, counts, labels, paths, directions, signal, face,
                                reverse, np.random.default_rng([seed, 1 if split == "train" else 2]))
    if not quiet:
        print(f"synthesized {bench.name}-like data ({written} .npy files, feature size {feature_dim}) in "
              f"{time.perf_counter() - started:.1f}s -> {out} (lists: {out / 'annotation' / bench.name}; "
              f"window counts from {'the real lists in ' + str(annotation) if annotation else 'the built-in model'})")
    return out


class _NpyWriter:
    """Writes float32 .npy files with a cached header: ~10x faster than np.save for small arrays."""

    def __init__(self):
        self._headers: dict[tuple[int, ...], bytes] = {}

    def __call__(self, path: Path, array: np.ndarray) -> None:
        header = self._headers.get(array.shape)
        if header is None:
            buffer = io.BytesIO()
            np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False,
                                                          "shape": array.shape})
            header = self._headers[array.shape] = buffer.getvalue()
        with atomic_path(path) as tmp, open(tmp, "wb") as file:
            file.write(header)
            file.write(np.ascontiguousarray(array, "<f4").data)


def _write_split(out: Path, bench: Benchmark, split: str, counts: np.ndarray, labels: np.ndarray,
                 paths: dict[str, list[str]], directions: np.ndarray, signal: float, face: bool,
                 reverse: bool, rng: np.random.Generator) -> int:
    list_dir = out / "annotation" / bench.name / ("single" if bench.label_sets else "")
    list_name = bench.list_file(split, 1 if bench.list_style == "fold" else None)
    variants = [False, True] if reverse else [False]
    lines = {(lvl, rv): [] for lvl in LEVELS for rv in variants}
    made: set[Path] = set()
    save = _NpyWriter()
    feature_dim = directions.shape[1]
    for index, (label, clip_counts) in enumerate(zip(labels, counts)):
        strength = signal * rng.uniform(0.3, 1.0)  # some clips are harder than others
        for lvl, count in zip(LEVELS, clip_counts):
            # The class signal rises and falls over the clip, like an expression's apex.
            envelope = np.sin(np.linspace(0.2, math.pi - 0.2, count))[:, None].astype(np.float32)
            windows = rng.standard_normal((count, feature_dim), dtype=np.float32)
            windows += strength * envelope * directions[label]
            for rv in variants:
                rel = _variant_path(paths[lvl][index], lvl, face, rv)
                target = out / rel
                if target.parent not in made:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    made.add(target.parent)
                save(target, windows[::-1] if rv else windows)
                lines[(lvl, rv)].append(f"{rel} {count} {label}")
    for (lvl, rv), entries in lines.items():
        target = list_dir / level_folder(lvl, face, rv) / list_name
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, "\n".join(entries) + "\n")
    return len(labels) * len(LEVELS) * len(variants)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pthnet synth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="ROOT folder to write")
    parser.add_argument("--like", default="FERv39k", help="benchmark whose naming and window counts to imitate")
    parser.add_argument("--clips", type=int, help="training clips (default: the benchmark's real size)")
    parser.add_argument("--test-clips", type=int, help="test clips (default: the real train/test ratio)")
    parser.add_argument("--feature-dim", type=int, default=1408)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--signal", type=float, default=1.0, help="class signal strength")
    parser.add_argument("--no-reverse", action="store_true", help="do not write the _rv variant")
    parser.add_argument("--face", action="store_true", help="name the folders as the _face variant")
    parser.add_argument("--annotation-dir", type=Path,
                        help="the original's annotation/ folder: imitate its real window counts, labels and names")
    args = parser.parse_args(argv)
    try:
        synthesize(args.out, args.like, args.clips, args.test_clips, args.feature_dim, args.seed,
                   args.signal, reverse=not args.no_reverse, face=args.face, annotation_dir=args.annotation_dir)
    except ValueError as err:
        print(f"pthnet synth: {err}", file=sys.stderr)
        return 2
    return 0
