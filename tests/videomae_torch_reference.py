"""A small PyTorch VideoMAE V2 ViT written from `docs/videomae-reference.md` §1, for parity tests.

Independent of the Flax code: channels-first input (B, 3, T, H, W) like the original, attention
written out by hand, parameter names as in the released checkpoints (`patch_embed.proj.weight`,
`blocks.0.attn.q_bias`, `fc_norm.bias`, `head.weight`, ...), so its `state_dict()` is a file the
converter must read like the real one.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def position_table(num_tokens: int, dim: int) -> torch.Tensor:
    """(1, num_tokens, dim): p / 10000^(2*floor(j/2)/dim), sin for even j and cos for odd j."""
    table = torch.zeros(num_tokens, dim, dtype=torch.float64)
    for j in range(dim):
        freq = 10000.0 ** (2 * (j // 2) / dim)
        angle = torch.arange(num_tokens, dtype=torch.float64) / freq
        table[:, j] = torch.sin(angle) if j % 2 == 0 else torch.cos(angle)
    return table.float().unsqueeze(0)


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int, tubelet: int, chans: int = 3):
        super().__init__()
        self.proj = nn.Conv3d(chans, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W) -> (B, t*h*w, D)
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.heads
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = nn.functional.linear(x, self.qkv.weight, bias)
        qkv = qkv.reshape(batch, tokens, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * head_dim ** -0.5, qkv[1], qkv[2]  # each (B, heads, N, head_dim)
        weights = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, dim: int = 1408, depth: int = 40, heads: int = 16, hidden: int = 6144,
                 patch: int = 14, tubelet: int = 2, frames: int = 16, size: int = 224, num_classes: int = 710):
        super().__init__()
        self.patch_embed = PatchEmbed(dim, patch, tubelet)
        tokens = (frames // tubelet) * (size // patch) ** 2
        self.register_buffer("pos_embed", position_table(tokens, dim), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(depth))
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) in [0, 1] -> (B, D)
        x = self.patch_embed(x) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.fc_norm(x.mean(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def randomise(model: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """Give every parameter (norms and biases too) random values, so a wrong mapping shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "fc_norm.weight")):
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
            else:
                fan_in = math.prod(param.shape[1:]) if param.ndim > 1 else 1
                std = scale / math.sqrt(fan_in) if param.ndim > 1 else 0.1
                param.copy_(std * torch.randn(param.shape, generator=generator))
    return model
