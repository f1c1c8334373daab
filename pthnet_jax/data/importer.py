"""`pthnet import-features`: the original layout (lists + .npy) -> a TFDS array_record dataset.

Everything is validated while it is written into a temporary directory beside OUT, which is renamed
to OUT only at the end: a failed import leaves no dataset behind.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import io
import logging
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from pthnet_jax.data.benchmarks import (BENCHMARKS, Benchmark, class_names, custom_benchmark, get_benchmark,
                                        level_folder, variant_name)
from pthnet_jax.data.lists import LEVELS, Clip, DataListError, align_lists, load_features, read_npy
from pthnet_jax.fsutil import staged_dir

SPLITS = ("train", "test")
READ_AHEAD_CLIPS = 128


def default_lists_dir(root: Path, dataset: str, label_set: str | None) -> Path:
    try:
        bench = get_benchmark(dataset)
    except ValueError:  # a dataset of one's own
        return Path(root) / "annotation" / dataset
    lists = Path(root) / "annotation" / bench.name
    return lists / label_set if bench.label_sets else lists


def resolve_benchmark(dataset: str, root: Path, lists: Path | None, classes: str | None) -> Benchmark:
    """One of the eight benchmarks, or a dataset of one's own: its classes from `classes` ('a,b,c' or
    a file), else from `classes.txt` in its lists folder (which `pthnet extract --classes` writes)."""
    try:
        bench = get_benchmark(dataset)
    except ValueError:
        bench = None
    if bench is not None:
        if classes:
            raise ValueError(f"--classes: {bench.name} is a benchmark with its own classes {list(bench.class_names)}")
        return bench
    from pthnet_jax.video.record import CLASSES_FILE, parse_classes

    declared = Path(lists or default_lists_dir(root, dataset, None)) / CLASSES_FILE
    if classes is None and declared.is_file():
        classes = str(declared)
    if classes is None:
        raise ValueError(f"unknown benchmark or dataset {dataset!r}: not one of the eight benchmarks {sorted(BENCHMARKS)}, and "
                         f"{declared} (the classes of a dataset of your own, written by `pthnet extract --classes`) "
                         "does not exist; pass --classes 'name0,name1,...' (or a file, one name per line)")
    return custom_benchmark(dataset, parse_classes(classes))


def _list_files(lists_dir: Path, list_name: str, face: bool, reverse: bool, split: str) -> dict[str, Path]:
    list_files = {lvl: lists_dir / level_folder(lvl, face, reverse) / list_name for lvl in LEVELS}
    for lvl, path in list_files.items():
        if not path.is_file():
            raise DataListError(f"{path}: data list not found (level {lvl}, split {split}); expected "
                                f"the original layout under {lists_dir}. `pthnet extract --labels FILE` "
                                "writes the lists: a clip goes to train or test by the third column of "
                                "FILE (lines without one go to --split, test by default)")
    return list_files


def infer_feature_dim(root: Path, clip: Clip, list_file: Path) -> int:
    """The width of the features, from the first clip's H-level file (main thread: np.load is not thread-safe)."""
    path = root / clip.paths["H"]
    try:
        array = read_npy(path)
    except (OSError, ValueError) as err:
        raise DataListError(f"{list_file}: cannot read {path} to learn the feature width ({err}); pass "
                            "--feature-dim") from err
    if array.ndim != 2:
        raise DataListError(f"{path}: expected (num_windows, D) features, got shape {array.shape}")
    return int(array.shape[1])


