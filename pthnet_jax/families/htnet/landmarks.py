"""Optional extra: the landmark table computed as the original does (reference §3.2 step 1).

Per sample: the apex JPEG (`datasets/combined_datasets_whole/<imagename>`) read in BGR order, shrunk
to 28x28 by area averaging, given to facenet-pytorch's MTCNN (default thresholds and minimum face size)
as if it were RGB; the five landmarks of the first (largest) face, or the fallback flag when none is
found. Needs `pip install "pthnet-jax[htnet-landmarks]"` (facenet-pytorch, which brings PyTorch); the
core package never imports it. Not tested in this project's suite (the detector is a PyTorch model
and the frames are face photographs that must not leave the user's machine).

The 224 -> 28 shrink is an exact 8x8 block mean rounded half to even, which is what OpenCV's area
interpolation computes for an integer factor on uint8; JPEG decoding is Pillow's (libjpeg-turbo),
OpenCV's may differ in the last bit on some builds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pthnet_jax.families.htnet.flow import (APEX_DIR, CSV_NAME, HTNetDataError, LandmarkTable, read_bgr,
                                            read_samples, write_landmarks_csv)


def area_shrink(image: np.ndarray, size: int = 28) -> np.ndarray:
    """(H, W, C) uint8 -> (size, size, C) uint8 by block means; H and W must be multiples of `size`."""
    height, width, chans = image.shape
    if height % size or width % size:
        raise HTNetDataError(f"apex frame of {width}x{height} is not a multiple of {size}")
    blocks = image.reshape(size, height // size, size, width // size, chans).astype(np.float64)
    return np.clip(np.round(blocks.mean(axis=(1, 3))), 0, 255).astype(np.uint8)


def _detector():
    try:
        from facenet_pytorch import MTCNN
    except ImportError as err:
        raise ImportError("computing landmarks needs facenet-pytorch: pip install 'pthnet-jax[htnet-landmarks]' "
                          "(or pass a ready landmark table with --landmarks)") from err
    return MTCNN()


def compute_table(repo: str | Path, out: str | Path) -> LandmarkTable:
    """Detect the landmarks of every sample of the checkout and write them to OUT (CSV)."""
    repo = Path(repo)
    detector = _detector()
    table = LandmarkTable({}, {})
    for sample in read_samples(repo / CSV_NAME):
        small = area_shrink(read_bgr(repo / APEX_DIR / sample.apex))
        _, _, points = detector.detect(small, landmarks=True)  # BGR given as RGB, as the original does
        found = points is not None and len(points) > 0
        table.points[sample.name] = np.asarray(points[0], np.float64) if found else np.zeros((5, 2))
        table.fallback[sample.name] = not found
    write_landmarks_csv(out, table)
    failed = sum(table.fallback.values())
    print(f"landmarks of {len(table.points)} samples -> {out} ({failed} without a face: fallback set)")
    return table
