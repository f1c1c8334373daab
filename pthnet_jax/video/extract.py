"""`pthnet extract VIDEOS --backbone CKPT --out ROOT --dataset NAME`: VideoMAE V2 features of every
clip, in the original PTH-Net layout, so `pthnet import-features --dataset NAME --root ROOT` reads
ROOT as it is:

    ROOT/get_features/NAME/th14_vit_g_16_<s>[_face][_rv]/<clip path relative to VIDEOS, no extension>.npy
        (num_windows, D) float32
    ROOT/annotation/NAME/th14_vit_g_16_<s>[_face][_rv]/<list file>     (with --labels)
        <npy path relative to ROOT> <num_windows> <label>

VIDEOS is a directory walked recursively (video files, and folders of frame images) or a list file
(`<path> [label [split]]` lines). Each distinct window of a clip is computed once for all strides;
windows of many clips share fixed-size batches on every local device while background threads
decode the next clips. Resumable: a clip whose files all exist is skipped, every file is written
atomically, so a killed run re-run ends with the same files. Clips that cannot be decoded are listed
in ROOT/skipped.json and the rest goes on. Several processes (PTHNET_COORDINATOR,
PTHNET_NUM_PROCESSES, PTHNET_PROCESS_ID, as for training) split the clips between them. Ctrl-C stops
after the clip at hand (exit 75); the same command resumes.

Before anything is decoded: NAME is a benchmark (FERv39k, DFEW, ...) or a dataset of your own with
--classes 'a,b,c' (labels: class names or numbers 0..K-1; ROOT/annotation/NAME/classes.txt is written
for import-features); every label is checked. ROOT/get_features/NAME/extract_record.json records the
backbone (sha256 of its weights, width, dtype) and the schedule; a re-run that differs is refused
(--force deletes NAME's features and lists and starts over).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from pthnet_jax.fsutil import atomic_path, atomic_write_json
from pthnet_jax.video.decode import VIDEO_EXTENSIONS, BackgroundDecoder, DecodeError, find_clips
from pthnet_jax.video.backbone import add_backbone_arguments, load_backbone, videomae_backbone  # noqa: F401
from pthnet_jax.video.engine import Backbone, WindowEngine, chunk_windows
from pthnet_jax.video.lists import read_labels, variant_folder, write_lists
from pthnet_jax.video.windows import DEFAULT_STRIDES, DIRECTIONS, END_CHOICES, SCHEDULES, SHORT_CHOICES, plan_clip

def clip_name(clip: Path, videos: Path) -> str:
    """The clip's path relative to VIDEOS without the video extension, '/'-separated."""
    base = videos if videos.is_dir() else videos.parent
    try:
        relative = clip.absolute().relative_to(base.absolute())
    except ValueError:
        relative = Path(clip.name)
    if str(relative) in ("", "."):
        relative = Path(clip.absolute().name)
    if relative.suffix.lower() in VIDEO_EXTENSIONS:
        relative = relative.with_suffix("")
    return relative.as_posix()


@dataclasses.dataclass
class ExtractOptions:
    strides: tuple[int, ...] = DEFAULT_STRIDES
    directions: tuple[str, ...] = DIRECTIONS
    schedule: str = "cover_end"
    end: str = "aligned"
    short: str = "clamp"
    face: bool = False

    def schedule_kwargs(self) -> dict[str, str]:
        return {"schedule": self.schedule, "end": self.end, "short": self.short}


def clip_features(engine: WindowEngine, frames: np.ndarray, options: ExtractOptions
                  ) -> dict[tuple[int, str], np.ndarray]:
    """All windows of ONE decoded clip -> {(stride, direction): (num_windows, D) float32}."""
    results: dict[tuple[int, str], np.ndarray] = {}
    for _, rows in _run_clips(engine, [("clip", frames)], options):
        if isinstance(rows, Exception):  # no window under the schedule
            raise rows
        results = rows
    return results


