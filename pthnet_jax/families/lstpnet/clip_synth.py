"""Synthetic clips whose class can be seen, written in the original layout (JPEG frame folders + lists).

Each class has its own colour and its own motion: a square of the class's colour moves across the
frame in a class-dependent direction, over a noisy grey background shared by all classes (a local
contrast, which per-batch normalisation keeps, rather than a global tint, which it removes). Frame counts vary (some clips are shorter than
16 frames, so the short-clip filter has something to drop). Layout under ROOT:
  ROOT/frames/<split>/<class>/<clip>/00001.jpg ...   (zero-padded names: sorted = time order)
  ROOT/train.txt, ROOT/test.txt                       (`frames/<split>/<class>/<clip> <count> <label>`)
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from pthnet_jax.families.lstpnet.clips import CLASS_ORDERS
from pthnet_jax.fsutil import staged_dir

# One colour per class (RGB), distinct enough to be told apart after JPEG and a resize.
_PALETTE = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60], [200, 60, 200],
                     [60, 200, 200], [140, 140, 140], [240, 150, 40], [120, 40, 200], [40, 120, 90]], np.float64)


def synth_frames(label: int, num_frames: int, rng: np.random.Generator, width: int = 40,
                 height: int = 32) -> np.ndarray:
    """(num_frames, height, width, 3) uint8 frames of one clip of class `label`."""
    colour = _PALETTE[label % len(_PALETTE)]
    angle = 2 * np.pi * label / max(len(_PALETTE), 1)
    direction = np.array([np.cos(angle), np.sin(angle)])
    start = rng.uniform(0.3, 0.7, size=2) * (width, height)
    side = max(4, min(width, height) * 2 // 5)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    grey = rng.uniform(90, 130)  # the same kind of background for every class
    for t in range(num_frames):
        base = np.full((height, width, 3), grey) + rng.normal(0, 10, size=(height, width, 3))
        cx, cy = start + direction * t * min(width, height) / max(num_frames, 1) * 0.8
        inside = (np.abs(xx - cx % width) < side / 2) & (np.abs(yy - cy % height) < side / 2)
        base[inside] = colour * rng.uniform(0.9, 1.1)  # a square of the class's colour, moving its way
        frames[t] = np.clip(base, 0, 255).astype(np.uint8)
    return frames


def _write_clip(folder: Path, frames: np.ndarray, quality: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames, 1):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        (folder / f"{index:05d}.jpg").write_bytes(buffer.getvalue())


def write_synth_clips(out: str | os.PathLike, *, clips: int = 70, test_clips: int | None = None,
                      benchmark: str = "DFEW", num_classes: int | None = None, min_frames: int = 10,
                      max_frames: int = 40, width: int = 40, height: int = 32, seed: int = 0,
                      quality: int = 90, crlf: bool = True) -> dict[str, Path]:
    """Write `clips` training and `test_clips` (default clips // 2) test clips under OUT (created
    atomically; it must not exist). Labels cycle over the classes. Returns split -> list file."""
    names = CLASS_ORDERS.get(benchmark, CLASS_ORDERS["DFEW"])
    num_classes = num_classes or len(names)
    if not 1 <= min_frames <= max_frames:
        raise ValueError(f"frame counts need 1 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
    sizes = {"train": clips, "test": clips // 2 if test_clips is None else test_clips}
    rng = np.random.default_rng(seed)
    out = Path(out).absolute()
    newline = "\r\n" if crlf else "\n"  # the shipped lists use CRLF
    with staged_dir(out, replace=False) as staging:
        for split, count in sizes.items():
            lines = []
            for index in range(count):
                label = index % num_classes
                num_frames = int(rng.integers(min_frames, max_frames + 1))
                class_name = names[label] if label < len(names) else f"class_{label}"
                relative = f"frames/{split}/{class_name}/{split}_{index:05d}"
                _write_clip(staging / relative, synth_frames(label, num_frames, rng, width, height), quality)
                lines.append(f"{relative} {num_frames} {label}")
            (staging / f"{split}.txt").write_text(newline.join(lines) + newline, newline="")
    return {split: out / f"{split}.txt" for split in sizes}


def write_synth_video(path: str | os.PathLike, label: int, num_frames: int, *, seed: int = 0,
                      width: int = 48, height: int = 32, fps: int = 10) -> np.ndarray:
    """A synthetic clip as a lossless video file (FFV1 in .mkv); returns the frames written."""
    import av

    frames = synth_frames(label, num_frames, np.random.default_rng(seed), width, height)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "bgr0"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return frames