def import_features(dataset: str, root: str | os.PathLike, out: str | os.PathLike, *,
                    lists: str | os.PathLike | None = None, fold: int | None = None,
                    reverse: bool = False, face: bool = False, label_set: str | None = None,
                    skip_bad: bool = False, feature_dim: int | None = None, num_threads: int = 8,
                    quiet: bool = False, classes: str | None = None) -> Path:
    """Import the train and test splits of one benchmark/fold/variant; returns the dataset directory.

    `dataset`: a benchmark, or a dataset of one's own (`classes`, or the `classes.txt` that `pthnet
    extract --classes` writes). `feature_dim` None: the width of the first clip's features (every
    other file is checked against it)."""
    import tensorflow_datasets as tfds

    from pthnet_jax.data.builder import PthnetFeatures, PthnetFeaturesConfig, find_dataset_dir

    bench = resolve_benchmark(dataset, Path(root), Path(lists) if lists else None, classes)
    if bench.label_sets and label_set is None:
        label_set = "single"
    names = class_names(bench, label_set)
    if bench.list_style == "fold" and fold is None:
        raise ValueError(f"{bench.name} has folds: pass --fold (1..{bench.num_folds})")
    root, out = Path(root).absolute(), Path(out).absolute()
    lists_dir = Path(lists).absolute() if lists else default_lists_dir(root, bench.name, label_set)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new --out (imports never overwrite)")

    skipped: list[str] = []
    written: dict[str, list[Clip]] = {split: [] for split in SPLITS}
    splits, list_files_by_split, list_hashes = {}, {}, {}
    for split in SPLITS:
        list_files = _list_files(lists_dir, bench.list_file(split, fold), face, reverse, split)
        clips = align_lists(list_files, len(names), on_error=(lambda e: skipped.append(str(e))) if skip_bad else None)
        splits[split] = (clips, list_files)
        if feature_dim is None and clips:
            feature_dim = infer_feature_dim(root, clips[0], list_files["H"])
        list_files_by_split[split] = {lvl: str(p) for lvl, p in list_files.items()}
        list_hashes[split] = {lvl: hashlib.sha256(p.read_bytes()).hexdigest() for lvl, p in list_files.items()}

    feature_dim = feature_dim or 1408  # no clip listed at all: the ViT-g width

    def load_clips(split: str, clips: list[Clip]) -> Iterator[tuple[Clip, dict[str, np.ndarray] | None]]:
        list_files = splits[split][1]

        def load(clip: Clip):
            try:
                windows = {lvl: load_features(root, clip, lvl, list_files[lvl], feature_dim) for lvl in LEVELS}
                return windows
            except DataListError as err:
                if not skip_bad:
                    raise
                skipped.append(str(err))
                return None

        with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
            # Bounded read-ahead (long DFEW/MELD clips are MBs each), list order kept.
            for start in range(0, len(clips), READ_AHEAD_CLIPS):
                chunk = clips[start:start + READ_AHEAD_CLIPS]
                for clip, windows in zip(chunk, pool.map(load, chunk)):
                    if windows is not None:
                        written[split].append(clip)
                    yield clip, windows

    config = PthnetFeaturesConfig(
        name=variant_name(bench, fold, face, reverse, label_set), benchmark=bench.name, fold=fold,
        label_set=label_set, face=face, reverse=reverse, class_names=tuple(names), feature_dim=feature_dim,
        splits=splits, load_clips=load_clips,
        extra_metadata={"variant": variant_name(bench, fold, face, reverse, label_set), "source_root": str(root),
                        "list_files": list_files_by_split, "list_sha256": list_hashes})
    started = time.perf_counter()
    tfds.disable_progress_bar()
    # Built under a staging name beside OUT (leftovers of a killed import are removed first), then
    # swapped in: OUT is either absent or complete.
    try:
        with staged_dir(out, replace=False) as staging:
            with _quiet_tfds():  # its messages name the staging directory; ours below names the result
                builder = PthnetFeatures(data_dir=str(staging), config=config, file_format="array_record")
                builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                    manual_dir=str(root), verify_ssl=False))
            _write_indices(find_dataset_dir(staging), written)
            if skipped:
                (staging / "skipped.json").write_text(json.dumps({"skipped": skipped}, indent=1))
            shutil.rmtree(staging / "downloads", ignore_errors=True)
    except (OSError, RuntimeError) as err:
        if isinstance(err, (FileExistsError, FileNotFoundError)) and not _is_write_failure(err):
            raise
        raise ImportWriteError(f"{out}: writing the dataset failed ({_os_reason(err)}); nothing was "
                               "left behind: free space or fix the permissions, then run the same "
                               "command again") from err
    dataset_dir = find_dataset_dir(out)
    if not quiet:
        counts = {split: len(clips) for split, (clips, _) in splits.items()}
        print(f"imported {bench.name} ({config.name}) from {root}: {counts} clips listed, "
              f"{len(skipped)} skipped, in {time.perf_counter() - started:.1f}s -> {dataset_dir}")
        if skipped:
            print(f"skipped clips are listed in {out / 'skipped.json'}")
    return dataset_dir


