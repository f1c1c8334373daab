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
PTHNET_NUM_PROCESSES, PTHNET_PROCESS_ID, as for training) split the clips between them.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from pthnet_jax.fsutil import atomic_path, atomic_write_json
from pthnet_jax.video.decode import VIDEO_EXTENSIONS, DecodeError, find_clips, load_clip
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


class _Decoder:
    """Decode clips in background threads, a bounded number ahead, in order; time the waits."""

    def __init__(self, paths: Sequence[Path], workers: int, ahead: int):
        self.paths = list(paths)
        self.pool = concurrent.futures.ThreadPoolExecutor(max(1, workers), thread_name_prefix="decode")
        self.ahead = max(1, ahead)
        self.wait_seconds = 0.0
        self.busy_seconds = 0.0
        self._lock = threading.Lock()

    def _load(self, path: Path):
        started = time.perf_counter()
        try:
            return load_clip(path)
        except DecodeError as err:
            return err
        except Exception as err:  # anything else a broken file provokes inside a decoder
            return DecodeError(f"{path}: cannot decode ({type(err).__name__}: {err})")
        finally:
            with self._lock:
                self.busy_seconds += time.perf_counter() - started

    def __iter__(self):
        futures: collections.deque = collections.deque()
        position = 0
        try:
            while position < len(self.paths) or futures:
                while position < len(self.paths) and len(futures) < self.ahead:
                    futures.append((self.paths[position], self.pool.submit(self._load, self.paths[position])))
                    position += 1
                path, future = futures.popleft()
                started = time.perf_counter()
                frames = future.result()
                self.wait_seconds += time.perf_counter() - started
                yield path, frames
        finally:
            for _, future in futures:
                future.cancel()
            self.pool.shutdown(wait=True, cancel_futures=True)


def extract(videos: str | os.PathLike, out: str | os.PathLike, dataset: str, backbone: Backbone, *,
            options: ExtractOptions | None = None, labels: str | os.PathLike | None = None,
            split: str = "test", fold: int | None = None, batch_per_device: int | None = None,
            pool_frames: int | None = None, workers: int = 2, progress: bool = True) -> dict[str, Any]:
    """Extract every clip of VIDEOS into OUT (the layout above); returns the summary (also written to
    OUT/get_features/NAME/extract_summary.json). In a multi-process run (`jax.distributed` initialised,
    as `pthnet extract` does from the PTHNET_* variables) process i takes clips i, i + P, ..."""
    import jax

    options = options or ExtractOptions()
    videos, out = Path(videos), Path(out)
    process, processes = jax.process_index(), jax.process_count()
    paths = find_clips(videos)
    names = [clip_name(p, videos) for p in paths]
    if len(set(names)) != len(names):
        dupes = sorted(n for n, c in collections.Counter(names).items() if c > 1)
        raise ValueError(f"{videos}: several clips map to the same feature file name: {dupes[:5]}")
    feature_root = out / "get_features" / dataset
    label_map = read_labels(Path(labels), split) if labels else None
    if label_map is not None:
        missing = [n for n in label_map if n not in set(names)]
        if missing:
            raise ValueError(f"{labels}: {len(missing)} labelled clips are not among the videos, e.g. {missing[:3]}")

    def files_of(name: str) -> list[Path]:
        return [feature_root / variant_folder(s, d, options.face) / f"{name}.npy"
                for s in options.strides for d in options.directions]

    mine = [(p, n) for i, (p, n) in enumerate(zip(paths, names)) if i % processes == process]
    todo = [(p, n) for p, n in mine if not all(f.exists() for f in files_of(n))]
    resumed = len(mine) - len(todo)
    engine = WindowEngine(backbone, batch_per_device=batch_per_device, pool_frames=pool_frames)
    decoder = _Decoder([p for p, _ in todo], workers, ahead=2 * max(1, workers) + 2)
    name_of = {p: n for p, n in todo}
    bar = _progress(len(mine), resumed, progress)
    skipped, done, listed_windows = [], 0, 0
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
    finally:
        bar.close()
    wall = time.perf_counter() - started
    summary = {"videos": str(videos), "out": str(out), "dataset": dataset, "backbone": backbone.name,
               "process": process, "processes": processes, "clips": len(mine), "extracted": done,
               "already_done": resumed, "skipped": len(skipped), "distinct_windows": engine.windows_computed,
               "listed_windows": listed_windows, "seconds": round(wall, 3),
               "windows_per_second": round(engine.windows_computed / max(wall, 1e-9), 3),
               "decode_wait_seconds": round(decoder.wait_seconds, 3),
               "decode_busy_seconds": round(decoder.busy_seconds, 3), "devices": len(engine.devices),
               "batch_per_device": engine.batch, "options": dataclasses.asdict(options)}
    suffix = "" if processes == 1 else f".process-{process}"
    atomic_write_json(out / f"skipped{suffix}.json", {"skipped": skipped})
    atomic_write_json(feature_root / f"extract_summary{suffix}.json", summary)
    if processes > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("pthnet-extract-done")
        if process == 0:
            merged = []
            for i in range(processes):
                merged += json.loads((out / f"skipped.process-{i}.json").read_text())["skipped"]
            atomic_write_json(out / "skipped.json", {"skipped": merged})
    if label_map is not None and process == 0:
        summary["lists"] = write_lists(out, dataset, names, label_map, options, fold)
    return summary


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="clip", desc="extract", disable=not enabled, dynamic_ncols=True)


