"""`pthnet predict CLIP... --checkpoint LSTPNET`: the expression in each clip, read by LSTPNet.

`pthnet predict` comes here when the checkpoint's family is lstpnet (no `--backbone`: LSTPNet reads
frames itself). Per clip (a video file or a folder of frame images; other directories are walked for
both): the frames in time order (a folder's image files sorted by name, as `pthnet import-clips` reads
them), the original's test sampling (8 segments x 2 consecutive frames at the segment middles),
Pillow's bilinear resize to the checkpoint's frame size, the model in evaluation mode (running
BatchNorm statistics), softmax. The class names are the checkpoint's own (a training run records its
dataset's; LSTPNet's DFEW and FERv39k orders differ), else `--classes` / `--dataset`, else numbered.
`--output FILE.json` writes `{"predictions": [{"video", "probabilities": {class: p}, "label"}, ...],
"failed": [...]}`. Exit status: 0 done, 2 bad arguments, or some clip could not be read.

In Python: `predict_clips(paths, checkpoint)` -> the same dicts.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pthnet_jax.families.lstpnet.clips import ClipListError, clip_frames, eval_indices

FRAME_PATTERN = "image"  # a folder's frames: every image file, sorted by name (code point)


def clip_input(path: str | os.PathLike, size: int) -> np.ndarray:
    """(16, size, size, 3) uint8: a clip's test-sampled, resized frames (ClipListError if unreadable)."""
    from pthnet_jax.families.lstpnet.frames import read_clip

    frames, _, _ = read_clip(Path(path), FRAME_PATTERN)
    return clip_frames(frames, eval_indices(len(frames)), size=size, where=str(path))


def class_names(checkpoint: str | os.PathLike, num_classes: int, dataset: str | None = None,
                classes: str | None = None) -> list[str]:
    """`classes` ('a,b,c'), else the checkpoint's recorded names, else `dataset`'s LSTPNet order, else numbered."""
    from pthnet_jax.evaluation import checkpoint_class_names
    from pthnet_jax.families.lstpnet.clips import class_names_for

    if classes:
        names = list(class_names_for("custom", classes))
    else:
        names = checkpoint_class_names(checkpoint) or (list(class_names_for(dataset)) if dataset else None)
    if names and len(names) != num_classes:
        raise ValueError(f"{checkpoint} predicts {num_classes} classes but {len(names)} names were given/recorded")
    return names or [f"class_{i}" for i in range(num_classes)]


class Predictor:
    """An LSTPNet checkpoint ready to predict: `probabilities(frames (16, S, S, 3) uint8)`."""

    def __init__(self, checkpoint: str | os.PathLike):
        import jax

        from pthnet_jax import load_variables

        task, config, variables = load_variables(checkpoint)
        if task.family != "lstpnet":
            raise ValueError(f"{checkpoint}: a {task.display_name} checkpoint, not an LSTPNet one")
        self.config, self.variables = config, variables
        self.size = int(getattr(config, "image_size", 224))
        model = task.model(config)
        self._logits = jax.jit(lambda v, frames: task.predict(model, v, {"frames": frames}))

    def probabilities(self, frames: np.ndarray) -> np.ndarray:
        from pthnet_jax.inference import softmax

        logits = np.asarray(self._logits(self.variables, frames[None]), np.float64)[0]
        return softmax(logits)


def predict_clips(paths: str | os.PathLike | Sequence[str | os.PathLike], checkpoint: str | os.PathLike, *,
                  classes: str | None = None, dataset: str | None = None) -> list[dict[str, Any]]:
    """Per clip `{"video", "probabilities": {class name: p}, "label"}` (what `pthnet predict` prints)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    predictor = Predictor(checkpoint)
    names = class_names(checkpoint, predictor.config.num_classes, dataset, classes)
    return [_row(str(p), predictor.probabilities(clip_input(p, predictor.size)), names) for p in paths]


def _row(video: str, probs: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    return {"video": video, "probabilities": {n: float(p) for n, p in zip(names, probs)},
            "label": names[int(np.argmax(probs))]}


def expand_clips(arguments: Sequence[Path]) -> list[Path]:
    """Video files and frame folders as given; other directories walked for both."""
    from pthnet_jax.video.decode import find_clips, is_frame_folder

    clips: list[Path] = []
    for argument in arguments:
        if not argument.exists():
            raise FileNotFoundError(f"{argument}: no such video file or directory")
        if argument.is_dir() and not is_frame_folder(argument):
            found = find_clips(argument)
            if not found:
                raise ValueError(f"{argument}: no videos and no folders of frame images in it")
            clips += found
        else:
            clips.append(argument)
    return clips


def format_table(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    width = max(8, *(len(n) for n in names))
    video_width = min(48, max(5, *(len(r["video"]) for r in rows)))
    header = "video".ljust(video_width) + "  " + "label".ljust(width) + "  " + "  ".join(n[:width].rjust(width) for n in names)
    lines = [header, "-" * len(header)]
    for row in rows:
        video = row["video"] if len(row["video"]) <= video_width else "..." + row["video"][-(video_width - 3):]
        lines.append(video.ljust(video_width) + "  " + row["label"].ljust(width) + "  " +
                     "  ".join(f"{row['probabilities'][n]:.4f}".rjust(width) for n in names))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pthnet predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="+", type=Path, help="video files, folders of frame images, or directories of them")
    parser.add_argument("--checkpoint", required=True, type=Path, help="LSTPNet checkpoint dir or training workdir")
    parser.add_argument("--backbone", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help="benchmark whose LSTPNet class order to print (when the checkpoint does not say)")
    parser.add_argument("--classes", help="class names to print ('a,b,c'), when the checkpoint does not say")
    parser.add_argument("--output", type=Path, help="write the predictions to this JSON file")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from tqdm.auto import tqdm

    from pthnet_jax.fsutil import atomic_write_json

    if args.backbone is not None:
        print(f"pthnet predict: {args.checkpoint} is an LSTPNet checkpoint: LSTPNet reads the frames "
              "themselves, not backbone features; drop --backbone", file=sys.stderr)
        return 2
    try:
        clips = expand_clips(args.videos)
        predictor = Predictor(args.checkpoint)
        names = class_names(args.checkpoint, predictor.config.num_classes, args.dataset, args.classes)
    except (FileNotFoundError, ValueError) as err:
        print(f"pthnet predict: {err}", file=sys.stderr)
        return 2
    rows, failures = [], []
    bar = tqdm(total=len(clips), unit="clip", desc="predict", disable=args.no_progress, dynamic_ncols=True)
    for clip in clips:
        try:
            rows.append(_row(str(clip), predictor.probabilities(clip_input(clip, predictor.size)), names))
        except ClipListError as err:
            failures.append(str(err))
            bar.write(f"pthnet predict: {err}", file=sys.stderr)
        finally:
            bar.update(1)
    bar.close()
    if rows:
        print(format_table(rows, names))
    if args.output:
        atomic_write_json(args.output, {"predictions": rows, "failed": failures})
        print(f"predictions written to {args.output}")
    if failures:
        print(f"pthnet predict: {len(failures)} of {len(clips)} clip(s) could not be read (named above)", file=sys.stderr)
    return 2 if failures else 0
