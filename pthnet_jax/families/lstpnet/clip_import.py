"""Import clip lists (frame folders or videos) into an LSTPNet frames dataset (see clip_data.py).

Every clip is validated while it is written into a staging directory beside OUT, renamed to OUT only
at the end: a failed import leaves nothing behind. A clip fails when its folder or video is missing,
when a frame cannot be read or decoded (every frame is decoded once), or when the number of frames
found differs from the list's count; the error names the list file and line. With `skip_bad` such
clips are left out and listed in OUT/skipped.json.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

from pthnet_jax.families.lstpnet.clips import (DFEW_FOLDS, FRAME_PATTERNS, MIN_FRAMES, ClipEntry,
                                               ClipListError, benchmark_name, class_names_for,
                                               read_clip_list, resolve_clip_path)
from pthnet_jax.families.lstpnet.frames import check_frames, read_clip
from pthnet_jax.fsutil import staged_dir

READ_AHEAD_CLIPS = 64


def variant_name(benchmark: str, fold: int | None) -> str:
    return benchmark.lower() + (f"_fold{fold}" if fold is not None else "")


def _load_clip(entry: ClipEntry, list_file: Path, root: Path, pattern: str, strip_prefix: str | None,
               check: bool) -> dict:
    from pthnet_jax.families.lstpnet.clip_data import record_fields

    where = f"{list_file}:{entry.line}"
    try:
        path = resolve_clip_path(root, entry.path, strip_prefix)
        frames, names, source = read_clip(path, pattern)
        if check:
            check_frames(frames, names)
    except ClipListError as err:
        raise ClipListError(f"{where}: {err}") from err
    if entry.num_frames == 0 and source != "video":
        raise ClipListError(f"{where}: frame count 0 is only allowed for video files, {path} is a folder")
    if entry.num_frames and len(frames) != entry.num_frames:
        raise ClipListError(f"{where}: the list says {entry.num_frames} frames, {path} has {len(frames)}")
    return record_fields(frames, source)


def import_clips(train_list: str | os.PathLike | None, test_list: str | os.PathLike | None,
                 root: str | os.PathLike, out: str | os.PathLike, *, benchmark: str,
                 classes: str | None = None, fold: int | None = None, strip_prefix: str | None = None,
                 frame_pattern: str | None = None, skip_bad: bool = False, check: bool = True,
                 num_threads: int = 4, quiet: bool = False) -> Path:
    """Import the train and/or test list of one benchmark (fold) into OUT; returns the dataset dir."""
    import tensorflow_datasets as tfds

    from pthnet_jax.data.builder import find_dataset_dir
    from pthnet_jax.data.importer import ImportWriteError, _is_write_failure, _os_reason, _quiet_tfds
    from pthnet_jax.families.lstpnet.clip_data import LstpnetClips, LstpnetClipsConfig, write_index

    bench = benchmark_name(benchmark)
    names = class_names_for(bench, classes)
    pattern = frame_pattern or FRAME_PATTERNS[bench]
    if fold is not None and (bench != "DFEW" or not 1 <= fold <= DFEW_FOLDS) and bench != "custom":
        raise ValueError(f"--fold: {bench} has {'folds 1..5' if bench == 'DFEW' else 'no folds'}, got {fold}")
    root, out = Path(root).absolute(), Path(out).absolute()
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new --out (imports never overwrite)")
    list_files = {split: Path(p).absolute() for split, p in (("train", train_list), ("test", test_list)) if p}
    if not list_files:
        raise ValueError("give at least one list (--list-train and/or --list-test)")
    splits = {split: (read_clip_list(path, len(names)), path) for split, path in list_files.items()}
    skipped: list[str] = []
    written: dict[str, list[tuple[ClipEntry, int]]] = {split: [] for split in splits}

    def load_clips(split: str, entries: list[ClipEntry]) -> Iterator[tuple[ClipEntry, dict | None]]:
        def load(entry: ClipEntry) -> dict | None:
            try:
                return _load_clip(entry, list_files[split], root, pattern, strip_prefix, check)
            except ClipListError as err:
                if not skip_bad:
                    raise
                skipped.append(str(err))
                return None

        with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
            for start in range(0, len(entries), READ_AHEAD_CLIPS):  # bounded read-ahead, list order
                chunk = entries[start:start + READ_AHEAD_CLIPS]
                for entry, fields in zip(chunk, pool.map(load, chunk)):
                    if fields is not None:
                        written[split].append((entry, int(fields["num_frames"])))
                    yield entry, fields

    name = variant_name(bench, fold)
    metadata = {"variant": name, "source_root": str(root), "frame_pattern": pattern,
                "strip_prefix": strip_prefix or "", "frames": "folders: original file bytes; videos: PNG",
                "list_files": {s: str(p) for s, p in list_files.items()},
                "list_sha256": {s: hashlib.sha256(p.read_bytes()).hexdigest() for s, p in list_files.items()}}
    config = LstpnetClipsConfig(name=name, benchmark=bench, fold=fold, class_names=tuple(names),
                                splits=splits, load_clips=load_clips, extra_metadata=metadata)
    started = time.perf_counter()
    tfds.disable_progress_bar()
    try:
        with staged_dir(out, replace=False) as staging:
            with _quiet_tfds():
                builder = LstpnetClips(data_dir=str(staging), config=config, file_format="array_record")
                builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                    manual_dir=str(root), verify_ssl=False))
            for split, entries in written.items():
                write_index(find_dataset_dir(staging), split, entries)
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
        print(f"imported {bench} ({name}) from {root} in {time.perf_counter() - started:.1f}s -> {dataset_dir}")
        for split, entries in written.items():
            short = sum(n < MIN_FRAMES for _, n in entries)
            print(f"  {split}: {len(entries)} clips of {len(splits[split][0])} listed; {short} have fewer "
                  f"than {MIN_FRAMES} frames (the original's short-clip filter would drop them)")
        if skipped:
            print(f"  {len(skipped)} skipped clips are listed in {out / 'skipped.json'}")
    return dataset_dir
