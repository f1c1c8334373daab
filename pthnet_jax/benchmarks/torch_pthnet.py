"""PTH-Net in PyTorch with the original release's module names and tensor layouts.

It serves three purposes: the independent reference of the numerical parity tests, the module that
exported `.pth` files must load into strictly, and the PyTorch baseline of the speed benchmark.
Written from a description of the original's computation, not from its source, so that agreement
with the Flax model means something. Works in the original's (B, C, T) layout with (B, 1, T)
boolean masks. PyTorch is an optional dependency of pthnet-jax.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

_EPS = 1e-5


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of (B, C, T); weight/bias stored as (1, C, 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x):
        centred = x - x.mean(dim=1, keepdim=True)
        variance = (centred * centred).mean(dim=1, keepdim=True)
        return centred / torch.sqrt(variance + _EPS) * self.weight + self.bias


class MaskedConv(nn.Module):
    """Conv1d ('same' zero padding) whose output is multiplied by the mask; inner module `conv`."""

    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int = 1, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=bias)
        if bias:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x, mask):
        return self.conv(x) * mask.to(x.dtype), mask


def _depthwise(channels: int, kernel: int, bias: bool = True) -> nn.Conv1d:
    return nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels, bias=bias)


class CrossAttention(nn.Module):
    """Masked multi-head cross attention with depthwise conv stems (`cross_att`)."""

    def __init__(self, channels: int, heads: int = 8):
        super().__init__()
        self.heads = heads
        for name in ("query", "key", "value"):
            setattr(self, f"{name}_conv", MaskedConv(channels, channels, 3, groups=channels, bias=False))
            setattr(self, f"{name}_norm", ChannelLayerNorm(channels))
        self.key = nn.Conv1d(channels, channels, 1)
        self.query = nn.Conv1d(channels, channels, 1)
        self.value = nn.Conv1d(channels, channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, query, key_value, mask):
        batch, channels, length = query.shape
        head_dim = channels // self.heads
        q = self.query(self.query_norm(self.query_conv(query, mask)[0]))
        k = self.key(self.key_norm(self.key_conv(key_value, mask)[0]))
        v = self.value(self.value_norm(self.value_conv(key_value, mask)[0]))
        # (B, C, T) -> (B, heads, T, head_dim)
        split = lambda t: t.view(batch, self.heads, head_dim, length).transpose(2, 3)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        scores = (q / math.sqrt(head_dim)) @ k.transpose(-2, -1)
        scores = scores.masked_fill(~mask[:, :, None, :], float("-inf"))
        out = scores.softmax(dim=-1) @ (v * mask[:, :, :, None].to(v.dtype))
        out = out.transpose(2, 3).reshape(batch, channels, length)
        return self.proj(out) * mask.to(out.dtype)


class AffineDropPath(nn.Module):
    def __init__(self, channels: int, drop_prob: float):
        super().__init__()
        self.scale = nn.Parameter(1e-4 * torch.ones(1, channels, 1))
        self.drop_prob = drop_prob

    def forward(self, x):
        x = self.scale * x
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        survive = torch.floor(keep + torch.rand(x.shape[0], 1, 1, dtype=x.dtype, device=x.device))
        return x / keep * survive


class THRLayer(nn.Module):
    def __init__(self, channels: int, kernel: int, mlp_dim: int, k=(1, 3, 5), path_pdrop: float = 0.0,
                 heads: int = 8):
        super().__init__()
        self.ln = ChannelLayerNorm(channels)
        self.gn = nn.GroupNorm(16, channels, eps=_EPS)
        self.psi = _depthwise(channels, kernel)
        self.fc = _depthwise(channels, 1)
        for level in ("H", "M", "L"):
            setattr(self, f"convw_{level}", _depthwise(channels, kernel))
        for level, size in (("H", k[2]), ("M", k[1]), ("L", k[0])):
            setattr(self, f"convkw_{level}", _depthwise(channels, size))
        self.global_fc = _depthwise(channels, 1)
        self.cross_att = CrossAttention(channels, heads)
        self.mlp = nn.Sequential(nn.Conv1d(channels, mlp_dim, 1), nn.GELU(), nn.Conv1d(mlp_dim, channels, 1))
        if path_pdrop > 0.0:
            self.drop_path_out = AffineDropPath(channels, path_pdrop)
            self.drop_path_mlp = AffineDropPath(channels, path_pdrop)
        else:
            self.drop_path_out = nn.Identity()
            self.drop_path_mlp = nn.Identity()
        # Present in the original's checkpoints, never used in its forward pass.
        self.pos_embed = MaskedConv(channels, channels, kernel, groups=channels)
        self.pos_embed_norm = ChannelLayerNorm(channels)

    def forward(self, x, mask, level: str):
        normed = self.ln(x)
        psi = self.psi(normed)
        gate = self.fc(normed)
        weight = getattr(self, f"convw_{level}")(normed) + getattr(self, f"convkw_{level}")(normed)
        context = torch.relu(self.global_fc(normed.mean(dim=-1, keepdim=True)))
        attended = self.cross_att(weight * psi, gate * context, mask)
        out = x * mask.to(x.dtype) + self.drop_path_out(attended + normed)
        return out + self.drop_path_mlp(self.mlp(self.gn(out)))


class TorchPTHNet(nn.Module):
    """PTH-Net with the original's state_dict keys (`embd.0.conv.weight`, `stem.1.cross_att...`)."""

    def __init__(self, n_in: int = 1408, n_embd: int = 512, mlp_dim: int = 768, max_len: int = 16,
                 arch=(2, 2, 1, 1), scale_factor: int = 2, with_ln: bool = True, path_pdrop: float = 0.1,
                 downsample_type: str = "max", thr_size=(3, 1, 3, 3), k=(1, 3, 5), num_classes: int = 7,
                 use_pos: bool = False, num_heads: int = 8):
        super().__init__()
        if downsample_type != "max" or scale_factor != 2 or use_pos:
            raise ValueError("only downsample_type='max', scale_factor=2, use_pos=False are implemented")
        self.arch = tuple(arch)
        self.embd = nn.ModuleList(
            MaskedConv(n_in if i == 0 else n_embd, n_embd, thr_size[0], bias=not with_ln)
            for i in range(arch[0]))
        self.embd_norm = nn.ModuleList(
            ChannelLayerNorm(n_embd) if with_ln else nn.Identity() for _ in range(arch[0]))
        self.pos_embed = MaskedConv(n_embd, n_embd, thr_size[0], groups=n_embd)
        self.pos_embed_norm = ChannelLayerNorm(n_embd)
        self.stem = nn.ModuleList(THRLayer(n_embd, thr_size[1], mlp_dim, k, 0.0, num_heads)
                                  for _ in range(arch[1]))
        self.branch_1 = nn.ModuleList(THRLayer(n_embd, thr_size[2], mlp_dim, k, path_pdrop, num_heads)
                                      for _ in range(arch[2]))
        self.branch_2 = nn.ModuleList(THRLayer(n_embd, thr_size[3], mlp_dim, k, path_pdrop, num_heads)
                                      for _ in range(arch[3]))
        self.head = nn.Linear(n_embd, num_classes)
        self.downsample = nn.MaxPool1d(3, stride=2, padding=1)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def _level(self, x, mask, level: str):
        for conv, norm in zip(self.embd, self.embd_norm):
            x, mask = conv(x, mask)
            x = torch.relu(norm(x))
        for layer in self.stem:
            x = layer(x, mask, level)
        for stage in (self.branch_1, self.branch_2):
            if len(stage) == 0:
                break
            length = x.shape[-1]
            x = self.downsample(x)
            mask = F.interpolate(mask.to(x.dtype), size=length // 2, mode="nearest").bool()
            for layer in stage:
                x = layer(x, mask, level)
        return self.head((x * mask.to(x.dtype)).mean(dim=2))

    def forward(self, x_l, x_m, x_h, mask_l, mask_m, mask_h, training: bool = True):
        """The original's signature: training=True -> (logits_L, logits_M, logits_H).

        training=False runs one level, like the original: L when `x_l` is given, else M when `x_m`
        is given, else H (evaluation passes only the H inputs).
        """
        if training:
            return self._level(x_l, mask_l, "L"), self._level(x_m, mask_m, "M"), self._level(x_h, mask_h, "H")
        if x_l is not None:
            return self._level(x_l, mask_l, "L")
        if x_m is not None:
            return self._level(x_m, mask_m, "M")
        return self._level(x_h, mask_h, "H")

    def forward_levels(self, features: dict, masks: dict) -> dict:
        """Channels-last convenience: dicts of (B, T, C) features and (B, T) masks -> logits per level."""
        return {level: self._level(features[level].transpose(1, 2), masks[level][:, None, :].bool(), level)
                for level in features}