def _run_clips(engine: WindowEngine, clips: Iterable[tuple[Any, np.ndarray]], options: ExtractOptions):
    """Yield (clip id, {(stride, direction): features}) as clips finish; clips is an iterable of
    (id, frames) pairs whose frames may be a `DecodeError` (yielded back as (id, error))."""
    open_clips: dict[Any, dict[str, Any]] = {}

    def finish_ready():
        for (clip_id, direction, row), feature in engine.take_results():
            state = open_clips[clip_id]
            state["features"][direction][row] = feature
            state["remaining"] -= 1
        for clip_id in [c for c, s in open_clips.items() if s["remaining"] == 0]:
            state = open_clips.pop(clip_id)
            plan = state["plan"]
            yield clip_id, {(s, d): state["features"][d][plan.rows[(s, d)]] for (s, d) in plan.rows}

    for clip_id, frames in clips:
        if isinstance(frames, Exception):
            yield clip_id, frames
            continue
        plan = plan_clip(len(frames), options.strides, options.directions, **options.schedule_kwargs())
        if plan.num_distinct == 0:
            yield clip_id, DecodeError(f"{clip_id}: {len(frames)} frames give no window under the "
                                       f"'{options.schedule}' schedule (short={options.short})")
            continue
        open_clips[clip_id] = {"plan": plan, "remaining": plan.num_distinct,
                               "features": {d: np.empty((len(plan.starts[d]), engine.backbone.dim), np.float32)
                                            for d in options.directions}}
        indices = np.concatenate([plan.frame_indices(d) for d in options.directions])
        keys = [(clip_id, d, row) for d in options.directions for row in range(len(plan.starts[d]))]
        for first, end, rows in chunk_windows(indices, engine.chunk_frames):
            engine.add_chunk(frames[first:end], indices[rows] - first, [keys[r] for r in rows])
        yield from finish_ready()
    engine.flush()
    yield from finish_ready()


def _check_inputs(videos: Path, out: Path, dataset: str, labels, split: str, classes, paths, names):
    """Everything that can be checked before decoding: dataset name, labels, classes, clip names."""
    from pthnet_jax.video import record as rec

    rec.check_dataset_name(dataset)
    if not paths:
        raise ValueError(f"{videos}: no videos ({', '.join(sorted(VIDEO_EXTENSIONS))}) and no folders of frame images "
                         "found; point VIDEOS at the folder holding them (walked recursively) or at a list file")
    if len(set(names)) != len(names):
        dupes = sorted(n for n, c in collections.Counter(names).items() if c > 1)
        raise ValueError(f"{videos}: several clips map to the same feature file name: {dupes[:5]}")
    names_of_classes = rec.dataset_classes(dataset, rec.parse_classes(classes))
    notes = []
    if labels is None:
        return None, names_of_classes, notes
    raw, defaulted = read_labels(Path(labels), split)
    label_map = rec.resolve_labels(raw, names_of_classes, dataset, Path(labels))
    missing = [n for n in label_map if n not in set(names)]
    if missing:
        raise ValueError(f"{labels}: {len(missing)} labelled clips are not among the videos, e.g. {missing[:3]}")
    if defaulted:
        notes.append(f"{labels}: {defaulted} line(s) have no split column and went to the {split!r} split (--split)")
    if not any(s == "train" for _, s in label_map.values()):
        notes.append(f"the lists hold no training clip, so `pthnet import-features` (which needs train and test "
                     f"lists) will refuse ROOT: add 'train' or 'test' as a third column of {labels}")
    return label_map, names_of_classes, notes


