"""HTNet inputs: the released flow images, the landmark table and the 28x28 mosaic (reference §3).

A checkout of the original repository holds `combined_3_class2_for_optical_flow.csv` (database,
subject, clip, label, apex file) and `datasets/STSNet_whole_norm_u_v_os/<subject>_<clip> .png` (28x28,
3 x 8 bit; note the space before `.png`). Images are read as OpenCV's `imread` does (channels blue,
green, red): Pillow, then the channels reversed. Nothing here needs OpenCV or PyTorch.

Input assembly, given five landmarks (x, y) per sample (left eye, right eye, nose, left and right mouth
corner, in 28x28 pixel units): each coordinate is clamped to [7, 21] and truncated to an integer;
landmark k with integers (a, b) gives the 14x14 crop whose ROWS are a-7..a+6 and COLUMNS b-7..b+6
(the x coordinate selects rows: the original's apparent transposition, which its trained models
depend on, so it is reproduced); the mosaic is [[crop 0, crop 1], [crop 3, crop 4]] (the nose crop is
unused); the model takes it as float32, unscaled. A sample without landmarks uses the original's
fixed fallback set `FALLBACK`.

The landmark table is an explicit artefact (CSV or NPZ), because the detector the original uses
(facenet-pytorch MTCNN on a 28x28 shrink of the apex frame) fails on many frames and its results
depend on library versions; `families/htnet/landmarks.py` computes it (optional extra).
"""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

CSV_NAME = "combined_3_class2_for_optical_flow.csv"
FLOW_DIR = "datasets/STSNet_whole_norm_u_v_os"
APEX_DIR = "datasets/combined_datasets_whole"
CLASS_NAMES = ("negative", "positive", "surprise")
DATABASES = ("casme2", "smic", "samm")
CSV_COLUMNS = ("dataset", "sub", "filename_o", "label")
FALLBACK = np.array([(9.528073, 11.062551), (21.396168, 10.919773), (15.380184, 17.380562),
                     (10.255435, 22.121233), (20.583706, 22.25584)], np.float64)
LOW, HIGH, HALF = 7, 21, 7
MOSAIC_LANDMARKS = ((0, 1), (3, 4))  # (top-left, top-right), (bottom-left, bottom-right)
MAX_SAMPLES = 100_000


class HTNetDataError(ValueError):
    """A file of the HTNet data (CSV, PNG, landmark table) that does not have the expected content."""


@dataclasses.dataclass(frozen=True)
class Sample:
    name: str  # <subject>_<clip>: the PNG's stem without the trailing space, the landmark table's key
    subject: str
    database: str
    label: int
    apex: str  # the apex JPEG's file name (only the landmark extra reads it)
    line: int  # line in the CSV


def read_samples(csv_path: str | Path) -> list[Sample]:
    """The CSV's rows, in file order, each checked (database, label 0..2, non-empty subject/clip)."""
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise HTNetDataError(f"{csv_path}: cannot read the sample list ({err})") from err
    if not rows or any(col not in rows[0] for col in CSV_COLUMNS):
        raise HTNetDataError(f"{csv_path}:1: expected a header with the columns {list(CSV_COLUMNS)}, "
                             f"found {rows[0][:8] if rows else 'an empty file'}")
    if len(rows) > MAX_SAMPLES + 1:
        raise HTNetDataError(f"{csv_path}: more than {MAX_SAMPLES} samples")
    index = {col: rows[0].index(col) for col in rows[0]}
    samples, seen = [], set()
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            database, subject, clip = (row[index[c]].strip() for c in CSV_COLUMNS[:3])
            label = int(row[index["label"]])
        except (IndexError, ValueError):
            raise HTNetDataError(f"{csv_path}:{number}: expected {list(CSV_COLUMNS)} with an integer label, "
                                 f"found {row[:8]}") from None
        if database not in DATABASES or not 0 <= label < len(CLASS_NAMES) or not subject or not clip:
            raise HTNetDataError(f"{csv_path}:{number}: database must be one of {DATABASES}, label 0..2, subject "
                                 f"and clip non-empty; found {row[:5]}")
        apex = row[index["imagename"]].strip() if "imagename" in index and len(row) > index["imagename"] else ""
        name = f"{subject}_{clip}"
        if name in seen:
            raise HTNetDataError(f"{csv_path}:{number}: sample {name!r} listed twice")
        seen.add(name)
        samples.append(Sample(name, subject, database, label, apex, number))
    if not samples:
        raise HTNetDataError(f"{csv_path}: no samples")
    return samples


def flow_path(repo: str | Path, sample: Sample) -> Path:
    return Path(repo) / FLOW_DIR / f"{sample.name} .png"


