"""VideoMAE V2 ViT in PyTorch for the extraction benchmark's baselines, loaded from the Flax params.

Written from `docs/videomae-reference.md` §1 (the original's `forward_features`): attention by hand
(`q @ k^T`, softmax, `@ v`) as the original code does for the one-window float32 path, or
`F.scaled_dot_product_attention` (`fused=True`) for the batched bfloat16 baseline, the fastest a
PyTorch user would write. Input (B, 3, T, H, W) in [0, 1].
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def _sinusoid(tokens: int, dim: int) -> torch.Tensor:
    position = np.arange(tokens, dtype=np.float64)[:, None]
    rates = 10000.0 ** (2 * (np.arange(dim) // 2) / dim)
    angles = position / rates
    table = np.where(np.arange(dim) % 2 == 0, np.sin(angles), np.cos(angles))
    return torch.from_numpy(table.astype(np.float32))[None]


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, fused: bool):
        super().__init__()
        self.heads, self.fused = heads, fused
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, head_dim)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = ((q * (dim // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TorchVideoMAE(nn.Module):
    def __init__(self, config, fused: bool = False):
        super().__init__()
        c = config
        self.config = c
        self.patch = nn.Conv3d(c.in_chans, c.embed_dim, (c.tubelet_size, c.patch_size, c.patch_size),
                               stride=(c.tubelet_size, c.patch_size, c.patch_size))
        self.register_buffer("pos", _sinusoid(c.num_tokens, c.embed_dim), persistent=False)
        self.blocks = nn.ModuleList(_Block(c.embed_dim, c.num_heads, c.mlp_dim, fused) for _ in range(c.depth))
        self.fc_norm = nn.LayerNorm(c.embed_dim, eps=1e-6)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) -> (B, D)
        x = self.patch(frames).flatten(2).transpose(1, 2) + self.pos.to(frames.dtype)
        for block in self.blocks:
            x = block(x)
        return self.fc_norm(x.mean(1))


def from_flax(config, params: dict[str, Any], fused: bool = False) -> TorchVideoMAE:
    """Flax `{"params": ...}` of `pthnet_jax.models.videomae.VideoMAE` -> this module (float32)."""
    params = params["params"]
    model = TorchVideoMAE(config, fused)

    def t(a, *axes):
        a = np.asarray(a, np.float32)
        return torch.from_numpy(np.array(a.transpose(*axes) if axes else a, copy=True))  # own, writable memory

    state = {"patch.weight": t(params["patch_embed"]["kernel"], 4, 3, 0, 1, 2),  # (T,H,W,I,O) -> (O,I,T,H,W)
             "patch.bias": t(params["patch_embed"]["bias"]),
             "fc_norm.weight": t(params["fc_norm"]["scale"]), "fc_norm.bias": t(params["fc_norm"]["bias"])}
    for i in range(config.depth):
        block = params[f"blocks_{i}"]
        prefix = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            state[prefix + norm + ".weight"] = t(block[norm]["scale"])
            state[prefix + norm + ".bias"] = t(block[norm]["bias"])
        state[prefix + "qkv.weight"] = t(block["attn"]["qkv"]["kernel"], 1, 0)  # Dense (in, out) -> Linear (out, in)
        state[prefix + "q_bias"] = t(block["attn"]["q_bias"])
        state[prefix + "v_bias"] = t(block["attn"]["v_bias"])
        state[prefix + "proj.weight"] = t(block["attn"]["proj"]["kernel"], 1, 0)
        state[prefix + "proj.bias"] = t(block["attn"]["proj"]["bias"])
        for fc in ("fc1", "fc2"):
            state[prefix + fc + ".weight"] = t(block["mlp"][fc]["kernel"], 1, 0)
            state[prefix + fc + ".bias"] = t(block["mlp"][fc]["bias"])
    model.load_state_dict(state, strict=True)
    return model.eval()


def flops_per_window(config) -> float:
    """Multiply-adds x 2 of one window (matrix products only: embedding, qkv, attention, proj, MLP)."""
    n, d, h = config.num_tokens, config.embed_dim, config.mlp_dim
    patch = config.tubelet_size * config.patch_size ** 2 * config.in_chans
    per_block = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * h
    return float(2 * n * patch * d + config.depth * per_block)


__all__ = ["TorchVideoMAE", "from_flax", "flops_per_window"]
