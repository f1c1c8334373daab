"""Clips in: every frame of a video file (PyAV) or a folder of frame images, in order, RGB uint8.

N is the number of frames actually decoded, never the container's metadata (videomae-reference §3.1).
Anything that cannot be read raises `DecodeError` with the file's name in the message.
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
import re
import threading
import time
from pathlib import Path

import numpy as np

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv",
                              ".wmv", ".3gp", ".ts", ".mts", ".ogv", ".vob"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class DecodeError(ValueError):
    """A clip that cannot be decoded (corrupt, no frames, unknown codec); the message names the file."""


def natural_key(name: str) -> list:
    """Sort key putting `frame_2` before `frame_10` (zero-padded names sort the same either way)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def frame_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                  key=lambda p: natural_key(p.name))


def is_frame_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir() if p.is_file())


def is_video_file(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def decode_video(path: str | os.PathLike) -> np.ndarray:
    """Every frame of the first video stream, in decoding order -> (N, H, W, 3) uint8 RGB.

    Frames whose size differs from the first frame's are converted to the first frame's size by
    FFmpeg's scaler (rare: streams that change resolution mid-way).
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"{path}: no such video file")
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeError(f"{path}: the file has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if frames and (frame.height, frame.width) != frames[0].shape[:2]:
                    height, width = frames[0].shape[:2]
                    frames.append(frame.to_ndarray(format="rgb24", width=width, height=height))
                else:
                    frames.append(frame.to_ndarray(format="rgb24"))
    except DecodeError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, RuntimeError) as err:
        raise DecodeError(f"{path}: cannot decode the video ({type(err).__name__}: {err})") from err
    if not frames:
        raise DecodeError(f"{path}: the video has zero decodable frames")
    return np.stack(frames)


def decode_frame_folder(folder: str | os.PathLike) -> np.ndarray:
    """The image files of a folder sorted by name (natural order) -> (N, H, W, 3) uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    files = frame_files(folder) if folder.is_dir() else []
    if not files:
        raise DecodeError(f"{folder}: no frame images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in the folder")
    frames = []
    for file in files:
        try:
            with Image.open(file) as image:
                frame = np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise DecodeError(f"{file}: cannot read the frame image ({err})") from err
        if frames and frame.shape != frames[0].shape:
            raise DecodeError(f"{file}: frame size {frame.shape[1]}x{frame.shape[0]} differs from the "
                              f"folder's first frame ({frames[0].shape[1]}x{frames[0].shape[0]})")
        frames.append(frame)
    return np.stack(frames)


def load_clip(path: str | os.PathLike) -> np.ndarray:
    """A video file or a folder of frame images -> (N, H, W, 3) uint8 RGB, N >= 1."""
    path = Path(path)
    if path.is_dir():
        return decode_frame_folder(path)
    return decode_video(path)


def find_clips(videos: str | os.PathLike) -> list[Path]:
    """The clips of a directory walked recursively (video files, and folders holding frame images),
    sorted, or those named one per line in a list file (a second column, a label, is ignored here).

    Paths in a list file are relative to the list file's folder unless absolute.
    """
    videos = Path(videos)
    if videos.is_file():
        if videos.suffix.lower() in VIDEO_EXTENSIONS:
            return [videos]
        clips = []
        for line in videos.read_text().splitlines():
            if line.strip():
                clip = Path(line.split()[0])
                clips.append(clip if clip.is_absolute() else videos.parent / clip)
        return clips
    if not videos.is_dir():
        raise FileNotFoundError(f"{videos}: no such directory or list file")
    clips = []
    for dirpath, dirnames, filenames in os.walk(videos):
        dirnames.sort()
        here = Path(dirpath)
        if any(Path(name).suffix.lower() in IMAGE_EXTENSIONS for name in filenames):
            clips.append(here)
        clips.extend(here / name for name in filenames if Path(name).suffix.lower() in VIDEO_EXTENSIONS)
    return sorted(clips, key=lambda p: natural_key(str(p)))


class BackgroundDecoder:
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
