"""LSTPNet's clip lists, class orders, frame order, frame sampling and resize (lstpnet-reference §7).

Everything here is host-side numpy/Pillow and keyed only by (seed, epoch, clip index), so a clip gets
the same frames, flip and pixels whatever the batch size, worker count or host count.

- List files: one clip per line, `<frame folder or video> <frame count> <label>` (CRLF tolerated).
- Frame order: the sorted file names of the folder (plain code-point order, as Python's `sorted`
  of the original's `glob` result: zero-padded names are required for time order).
- Test sampling: 8 segments x 2 consecutive frames at the segment middles (`eval_indices`).
- Train sampling: a random start in each of 8 equal segments, then 2 consecutive frames
  (`train_indices`), plus one horizontal-flip decision per clip with p = 0.5.
- Resize: Pillow's bilinear filter to size x size (aspect ratio not kept, no crop), uint8 out.
"""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Sequence

import numpy as np

NUM_SEGMENTS = 8
DURATION = 2
IMAGE_SIZE = 224
MIN_FRAMES = 16  # the original drops clips with fewer listed frames (the short-clip filter)

# LSTPNet's label orders, as its shipped lists number the classes. They differ from PTH-Net's for
# FERv39k (pthnet_jax.data.benchmarks holds PTH-Net's: its FERv39k lists use DFEW's order), so they
# live here, per family; a checkpoint stores its class names (the dataset's metadata carries them).
CLASS_ORDERS: dict[str, tuple[str, ...]] = {
    "DFEW": ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear"),
    "FERv39k": ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Angry"),
    "AFEW": ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Angry"),
}
DFEW_FOLDS = 5
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Which files of a frame folder are frames: the DFEW and FERv39k loaders take `*.jpg`, the AFEW
# loader every (non-hidden) file; a custom dataset any image file.
FRAME_PATTERNS = {"DFEW": "jpg", "FERv39k": "jpg", "AFEW": "all", "custom": "image"}


class ClipListError(ValueError):
    """A list file or clip that breaks the format; the message names the file and line."""


def benchmark_name(name: str) -> str:
    """The canonical spelling of DFEW, FERv39k, AFEW or custom (case-insensitive)."""
    for known in (*CLASS_ORDERS, "custom"):
        if known.lower() == str(name).lower():
            return known
    raise ValueError(f"unknown benchmark {name!r}; choose one of {[*CLASS_ORDERS, 'custom']}")


