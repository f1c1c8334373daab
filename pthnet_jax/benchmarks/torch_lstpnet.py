"""LSTPNet in PyTorch, written from `docs/lstpnet-reference.md` (sections 1-5), for the speed baseline
and the parity tests (tests/lstpnet_torch_reference.py re-exports it).

Channels first, as the original: frames (B, T, 3, H, W) in [0, 1]. Module names are the released
checkpoint's (`s_former.ir_back.layer2.0.eca.action_p2_conv1.weight`, `t_former.spatial_transformer.
layers.1.3.fn.fn.linear2.1.bias`, `fc.weight`, ...), with the shared temporal conv and norm registered
once on the transformer and again inside each layer's list, so `state_dict()` has the original's 226
names (218 distinct tensors) and `load_state_dict(strict=True)` takes the original's files.
Written independently of the Flax model: only the document is shared.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def reduced_width(channels: int) -> int:
    """r = C/8 rounded to a multiple of 8 (minimum 8, +8 when the rounding lost over 10 %)."""
    wanted = channels / 8
    rounded = max(8, int(wanted + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * wanted else rounded


def eca_kernel(channels: int) -> int:
    t = int((math.log2(channels) + 1) / 2)
    return max(3, t if t % 2 == 1 else t + 1)


class TemporalChannelExcitation(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        r, k = reduced_width(channels), eca_kernel(channels)
        self.r = r
        self.eca_conv_1 = nn.Sequential(nn.Conv1d(1, r, k, padding=k // 2))
        self.action_p2_conv1 = nn.Conv1d(channels, channels, 3, padding=1, bias=False)
        self.eca_conv_2 = nn.Sequential(nn.Conv1d(r, 1, k, padding=k // 2))

    def _excite(self, d: torch.Tensor, frames: int) -> torch.Tensor:  # (N, C) -> (N, C)
        n, c = d.shape
        u = self.eca_conv_1(d.unsqueeze(1))  # (N, r, C): channel axis as the signal
        # per clip and feature map, the C-vectors of the T frames as a sequence: (B*r, C, T)
        u = u.reshape(n // frames, frames, self.r, c).permute(0, 2, 3, 1).reshape(-1, c, frames)
        v = self.action_p2_conv1(u)
        v = v.reshape(n // frames, self.r, c, frames).permute(0, 3, 1, 2).reshape(n, self.r, c)
        return self.eca_conv_2(F.relu(v)).reshape(n, c)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:  # (N, C, H, W)
        z = self._excite(x.amax(dim=(2, 3)), frames) + self._excite(x.mean(dim=(2, 3)), frames)
        return x * (2 * torch.sigmoid(z))[:, :, None, None]


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, tce: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=True),
                                            nn.BatchNorm2d(planes))
        self.eca = TemporalChannelExcitation(inplanes) if tce else None

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        gated = self.eca(x, frames) if self.eca is not None else x
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(gated)))))
        shortcut = self.downsample(gated) if self.downsample is not None else x
        return F.relu(out + shortcut)


class ResNetTCE(nn.Module):
    def __init__(self, widths=(64, 128, 256, 512)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        inplanes = widths[0]
        for stage, planes in enumerate(widths, start=1):
            stride = 1 if stage == 1 else 2
            blocks = [BasicBlock(inplanes, planes, stride, tce=stage > 1), BasicBlock(planes, planes, 1, tce=stage > 1)]
            setattr(self, f"layer{stage}", nn.ModuleList(blocks))
            inplanes = planes

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        for stage in range(1, 5):
            for block in getattr(self, f"layer{stage}"):
                x = block(x, frames)
        return x


class SpatialFormer(nn.Module):  # the original's `s_former`: backbone + head TCE + spatial mean
    def __init__(self, widths):
        super().__init__()
        self.ir_back = ResNetTCE(widths)
        self.eca = TemporalChannelExcitation(widths[-1])

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:  # (N, 3, H, W) -> (N, D)
        return self.eca(self.ir_back(x, frames), frames).mean(dim=(2, 3))


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(x)


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.to_qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * head_dim, dim))
        self.last_attention = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.to_qkv(x).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), dim=-1)
        self.last_attention = weights
        return self.to_out((weights @ v).transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear1 = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.TC = nn.Conv1d(hidden, hidden, 3, padding=1, groups=hidden, bias=True)
        self.norm = nn.LayerNorm(hidden)
        self.linear2 = nn.Sequential(nn.Linear(hidden, dim), nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear1(x)
        h = h + self.TC(h.transpose(1, 2)).transpose(1, 2)
        return self.linear2(self.norm(F.gelu(h)))


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, head_dim: int, hidden: int):
        super().__init__()
        self.TC = nn.Conv1d(dim, dim, 3, padding=1)
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([self.TC, self.norm, Residual(PreNorm(dim, Attention(dim, heads, head_dim))),
                           Residual(PreNorm(dim, FeedForward(dim, hidden)))]) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        for conv, norm, attention, ffn in self.layers:
            x = norm(x + conv(x.transpose(1, 2)).transpose(1, 2))
            x = ffn(attention(x))
        return x


class TemporalFormer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, head_dim: int, hidden: int):
        super().__init__()
        self.spatial_transformer = Transformer(dim, depth, heads, head_dim, hidden)


class TorchLSTPNet(nn.Module):
    """frames (B, T, 3, H, W) -> (logits, clip features, frame features, last attention map)."""

    def __init__(self, num_classes: int = 7, widths=(64, 128, 256, 512), depth: int = 2, heads: int = 8,
                 head_dim: int = 64, mlp_dim: int = 4096):
        super().__init__()
        self.s_former = SpatialFormer(tuple(widths))
        self.t_former = TemporalFormer(widths[-1], depth, heads, head_dim, mlp_dim)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, frames: torch.Tensor):
        b, t = frames.shape[:2]
        frame_features = self.s_former(frames.reshape(b * t, *frames.shape[2:]), t)
        tokens = self.t_former.spatial_transformer(frame_features.reshape(b, t, -1))
        features = tokens.mean(dim=1)
        last = self.t_former.spatial_transformer.layers[-1][2].fn.fn.last_attention
        return self.fc(features), features, frame_features, last


def from_config(config) -> TorchLSTPNet:
    """The PyTorch model of an `LSTPNetConfig` (or anything with its fields)."""
    return TorchLSTPNet(config.num_classes, config.widths, config.depth, config.num_heads, config.head_dim,
                        config.mlp_dim)
