"""A small PyTorch HTNet written from `docs/htnet-reference.md` §1-2: the parity tests' reference and the GPU report's baseline.

Independent of the Flax code: channels first (B, C, H, W) like the original, 1x1 convolutions where
the original has them, attention written out by hand, and the original's parameter names
(`to_patch_embedding.1.weight`, `layers.0.0.layers.1.0.fn.to_qkv.weight`, `layers.1.1.1.g`,
`mlp_head.2.bias`, ...), so its `state_dict()` is laid out like a released per-subject file.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class ChannelNorm(nn.Module):
    def __init__(self, width: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, width, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.g + self.b


class PreNorm(nn.Module):
    def __init__(self, width: int, fn: nn.Module):
        super().__init__()
        self.norm = ChannelNorm(width)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        inner = heads * self.head_dim
        self.to_qkv = nn.Conv2d(width, 3 * inner, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(inner, width, 1), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, L, L)
        n, _, side, _ = x.shape
        q, k, v = self.to_qkv(x).chunk(3, dim=1)

        def split(t):  # (N, heads*D, L, L) -> (N, heads, L*L, D)
            return t.reshape(n, self.heads, self.head_dim, side * side).transpose(2, 3)

        q, k, v = split(q), split(k), split(v)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), dim=-1)
        out = (weights @ v).transpose(2, 3).reshape(n, self.heads * self.head_dim, side, side)
        return self.to_out(out)


class FeedForward(nn.Module):
    def __init__(self, width: int, mult: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(width, width * mult, 1), nn.GELU(), nn.Dropout(0.0),
                                 nn.Conv2d(width * mult, width, 1), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Transformer(nn.Module):
    def __init__(self, width: int, seq_len: int, depth: int, heads: int, mult: int):
        super().__init__()
        self.pos_emb = nn.Parameter(torch.randn(seq_len))
        self.layers = nn.ModuleList(nn.ModuleList([PreNorm(width, SelfAttention(width, heads)),
                                                   PreNorm(width, FeedForward(width, mult))]) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = x.shape[-1]
        x = x + self.pos_emb.reshape(1, 1, side, side)
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class Patches(nn.Module):
    """(B, C, gP, gP) -> (B, P*P*C, g, g) with feature index (r * P + c) * C + ch."""

    def __init__(self, patch: int):
        super().__init__()
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.patch
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 3, 5, 1, 2, 4)  # b, r, col, ch, gh, gw
        return x.reshape(b, p * p * c, h // p, w // p)


class SpatialMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _blocks(x: torch.Tensor, side: int) -> torch.Tensor:  # (B, C, H, W) -> (B*nb*nb, C, L, L), block-row major
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // side, side, w // side, side).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, c, side, side)


def _unblocks(x: torch.Tensor, batch: int, nh: int, nw: int) -> torch.Tensor:
    _, c, side, _ = x.shape
    x = x.reshape(batch, nh, nw, c, side, side).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(batch, c, nh * side, nw * side)


class ReferenceHTNet(nn.Module):
    def __init__(self, image_size=28, patch_size=7, num_classes=3, dim=256, heads=3, num_hierarchies=3,
                 block_repeats=(2, 2, 10), mlp_mult=4, channels=3):
        super().__init__()
        grid = image_size // patch_size
        self.side = grid // 2 ** (num_hierarchies - 1)
        self.to_patch_embedding = nn.Sequential(Patches(patch_size),
                                                nn.Conv2d(channels * patch_size ** 2, dim, 1))
        self.layers = nn.ModuleList()
        for s in range(num_hierarchies):
            width, last = dim * 2 ** s, s == num_hierarchies - 1
            aggregate = nn.Identity() if last else nn.Sequential(
                nn.Conv2d(width, 2 * width, 3, padding=1), ChannelNorm(2 * width), nn.MaxPool2d(3, 2, 1))
            self.layers.append(nn.ModuleList([
                Transformer(width, self.side ** 2, block_repeats[s], heads * 2 ** s, mlp_mult), aggregate]))
        self.mlp_head = nn.Sequential(ChannelNorm(dim * 2 ** (num_hierarchies - 1)), SpatialMean(),
                                      nn.Linear(dim * 2 ** (num_hierarchies - 1), num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W), 0..255 -> (B, K)
        x = self.to_patch_embedding(x)
        for transformer, aggregate in self.layers:
            batch, _, h, w = x.shape
            x = _unblocks(transformer(_blocks(x, self.side)), batch, h // self.side, w // self.side)
            x = aggregate(x)
        return self.mlp_head(x)


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values for every parameter (norm gains and biases too), so a wrong mapping shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".g"):
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
            elif name.endswith("pos_emb"):
                param.copy_(torch.randn(param.shape, generator=generator))
            elif param.ndim > 1:
                fan_in = math.prod(param.shape[1:])
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
            else:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model