def class_names_for(benchmark: str, classes: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """The benchmark's class order, or the user's names (`"a,b,c"` or a sequence), which win."""
    if classes:
        names = tuple(c.strip() for c in (classes.split(",") if isinstance(classes, str) else classes))
        if any(not n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"class names must be non-empty and distinct, got {list(names)}")
        return names
    bench = benchmark_name(benchmark)
    if bench == "custom":
        raise ValueError("a custom dataset needs its class names (--classes a,b,c)")
    return CLASS_ORDERS[bench]


@dataclasses.dataclass(frozen=True)
class ClipEntry:
    list_index: int  # position among the list's clips (blank lines not counted)
    line: int  # 1-based line in the list file
    path: str  # as written in the list: the clip id
    num_frames: int  # as listed; 0 = unknown (video files only: the decoded count is used)
    label: int


def read_clip_list(path: str | Path, num_classes: int) -> list[ClipEntry]:
    """Parse a list file; any malformed line raises ClipListError naming `file:line`."""
    path = Path(path)
    if not path.is_file():
        raise ClipListError(f"{path}: list file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ClipListError(f"{path}: not a UTF-8 text file ({err})") from err
    entries: list[ClipEntry] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        where = f"{path}:{number}"
        if len(parts) != 3:
            raise ClipListError(f"{where}: expected '<frame folder> <frame count> <label>', got {line!r}")
        try:
            count, label = int(parts[1]), int(parts[2])
        except ValueError:
            raise ClipListError(f"{where}: frame count and label must be integers, got {line!r}") from None
        if count < 0:
            raise ClipListError(f"{where}: frame count must be >= 1 (or 0 for a video of unknown "
                                f"length), got {count}")
        if not 0 <= label < num_classes:
            raise ClipListError(f"{where}: label {label} is outside 0..{num_classes - 1}")
        entries.append(ClipEntry(len(entries), number, parts[0], count, label))
    if not entries:
        raise ClipListError(f"{path}: the list has no clips")
    return entries


def resolve_clip_path(root: Path, listed: str, strip_prefix: str | None = None) -> Path:
    """Where a listed clip is: ROOT/<listed>, after removing `strip_prefix` (the original's lists
    hold absolute paths of the authors' machines, e.g. `D:/DL_Study/Expression_Data/`)."""
    text = listed
    if strip_prefix and text.startswith(strip_prefix):
        text = text[len(strip_prefix):].lstrip("/\\")
    pure = PureWindowsPath(text) if ("\\" in text or (len(text) > 1 and text[1] == ":")) else PurePosixPath(text)
    if pure.is_absolute() or pure.drive:
        raise ClipListError(f"clip path {listed!r} is absolute; pass --strip-prefix with the part "
                            "to remove so that the rest is relative to --root")
    if ".." in pure.parts:
        raise ClipListError(f"clip path {listed!r} leaves the root ('..')")
    return Path(root, *pure.parts)


def is_frame_file(name: str, pattern: str) -> bool:
    if name.startswith("."):
        return False  # glob('*') skips hidden files too
    if pattern == "jpg":
        return name.endswith(".jpg")  # glob('*.jpg') is case-sensitive on the original's Linux
    if pattern == "all":
        return True
    if pattern == "image":
        return name.lower().endswith(IMAGE_SUFFIXES)
    raise ValueError(f"frame pattern must be 'jpg', 'all' or 'image', got {pattern!r}")


def frame_names(names: Sequence[str], pattern: str) -> list[str]:
    """The frames of a folder in time order: the matching names sorted by code point."""
    return sorted(n for n in names if is_frame_file(n, pattern))


# ---- sampling --------------------------------------------------------------------------------------

def _expand(starts: Sequence[int], num_frames: int, duration: int) -> np.ndarray:
    """`duration` consecutive frames from each start, the last frame repeated at the clip's end."""
    out = []
    for start in starts:
        p = int(start)
        for _ in range(duration):
            out.append(p)
            if p < num_frames - 1:
                p += 1
    return np.asarray(out, np.int64)


def eval_starts(num_frames: int, segments: int = NUM_SEGMENTS, duration: int = DURATION) -> list[int]:
    """Segment starts at the middles: int(tick / 2 + tick * i), tick = (N - duration + 1) / segments in
    double precision; all zeros when N <= segments + duration - 1."""
    if num_frames > segments + duration - 1:
        tick = (num_frames - duration + 1) / float(segments)
        return [int(tick / 2.0 + tick * i) for i in range(segments)]
    return [0] * segments


def eval_indices(num_frames: int, segments: int = NUM_SEGMENTS, duration: int = DURATION) -> np.ndarray:
    """The frames of a clip in evaluation: (segments * duration,) indices in segment order."""
    return _expand(eval_starts(num_frames, segments, duration), num_frames, duration)


def train_indices(num_frames: int, rng: np.random.Generator, segments: int = NUM_SEGMENTS,
                  duration: int = DURATION) -> np.ndarray:
    """The frames of a clip in training: a = (N - duration + 1) // segments; s_i = i a + U[0, a) when
    a > 0, else sorted U[0, N - duration + 1) draws when N > segments, else zeros."""
    average = (num_frames - duration + 1) // segments
    if average > 0:
        starts = np.arange(segments) * average + rng.integers(0, average, size=segments)
    elif num_frames > segments:
        starts = np.sort(rng.integers(0, num_frames - duration + 1, size=segments))
    else:
        starts = np.zeros(segments, np.int64)
    return _expand(starts, num_frames, duration)


def clip_rng(seed: int, epoch: int, clip: int) -> np.random.Generator:
    """The random stream of one clip in one epoch: frames first, then the flip."""
    return np.random.default_rng([int(seed), int(epoch), int(clip), 0x15794E7])


def sample_clip(num_frames: int, *, seed: int, epoch: int, clip: int, train: bool, flip: bool = True,
                segments: int = NUM_SEGMENTS, duration: int = DURATION) -> tuple[np.ndarray, bool]:
    """(frame indices, flip decision) of clip `clip`: random in training, fixed in evaluation."""
    if not train:
        return eval_indices(num_frames, segments, duration), False
    rng = clip_rng(seed, epoch, clip)
    indices = train_indices(num_frames, rng, segments, duration)
    return indices, bool(flip and rng.random() < 0.5)


# ---- pixels ----------------------------------------------------------------------------------------

MAX_FRAME_PIXELS = 64 * 1024 * 1024  # more than any face crop or 8K frame; refuses decompression bombs


def open_frame(data: bytes, where: str = "frame", max_pixels: int = MAX_FRAME_PIXELS):
    """A Pillow image of encoded bytes, its size checked before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise ClipListError(f"{where}: not a readable image ({err})") from err
    width, height = image.size
    if width < 1 or height < 1 or width * height > max_pixels:
        image.close()
        raise ClipListError(f"{where}: image size {width}x{height} is outside 1..{max_pixels} pixels")
    return image


def resize_frame(data: bytes, size: int = IMAGE_SIZE, where: str = "frame") -> np.ndarray:
    """Encoded bytes -> RGB -> Pillow bilinear to size x size -> (size, size, 3) uint8."""
    from PIL import Image

    image = open_frame(data, where)
    try:
        rgb = image.convert("RGB")
        resized = rgb.resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, ValueError, SyntaxError) as err:  # truncated or corrupt pixel data
        raise ClipListError(f"{where}: cannot decode the image ({err})") from err
    finally:
        image.close()
    return np.asarray(resized, np.uint8)


def clip_frames(frames: Sequence[bytes], indices: Sequence[int], *, size: int = IMAGE_SIZE,
                flip: bool = False, where: str = "clip") -> np.ndarray:
    """(len(indices), size, size, 3) uint8: each sampled frame decoded and resized once."""
    cache: dict[int, np.ndarray] = {}
    out = np.empty((len(indices), size, size, 3), np.uint8)
    for row, index in enumerate(indices):
        index = int(index)
        if not 0 <= index < len(frames):
            raise ClipListError(f"{where}: frame {index} requested, the clip has {len(frames)}")
        if index not in cache:
            cache[index] = resize_frame(frames[index], size, f"{where} frame {index}")
        out[row] = cache[index]
    if flip:  # after the resize, as the original: exactly Pillow's FLIP_LEFT_RIGHT
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)