def extract(videos: str | os.PathLike, out: str | os.PathLike, dataset: str, backbone: Backbone, *,
            options: ExtractOptions | None = None, labels: str | os.PathLike | None = None,
            split: str = "test", fold: int | None = None, batch_per_device: int | None = None,
            pool_frames: int | None = None, workers: int = 2, progress: bool = True,
            classes: str | Sequence[str] | None = None, force: bool = False) -> dict[str, Any]:
    """Extract every clip of VIDEOS into OUT (the layout above); returns the summary (also written to
    OUT/get_features/NAME/extract_summary.json). In a multi-process run (`jax.distributed` initialised,
    as `pthnet extract` does from the PTHNET_* variables) process i takes clips i, i + P, ...

    Checked before any video is decoded: the dataset name, the labels and classes (`classes`: names
    for a dataset of one's own, 'a,b,c' or a file), and that OUT's features were made by the same
    backbone and schedule (`pthnet_jax.video.record`; `force` deletes them first). Stops at the next
    finished clip on SIGINT/SIGTERM (`summary["interrupted"]`); a re-run resumes."""
    import jax

    from pthnet_jax import interrupts
    from pthnet_jax.video import record as rec

    options = options or ExtractOptions()
    videos, out = Path(videos), Path(out)
    process, processes = jax.process_index(), jax.process_count()
    paths = find_clips(videos)
    names = [clip_name(p, videos) for p in paths]
    if classes is not None and not isinstance(classes, str):
        classes = ",".join(classes)
    label_map, class_list, notes = _check_inputs(videos, out, dataset, labels, split, classes, paths, names)
    variants = [variant_folder(s, d, options.face) for s in options.strides for d in options.directions]
    record = rec.make_record(backbone, options)
    # With --force, process 0 deletes and the others wait for it; otherwise every process checks.
    forced = rec.check_root(out, dataset, record, variants, force) if process == 0 or not force else None
    if processes > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("pthnet-extract-checked")
    if process == 0:
        rec.write_record(out, dataset, record, variants)
        if class_list is not None and label_map is not None:
            rec.write_classes(out, dataset, class_list)
    feature_root = out / "get_features" / dataset

    def files_of(name: str) -> list[Path]:
        return [feature_root / v / f"{name}.npy" for v in variants]

    mine = [(p, n) for i, (p, n) in enumerate(zip(paths, names)) if i % processes == process]
    todo = [(p, n) for p, n in mine if not all(f.exists() for f in files_of(n))]
    engine = WindowEngine(backbone, batch_per_device=batch_per_device, pool_frames=pool_frames)
    decoder = BackgroundDecoder([p for p, _ in todo], workers, ahead=2 * max(1, workers) + 2)
    if todo and progress:
        print(f"extract: the first clip compiles the backbone's programs (first run of these shapes only; "
              f"{_cache_note()}); the bar starts moving after that", file=sys.stderr, flush=True)
    with interrupts.deferred():
        counts = _extract_loop(engine, decoder, options, feature_root, dict(todo), len(mine), len(mine) - len(todo),
                               progress)
    summary = {"videos": str(videos), "out": str(out), "dataset": dataset, "backbone": backbone.name,
               "backbone_sha256": record["backbone_sha256"], "process": process, "processes": processes,
               "clips": len(mine), "already_done": len(mine) - len(todo), **counts,
               "windows_per_second": round(engine.windows_computed / max(counts["seconds"], 1e-9), 3),
               "decode_wait_seconds": round(decoder.wait_seconds, 3),
               "decode_busy_seconds": round(decoder.busy_seconds, 3), "devices": len(engine.devices),
               "batch_per_device": engine.batch, "options": dataclasses.asdict(options), "notes": notes,
               **({"forced": forced} if forced else {})}
    skipped = summary.pop("skipped_clips")
    _write_summary(out, feature_root, summary, skipped, process, processes)
    if label_map is not None and process == 0 and not summary["interrupted"]:
        summary["lists"] = write_lists(out, dataset, names, label_map, options, fold)
    return summary


def _cache_note() -> str:
    import jax

    cache = jax.config.jax_compilation_cache_dir
    return f"cached in {cache}" if cache else "compilation cache off"


def _extract_loop(engine, decoder, options, feature_root: Path, name_of: dict, total: int, resumed: int,
                  progress: bool) -> dict[str, Any]:
    from pthnet_jax import interrupts

    bar = _progress(total, resumed, progress)
    skipped, done, listed_windows, interrupted = [], 0, 0, False
    started = time.perf_counter()
    try:
        for path, result in _run_clips(engine, decoder, options):
            if isinstance(result, Exception):
                skipped.append({"clip": str(path), "reason": str(result)})
            else:
                for (stride, direction), rows in result.items():
                    target = feature_root / variant_folder(stride, direction, options.face) / f"{name_of[path]}.npy"
                    with atomic_path(target) as tmp:
                        np.save(tmp, rows)
                    listed_windows += len(rows)
                done += 1
            elapsed = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix_str(f"{engine.windows_computed / max(elapsed, 1e-9):.1f} windows/s, "
                                f"{len(skipped)} skipped", refresh=False)
            if interrupts.pending() is not None:
                interrupted = True
                break
    finally:
        bar.close()
    return {"extracted": done, "skipped": len(skipped), "skipped_clips": skipped, "interrupted": interrupted,
            "distinct_windows": engine.windows_computed, "listed_windows": listed_windows,
            "seconds": round(time.perf_counter() - started, 3)}


def _write_summary(out: Path, feature_root: Path, summary: dict, skipped: list, process: int, processes: int):
    suffix = "" if processes == 1 else f".process-{process}"
    atomic_write_json(out / f"skipped{suffix}.json", {"skipped": skipped})
    atomic_write_json(feature_root / f"extract_summary{suffix}.json", summary)
    if processes > 1 and not summary["interrupted"]:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("pthnet-extract-done")
        if process == 0:
            merged = []
            for i in range(processes):
                merged += json.loads((out / f"skipped.process-{i}.json").read_text())["skipped"]
            atomic_write_json(out / "skipped.json", {"skipped": merged})


