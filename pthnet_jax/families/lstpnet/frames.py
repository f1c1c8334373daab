"""A clip's frames as encoded images, read with bounds: a folder of frame files or a video file.

Frame folders keep each file's original bytes (the JPEGs DFEW and FERv39k ship decode to exactly the
pixels the original loader saw). A video is decoded with PyAV and each frame stored as PNG, which is
lossless: the stored frame decodes to the very RGB pixels FFmpeg produced (re-encoding as JPEG would
change them). Nothing is read without a size check first: the bytes of a file, the pixels of an
image (before decoding), the frame count of a clip.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

from pthnet_jax.families.lstpnet.clips import MAX_FRAME_PIXELS, ClipListError, frame_names, open_frame
from pthnet_jax.video.decode import VIDEO_EXTENSIONS

MAX_FRAME_BYTES = 32 << 20  # one frame file
MAX_CLIP_FRAMES = 20_000  # frames of one clip (DFEW's longest clips have a few thousand)
MAX_CLIP_BYTES = 1 << 30  # encoded bytes of one clip (one array_record record)
MAX_VIDEO_BYTES = 4 << 30


def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def _read_bounded(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise ClipListError(f"{path}: {size} bytes, more than the {limit} allowed for one frame")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise ClipListError(f"{path}: cannot read the frame file ({err.strerror or err})") from err
    if len(data) > limit:
        raise ClipListError(f"{path}: more than the {limit} bytes allowed for one frame")
    if not data:
        raise ClipListError(f"{path}: empty frame file")
    return data


def folder_frames(folder: Path, pattern: str, *, max_frames: int = MAX_CLIP_FRAMES,
                  max_frame_bytes: int = MAX_FRAME_BYTES, max_clip_bytes: int = MAX_CLIP_BYTES
                  ) -> tuple[list[bytes], list[str]]:
    """(encoded bytes, file names) of the folder's frames in time order (see clips.frame_names)."""
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if e.is_file()]
    except OSError as err:
        raise ClipListError(f"{folder}: cannot list the frame folder ({err.strerror or err})") from err
    names = frame_names(names, pattern)
    if not names:
        wanted = {"jpg": "*.jpg files", "all": "files", "image": "image files"}[pattern]
        raise ClipListError(f"{folder}: no frames ({wanted}) in the folder")
    if len(names) > max_frames:
        raise ClipListError(f"{folder}: {len(names)} frames, more than the {max_frames} allowed")
    frames, total = [], 0
    for name in names:
        frames.append(_read_bounded(folder / name, max_frame_bytes))
        total += len(frames[-1])
        if total > max_clip_bytes:
            raise ClipListError(f"{folder}: frames exceed {max_clip_bytes} bytes in all")
    return frames, [str(folder / name) for name in names]


def video_frames(path: Path, *, max_frames: int = MAX_CLIP_FRAMES, max_pixels: int = MAX_FRAME_PIXELS,
                 max_clip_bytes: int = MAX_CLIP_BYTES, max_video_bytes: int = MAX_VIDEO_BYTES) -> list[bytes]:
    """Every frame of the first video stream in decoding order, each as lossless PNG bytes."""
    import av
    from PIL import Image

    try:
        size = path.stat().st_size
    except OSError as err:
        raise ClipListError(f"{path}: cannot read the video ({err.strerror or err})") from err
    if size > max_video_bytes:
        raise ClipListError(f"{path}: {size} bytes, more than the {max_video_bytes} allowed for a video")
    frames: list[bytes] = []
    total = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipListError(f"{path}: the file has no video stream")
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                if frame.width * frame.height > max_pixels:
                    raise ClipListError(f"{path}: frame size {frame.width}x{frame.height} is more than "
                                        f"{max_pixels} pixels")
                if len(frames) >= max_frames:
                    raise ClipListError(f"{path}: more than the {max_frames} frames allowed for a clip")
                buffer = io.BytesIO()
                Image.fromarray(frame.to_ndarray(format="rgb24")).save(buffer, format="PNG", compress_level=1)
                frames.append(buffer.getvalue())
                total += len(frames[-1])
                if total > max_clip_bytes:
                    raise ClipListError(f"{path}: frames exceed {max_clip_bytes} bytes in all")
    except ClipListError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, RuntimeError) as err:
        raise ClipListError(f"{path}: cannot decode the video ({type(err).__name__}: {err})") from err
    if not frames:
        raise ClipListError(f"{path}: the video has no decodable frames")
    return frames


def read_clip(path: Path, pattern: str, **limits) -> tuple[list[bytes], list[str], str]:
    """(encoded frames, a name per frame for messages, "folder" or "video") of a listed clip path."""
    if path.is_dir():
        return (*folder_frames(path, pattern, **limits), "folder")
    if is_video(path):
        video_limits = {k: v for k, v in limits.items() if k in ("max_frames", "max_clip_bytes")}
        frames = video_frames(path, **video_limits)
        return frames, [f"{path} frame {i}" for i in range(len(frames))], "video"
    if path.exists():
        raise ClipListError(f"{path}: neither a frame folder nor a video file "
                            f"({', '.join(sorted(VIDEO_EXTENSIONS))})")
    raise ClipListError(f"{path}: no such frame folder or video file")


def check_frames(frames: list[bytes], names: list[str], max_pixels: int = MAX_FRAME_PIXELS) -> None:
    """Decode every frame fully (a truncated or corrupt image fails here, at import, not in training)."""
    for data, where in zip(frames, names):
        image = open_frame(data, where, max_pixels)
        try:
            image.convert("RGB")  # what the reader does: decodes every pixel
        except (OSError, ValueError, SyntaxError) as err:
            raise ClipListError(f"{where}: cannot decode the image ({err})") from err
        finally:
            image.close()
