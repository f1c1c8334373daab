"""`pthnet predict VIDEO... --backbone CKPT --checkpoint PTHNET [--rv-checkpoint PTHNET --mu 0.7]`:
the expression in each clip, from the video file (or frame folder) itself.

Per clip: decode, extract the stride-4 VideoMAE features (forward, and reversed when a backward model
is given) exactly as `pthnet extract` does, sample them as `pthnet evaluate` does, fuse the forward
and backward logits (`mu * forward + (1 - mu) * backward`) and print the softmax as a table.
`--output FILE.json` writes `{"predictions": [{"video", "probabilities": {class: p}, "label"}, ...]}`.
Exit status: 0 done, 2 bad arguments, or some clip could not be read (the others are still predicted).

An LSTPNet checkpoint (its family is recorded in it) needs no backbone: pthnet_jax.families.lstpnet.predict.

In Python: `predict_files(videos, backbone_file, checkpoint)` (the same dicts), or
`predict_videos(paths_or_frames, backbone, model, variables, ...)` (probability arrays).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pthnet_jax.fsutil import atomic_write_json
from pthnet_jax.inference import clip_logits, fuse_logits, softmax
from pthnet_jax.video.backbone import add_backbone_arguments, load_backbone
from pthnet_jax.video.decode import DecodeError, find_clips, load_clip
from pthnet_jax.video.engine import Backbone, WindowEngine
from pthnet_jax.video.extract import ExtractOptions, add_window_arguments, clip_features

H_STRIDE = 4  # evaluation reads the H level only: windows 4 frames apart


def predict_videos(videos: Sequence[str | os.PathLike | np.ndarray], backbone: Backbone, model,
                   variables: Mapping[str, Any], *, rv_model=None, rv_variables: Mapping[str, Any] | None = None,
                   mu: float = 0.7, schedule: str = "cover_end", end: str = "aligned", short: str = "clamp",
                   engine: WindowEngine | None = None) -> list[np.ndarray]:
    """Class probabilities (num_classes,) per clip, in the order of the model's classes (for their
    names and a ready-made table, `predict_files` below).

    videos: paths of video files or frame folders, or decoded clips (N, H, W, 3) uint8 RGB (one path
        or one clip alone is taken as a list of one).
    backbone: the VideoMAE V2 backbone: `pthnet_jax.video.backbone.load_backbone("vit_g_hybrid_pt_1200e_k710_ft.pth")`
        (or the small `backbone.safetensors` that `pthnet demo-video --workdir DIR` writes).
    model, variables: the forward PTH-Net (`pthnet_jax.load_model(path)`); rv_model/rv_variables the
        optional backward model, fused with weight `mu` on the forward logits.
    """
    if isinstance(videos, (str, os.PathLike)) or (isinstance(videos, np.ndarray) and videos.ndim == 4):
        videos = [videos]  # one clip, not a sequence of them (a path's characters are not clips)
    if (rv_model is None) != (rv_variables is None):
        raise ValueError("pass both rv_model and rv_variables, or neither")
    for which in (model, rv_model):
        if which is not None and which.config.n_in != backbone.dim:
            raise ValueError(f"the PTH-Net model reads {which.config.n_in}-d features but the backbone "
                             f"{backbone.name} makes {backbone.dim}-d ones")
    if rv_model is not None and rv_model.config == model.config and rv_model.dtype == model.dtype:
        rv_model = model  # the same module: its compiled evaluation step serves both
    directions = ("forward", "reverse") if rv_model is not None else ("forward",)
    options = ExtractOptions(strides=(H_STRIDE,), directions=directions, schedule=schedule, end=end, short=short)
    engine = engine or WindowEngine(backbone)
    probabilities = []
    for video in videos:
        frames = video if isinstance(video, np.ndarray) else load_clip(video)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"decoded clips must be (N, H, W, 3) uint8 RGB, got {frames.shape} {frames.dtype}")
        try:
            features = clip_features(engine, frames, options)
        except DecodeError as err:
            name = "clip" if isinstance(video, np.ndarray) else str(video)
            raise DecodeError(f"{name}: {len(frames)} frames give no window under the '{schedule}' schedule "
                              f"({err})") from err
        logits = clip_logits(model, variables, features[(H_STRIDE, "forward")])
        if rv_model is not None:
            logits = fuse_logits(logits, clip_logits(rv_model, rv_variables, features[(H_STRIDE, "reverse")]), mu)
        probabilities.append(softmax(logits))
    return probabilities


def class_names_for(checkpoint: Path, num_classes: int, dataset: str | None = None,
                    classes: str | None = None) -> list[str]:
    """Class names: `classes` ('a,b,c' or a file), else `dataset` (a benchmark name), else the
    checkpoint's (its provenance, or its training run's dataset), else numbered."""
    from pthnet_jax.data.benchmarks import get_benchmark
    from pthnet_jax.video.record import parse_classes

    if classes:
        names = list(parse_classes(classes))
    elif dataset:
        names = list(get_benchmark(dataset).class_names)
    else:
        names = _names_from_checkpoint(Path(checkpoint))
    if (classes or dataset) and len(names) != num_classes:
        raise ValueError(f"{checkpoint} predicts {num_classes} classes but {classes or dataset} names {len(names)}")
    if not names or len(names) != num_classes:
        names = [f"class_{i}" for i in range(num_classes)]
    return names


def predict_files(videos, backbone: str | os.PathLike | Backbone, checkpoint: str | os.PathLike, *,
                  rv_checkpoint: str | os.PathLike | None = None, mu: float = 0.7, classes: str | None = None,
                  dataset: str | None = None, num_heads: int | None = None) -> list[dict[str, Any]]:
    """What `pthnet predict` prints, in Python: per clip `{"video", "probabilities": {class name: p},
    "label"}`. `backbone` is a file (`load_backbone`) or a `Backbone`; the class names come from the
    checkpoint's training data (or `classes` / `dataset`, as for the command)."""
    from pthnet_jax import load_model

    if isinstance(videos, (str, os.PathLike)):
        videos = [videos]
    model, variables = load_model(checkpoint)
    rv_model, rv_variables = load_model(rv_checkpoint) if rv_checkpoint else (None, None)
    if not isinstance(backbone, Backbone):
        backbone = load_backbone(backbone, num_heads=num_heads)
    names = class_names_for(Path(checkpoint), model.config.num_classes, dataset, classes)
    probabilities = predict_videos(videos, backbone, model, variables, rv_model=rv_model, rv_variables=rv_variables,
                                   mu=mu)
    return [{"video": str(v) if not isinstance(v, np.ndarray) else f"clip {i}",
             "probabilities": {n: float(p) for n, p in zip(names, probs)}, "label": names[int(np.argmax(probs))]}
            for i, (v, probs) in enumerate(zip(videos, probabilities))]