def read_bgr(path: str | Path) -> np.ndarray:
    """An 8-bit image as OpenCV's `imread(path)` gives it: (H, W, 3) uint8, channels blue, green, red."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.width * image.height > 4096 * 4096:
                raise HTNetDataError(f"{path}: image of {image.width}x{image.height} pixels is too large")
            if image.mode not in ("RGB", "RGBA", "L", "P", "LA"):
                raise HTNetDataError(f"{path}: unsupported image mode {image.mode} (expected 8-bit colour)")
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        if isinstance(err, HTNetDataError):
            raise
        raise HTNetDataError(f"{path}: cannot read the image ({err})") from err
    return np.ascontiguousarray(rgb[..., ::-1])


def integer_landmarks(points: np.ndarray) -> np.ndarray:
    """(5, 2) float (x, y) -> (5, 2) int32: clamped to [7, 21], then truncated."""
    points = np.asarray(points, np.float64)
    if points.shape != (5, 2) or not np.all(np.isfinite(points)):
        raise ValueError(f"expected five finite (x, y) landmarks, got shape {points.shape}")
    return np.trunc(np.clip(points, LOW, HIGH)).astype(np.int32)


def mosaic(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(H >= 28, W >= 28, 3) uint8 flow image + five landmarks -> (28, 28, 3) uint8 mosaic."""
    if image.ndim != 3 or image.shape[0] < 28 or image.shape[1] < 28:
        raise ValueError(f"expected a flow image of at least 28x28 pixels, got shape {image.shape}")
    ints = integer_landmarks(points)
    rows = []
    for pair in MOSAIC_LANDMARKS:
        crops = [image[ints[k, 0] - HALF:ints[k, 0] + HALF, ints[k, 1] - HALF:ints[k, 1] + HALF] for k in pair]
        rows.append(np.concatenate(crops, axis=1))
    return np.concatenate(rows, axis=0)


@dataclasses.dataclass
class LandmarkTable:
    points: dict[str, np.ndarray]  # sample name -> (5, 2) float64 (x, y)
    fallback: dict[str, bool]  # sample name -> whether the detector found no face

    def lookup(self, name: str) -> tuple[np.ndarray, bool]:
        """(points, used_fallback): the table's entry, or `FALLBACK` when it has none for `name`."""
        if name in self.points and not self.fallback.get(name, False):
            return self.points[name], False
        return FALLBACK, True


def read_landmarks(path: str | Path) -> LandmarkTable:
    """A CSV (`sample,x0,y0,...,x4,y4,fallback`; coordinates may be empty when fallback is 1) or an NPZ
    (`samples` (N,) str, `points` (N, 5, 2), `fallback` (N,) bool)."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        return _read_npz(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise HTNetDataError(f"{path}: cannot read the landmark table ({err})") from err
    header = [f"{axis}{k}" for k in range(5) for axis in "xy"]
    if not rows or rows[0][:12] != ["sample", *header, "fallback"]:
        raise HTNetDataError(f"{path}:1: expected the header sample,{','.join(header)},fallback")
    if len(rows) > MAX_SAMPLES + 1:
        raise HTNetDataError(f"{path}: more than {MAX_SAMPLES} rows")
    table = LandmarkTable({}, {})
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            name, fallback = row[0], row[11].strip() in ("1", "true", "True")
            values = [float(v) for v in row[1:11]] if not fallback or all(v.strip() for v in row[1:11]) else [0.0] * 10
            points = np.array(values, np.float64).reshape(5, 2)
            if not np.all(np.isfinite(points)):
                raise ValueError
        except (IndexError, ValueError):
            raise HTNetDataError(f"{path}:{number}: expected a sample name, ten numbers and 0/1, found {row[:12]}") from None
        if name in table.points:
            raise HTNetDataError(f"{path}:{number}: sample {name!r} listed twice")
        table.points[name], table.fallback[name] = points, fallback
    return table


def _read_npz(path: Path) -> LandmarkTable:
    try:
        with np.load(path, allow_pickle=False) as data:
            samples, points, fallback = data["samples"], data["points"], data["fallback"]
    except (OSError, KeyError, ValueError) as err:
        raise HTNetDataError(f"{path}: expected an .npz with 'samples', 'points' and 'fallback' ({err})") from err
    count = len(samples)
    if (samples.dtype.kind != "U" or points.shape != (count, 5, 2) or fallback.shape != (count,)
            or points.dtype.kind not in "iuf" or not np.all(np.isfinite(points))):
        raise HTNetDataError(f"{path}: expected samples (N,) str, points (N, 5, 2) finite numbers, fallback (N,); "
                             f"got {samples.dtype} {samples.shape}, {points.dtype} {points.shape}, {fallback.shape}")
    if len(set(samples.tolist())) != count:
        raise HTNetDataError(f"{path}: some sample names are listed twice")
    return LandmarkTable({str(s): p.astype(np.float64) for s, p in zip(samples, points)},
                         {str(s): bool(f) for s, f in zip(samples, fallback)})


def write_landmarks_csv(path: str | Path, table: LandmarkTable) -> None:
    from pthnet_jax.fsutil import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample", *[f"{axis}{k}" for k in range(5) for axis in "xy"], "fallback"])
        for name, points in table.points.items():
            writer.writerow([name, *[repr(float(v)) for v in points.reshape(-1)], int(table.fallback[name])])


__all__ = ["APEX_DIR", "CLASS_NAMES", "CSV_NAME", "DATABASES", "FALLBACK", "FLOW_DIR", "HTNetDataError",
           "LandmarkTable", "Sample", "flow_path", "integer_landmarks", "mosaic", "read_bgr", "read_landmarks",
           "read_samples", "write_landmarks_csv"]