def videomae_backbone(model, variables, name: str = "videomae") -> Backbone:
    """A Flax `VideoMAE` module and its `{"params": ...}` as a `Backbone`."""
    return Backbone(apply=model.apply, params=variables, dim=int(model.config.embed_dim), name=name)


def load_backbone(path: str | os.PathLike, dtype: str = "float32", config=None) -> Backbone:
    """A VideoMAE V2 checkpoint (the released `.pth`, read without PyTorch) as a `Backbone`;
    `dtype` is the compute dtype (parameters keep the checkpoint's precision). `config` (a
    `VideoMAEConfig`) is needed only for widths outside the family, whose head count the shapes
    cannot tell."""
    import jax.numpy as jnp

    from pthnet_jax.convert.videomae import load_videomae

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such VideoMAE checkpoint")
    model, variables = load_videomae(str(path), compute_dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32,
                                     config=config)
    return videomae_backbone(model, variables, name=f"{path.name} ({model.config.embed_dim}-d, {dtype})")


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
    parser.add_argument("--backbone", required=True, type=Path,
                        help="VideoMAE V2 checkpoint (vit_g_hybrid_pt_1200e_k710_ft.pth) or converted directory")
    parser.add_argument("--out", required=True, type=Path, help="ROOT of the original feature layout")
    parser.add_argument("--dataset", required=True, help="benchmark name: the folder under get_features/")
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

    parallel.maybe_initialize_distributed()  # before any JAX computation; the processes split the clips
    try:
        backbone = load_backbone(args.backbone, args.dtype)
        summary = extract(args.videos, args.out, args.dataset, backbone, options=options, labels=args.labels,
                          split=args.split, fold=args.fold, batch_per_device=args.batch, workers=args.workers,
                          progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as err:
        print(f"pthnet extract: {err}", file=sys.stderr)
        return 2
    print(f"extracted {summary['extracted']} clips ({summary['already_done']} already done, "
          f"{summary['skipped']} skipped) in {summary['seconds']:.1f}s: {summary['distinct_windows']} distinct "
          f"windows, {summary['windows_per_second']:.2f} windows/s; decode waited {summary['decode_wait_seconds']:.1f}s"
          f" -> {args.out}")
    if summary["skipped"]:
        print(f"skipped clips are listed in {args.out / 'skipped.json'}")
    return 0