def _names_from_checkpoint(path: Path) -> list[str] | None:
    from pthnet_jax.data.benchmarks import get_benchmark
    from pthnet_jax.evaluation import checkpoint_class_names

    recorded = checkpoint_class_names(path)  # what a training run's checkpoint records
    if recorded:
        return list(recorded)

    candidates = [path, path / "best"] if path.is_dir() else []
    for directory in candidates:
        info_file = directory / "pthnet" / "metadata"
        if info_file.is_file():
            provenance = json.loads(info_file.read_text()).get("provenance", {})
            if provenance.get("class_names"):
                return list(provenance["class_names"])
            if provenance.get("benchmark"):
                try:
                    return list(get_benchmark(provenance["benchmark"]).class_names)
                except ValueError:
                    pass
    for run in ([path, path.parent] if path.is_dir() else []):  # a training workdir's resolved config
        config_file = run / "config.json"
        if config_file.is_file():
            data_dir = json.loads(config_file.read_text()).get("data", {}).get("data_dir")
            for metadata in sorted(Path(data_dir).rglob("metadata.json")) if data_dir and Path(data_dir).is_dir() else []:
                names = json.loads(metadata.read_text()).get("class_names")
                if names:
                    return list(names)
    return None


def format_table(videos: Sequence[str], probabilities: Sequence[np.ndarray], names: Sequence[str]) -> str:
    width = max(8, *(len(n) for n in names))
    video_width = min(48, max(5, *(len(v) for v in videos)))
    header = "video".ljust(video_width) + "  " + "label".ljust(width) + "  " + "  ".join(n[:width].rjust(width) for n in names)
    lines = [header, "-" * len(header)]
    for video, probs in zip(videos, probabilities):
        shown = video if len(video) <= video_width else "..." + video[-(video_width - 3):]
        lines.append(shown.ljust(video_width) + "  " + names[int(np.argmax(probs))].ljust(width) + "  " +
                     "  ".join(f"{p:.4f}".rjust(width) for p in probs))
    return "\n".join(lines)


def expand_videos(arguments: Sequence[Path]) -> list[Path]:
    """Video files and frame folders as given; other directories walked as `pthnet extract` walks them."""
    videos = []
    for argument in arguments:
        if not argument.exists():
            raise FileNotFoundError(f"{argument}: no such video file or directory")
        if argument.is_dir():
            found = find_clips(argument)
            if not found:
                raise ValueError(f"{argument}: no videos and no folders of frame images in it")
            videos += found
        else:
            videos.append(argument)
    return videos