def _progress(total: int, initial: int, enabled: bool, desc: str = "extract", unit: str = "clip"):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, desc=desc, disable=not enabled, dynamic_ncols=True)


def add_window_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--schedule", choices=SCHEDULES, default="cover_end",
                        help="window starts: cover_end (default: one more window ending at the last frame) "
                             "or public (the public script's range(0, N - 15, s))")
    parser.add_argument("--end-window", choices=END_CHOICES, default="aligned", dest="end",
                        help="cover_end's last window: aligned (starts at N - 16) or clamp (next multiple of s, "
                             "last frame repeated)")
    parser.add_argument("--short", choices=SHORT_CHOICES, default="clamp",
                        help="clips under 16 frames: clamp (one window, last frame repeated) or skip")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pthnet extract", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", type=Path, help="a directory of videos / frame folders, or a list file")
    add_backbone_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="ROOT of the original feature layout")
    parser.add_argument("--dataset", required=True, help="a benchmark name (FERv39k, DFEW, ...) or a name of your own "
                        "(then --classes): the folder under get_features/")
    parser.add_argument("--classes", help="the classes of a dataset of your own: 'name0,name1,...' or a file with one "
                        "name per line (labels may then be names or numbers 0..K-1)")
    parser.add_argument("--force", action="store_true", help="delete the dataset's features and lists in ROOT first "
                        "(when they were made by another backbone or schedule)")
    parser.add_argument("--strides", type=int, nargs="+", default=list(DEFAULT_STRIDES))
    parser.add_argument("--directions", nargs="+", choices=DIRECTIONS, default=list(DIRECTIONS))
    add_window_arguments(parser)
    parser.add_argument("--face", action="store_true", help="name the folders ..._face (features of face crops)")
    parser.add_argument("--labels", type=Path, help="'<relative video path> <label> [train|test]' lines; "
                                                    "writes the annotation lists too")
    parser.add_argument("--split", choices=("train", "test"), default="test",
                        help="the split of label lines without a third column")
    parser.add_argument("--fold", type=int, help="fold number in the list file names (fold datasets)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="backbone compute dtype (float32 for the original's numbers)")
    parser.add_argument("--batch", type=int, help="windows per device per step (default 2 CPU, 32 accelerators)")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    options = ExtractOptions(tuple(args.strides), tuple(args.directions), args.schedule, args.end, args.short,
                             args.face)
    from pthnet_jax import parallel
    from pthnet_jax.reporting import enable_compilation_cache

    try:  # the videos, labels and classes are checked before the backbone is even read
        paths = find_clips(args.videos)
        _check_inputs(args.videos, args.out, args.dataset, args.labels, args.split, args.classes, paths,
                      [clip_name(p, args.videos) for p in paths])
        parallel.maybe_initialize_distributed()  # before any JAX computation; the processes split the clips
        enable_compilation_cache()
        backbone = load_backbone(args.backbone, args.dtype, num_heads=args.num_heads)
        summary = extract(args.videos, args.out, args.dataset, backbone, options=options, labels=args.labels,
                          split=args.split, fold=args.fold, batch_per_device=args.batch, workers=args.workers,
                          progress=not args.no_progress, classes=args.classes, force=args.force)
    except (FileNotFoundError, ValueError) as err:
        print(f"pthnet extract: {err}", file=sys.stderr)
        return 2
    for note in summary.get("notes", []) + ([summary["forced"]] if summary.get("forced") else []):
        print(f"pthnet extract: note: {note}", file=sys.stderr)
    print(f"extracted {summary['extracted']} clips ({summary['already_done']} already done, "
          f"{summary['skipped']} skipped) in {summary['seconds']:.1f}s: {summary['distinct_windows']} distinct "
          f"windows, {summary['windows_per_second']:.2f} windows/s; decode waited {summary['decode_wait_seconds']:.1f}s"
          f" -> {args.out}")
    if summary["skipped"]:
        print(f"skipped clips are listed in {args.out / 'skipped.json'}")
    if summary["interrupted"]:
        from pthnet_jax.interrupts import INTERRUPTED_EXIT

        print("pthnet extract: interrupted; every finished clip is saved: re-run the same command to resume "
              "(finished clips are skipped)", file=sys.stderr)
        return INTERRUPTED_EXIT
    return 0
