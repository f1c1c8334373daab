"""Test helpers for the video path: clips written with PyAV, an independent decode, the window rule
written again from the spec, and a toy backbone in both JAX and PyTorch."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_video(path: Path, frames: np.ndarray, codec: str = "mpeg4", fps: int = 25) -> Path:
    """(N, H, W, 3) uint8 -> a video file (H and W even)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if codec == "mpeg4":
            stream.options = {"qscale": "2"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def moving_frames(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth content that changes frame to frame (codecs keep it close to the input)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(0.2, 0.8, 3)
    frames = []
    for t in range(count):
        cx, cy = (0.2 + 0.6 * t / max(count - 1, 1)) * width, 0.5 * height
        blob = np.exp(-(((x - cx) / (0.15 * width)) ** 2 + ((y - cy) / (0.2 * height)) ** 2))
        rgb = np.stack([base[c] * (1 - blob) + blob * ((c + t) % 3) / 2 for c in range(3)], -1)
        frames.append(np.clip(rgb * 255, 0, 255).astype(np.uint8))
    return np.stack(frames)


def decode_independently(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def reference_starts(n: int, stride: int) -> list[int]:
    """videomae-reference §3.2, cover_end with the end-aligned extra window."""
    if n <= 16:
        return [0]
    starts = list(range(0, n - 15, stride))
    if (n - 16) % stride:
        starts.append(n - 16)
    assert len(starts) == -(-(n - 16) // stride) + 1
    return starts


def reference_window(frames: np.ndarray, start: int):
    """(1, 3, 16, 224, 224) float32 torch tensor of one window, resized with PyTorch."""
    import torch
    from torch.nn import functional as F

    index = [min(start + i, len(frames) - 1) for i in range(16)]
    clip = torch.from_numpy(frames[index]).permute(0, 3, 1, 2).float() / 255.0  # (16, 3, H, W)
    clip = F.interpolate(clip, size=(224, 224), mode="bilinear", align_corners=False, antialias=False)
    return clip.permute(1, 0, 2, 3)[None]


TOY_DIM = 24


def toy_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(0, 0.05, (2 * 14 * 14 * 3, TOY_DIM)).astype(np.float32),
            "b": rng.normal(0, 0.1, TOY_DIM).astype(np.float32),
            "pos": rng.normal(0, 0.1, (2048, TOY_DIM)).astype(np.float32)}


def toy_apply_jax(params, frames):
    """(B, 16, 224, 224, 3) -> (B, D): tubelets (2, 14, 14) -> dense + positions -> GELU -> mean -> LN."""
    import jax
    import jax.numpy as jnp

    batch = frames.shape[0]
    x = frames.reshape(batch, 8, 2, 16, 14, 16, 14, 3).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    tokens = x.reshape(batch, 2048, -1) @ params["w"] + params["b"] + params["pos"]
    pooled = jax.nn.gelu(tokens, approximate=False).mean(axis=1)
    centred = pooled - pooled.mean(-1, keepdims=True)
    return centred / jnp.sqrt((centred ** 2).mean(-1, keepdims=True) + 1e-6)


def toy_apply_torch(params, clip):
    """The same toy model on a PyTorch (1, 3, 16, 224, 224) window."""
    import torch

    w, b, pos = (torch.from_numpy(params[k]) for k in ("w", "b", "pos"))
    x = clip.permute(0, 2, 3, 4, 1)  # (1, 16, 224, 224, 3)
    x = x.reshape(1, 8, 2, 16, 14, 16, 14, 3).permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(1, 2048, -1)
    pooled = torch.nn.functional.gelu(x @ w + b + pos).mean(1)
    return torch.nn.functional.layer_norm(pooled, (TOY_DIM,), eps=1e-6)


def toy_backbone(seed: int = 0):
    from pthnet_jax.video.engine import Backbone

    return Backbone(apply=toy_apply_jax, params=toy_params(seed), dim=TOY_DIM, name="toy")