def _load_models(args):
    from pthnet_jax import load_model
    from pthnet_jax.video.backbone import swapped_hint

    def checked(load, path, role):
        try:
            return load(path)
        except (ValueError, FileNotFoundError) as err:
            hint = swapped_hint(path, role)
            raise ValueError(hint) if hint else err

    model, variables = checked(load_model, args.checkpoint, "--checkpoint")
    rv = checked(load_model, args.rv_checkpoint, "--checkpoint") if args.rv_checkpoint else (None, None)
    backbone = checked(lambda p: load_backbone(p, args.dtype, num_heads=args.num_heads), args.backbone, "--backbone")
    return model, variables, rv, backbone


def _checkpoint_family(argv: list[str]) -> str | None:
    """The family --checkpoint names (a directory's info JSON; a file is loaded only without
    --backbone, which PTH-Net needs anyway); None when it cannot tell."""
    from pthnet_jax.checkpoint import read_info

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--checkpoint", type=Path)
    pre.add_argument("--backbone", type=Path)
    known, _ = pre.parse_known_args(argv)
    path = known.checkpoint
    try:
        if path is not None and path.is_dir():
            return read_info(path if (path / "pthnet").exists() or not (path / "best").exists() else path / "best")["family"]
        if path is not None and path.is_file() and known.backbone is None:
            from pthnet_jax import load_variables
            return load_variables(path)[0].family
    except (ValueError, OSError):
        return None
    return None


def main(argv: list[str]) -> int:
    if _checkpoint_family(argv) == "lstpnet":  # LSTPNet reads frames: no backbone, its own pipeline
        from pthnet_jax.families.lstpnet.predict import main as lstpnet_main
        return lstpnet_main(argv)
    parser = argparse.ArgumentParser(prog="pthnet predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="+", type=Path, help="video files, folders of frame images, or directories "
                        "of them (walked as by `pthnet extract`)")
    add_backbone_arguments(parser)
    parser.add_argument("--checkpoint", required=True, type=Path, help="forward PTH-Net (.pth, checkpoint dir, workdir)")
    parser.add_argument("--rv-checkpoint", type=Path, help="backward PTH-Net, fused with the forward one")
    parser.add_argument("--mu", type=float, default=0.7, help="weight of the forward logits in the fusion")
    parser.add_argument("--dataset", help="benchmark whose class names to print (when the checkpoint does not say)")
    parser.add_argument("--classes", help="class names to print ('a,b,c' or a file), when the checkpoint does not say")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--output", type=Path, help="write the predictions to this JSON file")
    parser.add_argument("--no-progress", action="store_true")
    add_window_arguments(parser)
    args = parser.parse_args(argv)
    from pthnet_jax.reporting import enable_compilation_cache
    from pthnet_jax.video.extract import _cache_note, _progress

    try:
        videos = expand_videos(args.videos)
        enable_compilation_cache()
        model, variables, (rv_model, rv_variables), backbone = _load_models(args)
        names = class_names_for(args.checkpoint, model.config.num_classes, args.dataset, args.classes)
        engine = WindowEngine(backbone, batch_per_device=None)
    except (FileNotFoundError, ValueError) as err:
        print(f"pthnet predict: {err}", file=sys.stderr)
        return 2
    if not args.no_progress:
        print(f"predict: the first clip compiles the backbone and PTH-Net (first run of these shapes only; "
              f"{_cache_note()})", file=sys.stderr, flush=True)
    rows, shown, failures = [], [], []
    bar = _progress(len(videos), 0, not args.no_progress, desc="predict")
    for video in videos:
        try:
            probs = predict_videos([video], backbone, model, variables, rv_model=rv_model, rv_variables=rv_variables,
                                   mu=args.mu, schedule=args.schedule, end=args.end, short=args.short, engine=engine)[0]
        except DecodeError as err:
            failures.append(str(err))
            bar.write(f"pthnet predict: {err}", file=sys.stderr)
            continue
        finally:
            bar.update(1)
        shown.append((str(video), probs))
        rows.append({"video": str(video), "probabilities": {n: float(p) for n, p in zip(names, probs)},
                     "label": names[int(np.argmax(probs))]})
    bar.close()
    if shown:
        print(format_table([v for v, _ in shown], [p for _, p in shown], names))
    if args.output:
        atomic_write_json(args.output, {"predictions": rows, "failed": failures})
        print(f"predictions written to {args.output}")
    if failures:
        print(f"pthnet predict: {len(failures)} of {len(videos)} clip(s) could not be read (named above)", file=sys.stderr)
    return 2 if failures else 0