class ImportWriteError(OSError):
    """Writing the dataset failed at the OS level (disk full, permissions); nothing was left behind."""


_WRITE_FAILURES = ("No space left on device", "Permission denied", "Read-only file system",
                   "Disk quota exceeded", "File too large")


def _is_write_failure(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno is not None and err.errno not in (2, 17)


def _os_reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}{f': {err.filename}' if err.filename else ''}"
    text = str(err)
    for marker in _WRITE_FAILURES:
        if marker in text:
            return marker
    return f"{type(err).__name__}: {text[:300]}"


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
    """Silence TFDS's progress prints and absl info/warnings while building."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        absl_logger.setLevel(level)


def _write_indices(dataset_dir: Path, written: dict[str, list[Clip]]) -> None:
    """Per split: clip ids, labels and window counts of the written records, for `open_split`."""
    for split, clips in written.items():
        np.savez(dataset_dir / f"pthnet_index-{split}.npz",
                 clip_ids=np.array([c.clip_id for c in clips]),
                 labels=np.array([c.label for c in clips], np.int32),
                 **{f"num_windows_{lvl}": np.array([c.num_windows[lvl] for c in clips], np.int32)
                    for lvl in LEVELS})


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pthnet import-features", description=__doc__)
    parser.add_argument("--dataset", required=True, help="FERv39k, DFEW, MAFW, CREMA-D, eNTERFACE05, "
                        "RAVDESS, MELD, CASME2, or a dataset of your own (classes from --classes or "
                        "ROOT/annotation/NAME/classes.txt; lists train.txt / test.txt)")
    parser.add_argument("--classes", help="the classes of a dataset of your own: 'a,b,c' or a file, one per line")
    parser.add_argument("--root", required=True, type=Path, help="folder the list paths are relative to "
                        "(the one holding get_features/)")
    parser.add_argument("--out", required=True, type=Path, help="data directory to create")
    parser.add_argument("--lists", type=Path, help="folder of the level list folders "
                        "(default ROOT/annotation/NAME[/LABEL_SET])")
    parser.add_argument("--fold", type=int, help="fold / set number for benchmarks with folds")
    parser.add_argument("--reverse", action="store_true", help="the time-reversed (_rv) features")
    parser.add_argument("--face", action="store_true", help="the face-crop (_face) features")
    parser.add_argument("--label-set", choices=("single", "compound"), help="MAFW label set")
    parser.add_argument("--skip-bad", action="store_true", help="skip invalid clips, write skipped.json")
    parser.add_argument("--feature-dim", type=int, help="feature size (default: read from the first clip's "
                        "features; 1408 for ViT-g)")
    args = parser.parse_args(argv)
    try:
        import_features(args.dataset, args.root, args.out, lists=args.lists, fold=args.fold,
                        reverse=args.reverse, face=args.face, label_set=args.label_set,
                        skip_bad=args.skip_bad, feature_dim=args.feature_dim, classes=args.classes)
    except (DataListError, ValueError, OSError) as err:  # OSError: FileExistsError, ImportWriteError...
        print(f"pthnet import-features: {err}", file=sys.stderr)
        return 2
    return 0
