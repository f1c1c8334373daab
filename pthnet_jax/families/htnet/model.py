"""HTNet (Wang et al., Neurocomputing 2024) in Flax: a hierarchical transformer over a flow mosaic.

Written from `docs/htnet-reference.md` §1. Channels last: input (B, image, image, channels), float32,
values 0..255 in the order OpenCV reads the PNG (blue, green, red); output (B, num_classes) logits.

Structure: patch embedding (P x P, stride P, as one matrix product in the (row, column, channel)
flatten order) -> S stages, each on non-overlapping L x L blocks of tokens with a learned scalar per
block position and `depth` pre-norm (attention, feed-forward) pairs; between stages a 3x3 conv,
ChannelNorm and a 3x3 stride-2 max-pool halve the map and double the width -> ChannelNorm, spatial
mean, linear head. Stage s has width dim*2^s and heads*2^s heads of size floor(width / heads): the
inner width can be smaller than the width (255 for 256 with 3 heads).

In the released configuration (28 / 7 / 256 / 3 heads / 3 stages / blocks 2, 2, 10) L = 1: every
block holds one token, so attention reduces to out(value(x)) and the query/key rows get zero
gradient. The attention is computed in general anyway (other configurations use it, and the dead
parameters round-trip through checkpoints).

Parameter names follow the reference's table (`patch_embed`, `stage_i/pos_emb`,
`stage_i/block_j/{attn_norm,attn/qkv,attn/out,ff_norm,ff/fc1,ff/fc2}`, `aggregate_i/{conv,norm}`,
`head/{norm,fc}`) so `families/htnet/convert.py` is a table of renames and transposes.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pthnet_jax.families.htnet.config import INITS, HTNetConfig

Array = jax.Array


# --- initialisers ---------------------------------------------------------------------------------

def torch_uniform(fan_in: int):
    """PyTorch's default for Linear/Conv weights and biases: uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _dense(cfg: HTNetConfig, features: int, fan_in: int, name: str, dtype: Any, use_bias: bool = True) -> nn.Dense:
    if cfg.init == "torch":
        return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                        kernel_init=torch_uniform(fan_in), bias_init=torch_uniform(fan_in))
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name)


# --- layers -----------------------------------------------------------------------------------------

class ChannelNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis; biased, two-pass variance."""

    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: Array) -> Array:
        width = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (width,))
        bias = self.param("bias", nn.initializers.zeros, (width,))
        dtype, x = x.dtype, x.astype(jnp.float32)
        centred = x - x.mean(-1, keepdims=True)
        var = (centred * centred).mean(-1, keepdims=True)
        return (centred / jnp.sqrt(var + self.eps) * scale + bias).astype(dtype)


# Blocks with at most this many scores per head (T^2) take products as broadcast multiply-and-sum:
# the released model's T = 1 otherwise becomes thousands of 1x85 by 85x1 matrix products, slow on CPU.
BROADCAST_MAX_SCORES = 16


def _dot_qk(q: Array, k: Array, small: bool) -> Array:  # (N, T, h, D) x2 -> (N, h, T, T)
    if small:
        return (q[:, :, None] * k[:, None, :]).sum(-1).transpose(0, 3, 1, 2)
    return jnp.einsum("nqhd,nkhd->nhqk", q, k)


def _dot_wv(weights: Array, v: Array, small: bool) -> Array:  # (N, h, T, T), (N, T, h, D) -> (N, T, h, D)
    if small:
        return (weights.transpose(0, 2, 3, 1)[..., None] * v[:, None]).sum(2)
    return jnp.einsum("nhqk,nkhd->nqhd", weights, v)


class Attention(nn.Module):
    """Multi-head softmax attention over the T tokens of each block: (N, T, C) -> (N, T, C)."""

    config: HTNetConfig
    stage: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        cfg, s = self.config, self.stage
        heads, head_dim, inner, width = cfg.num_heads(s), cfg.head_dim(s), cfg.inner(s), cfg.width(s)
        qkv = _dense(cfg, 3 * inner, width, "qkv", self.dtype, use_bias=False)(x)
        # Three consecutive groups of `inner` channels (queries, keys, values), head-major inside each.
        qkv = qkv.reshape(*x.shape[:-1], 3, heads, head_dim)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]  # (N, T, heads, D)
        small = q.shape[1] ** 2 <= BROADCAST_MAX_SCORES
        scores = _dot_qk(q, k, small) * jnp.asarray(head_dim ** -0.5, q.dtype)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
        weights = nn.Dropout(cfg.dropout)(weights, deterministic=deterministic)
        out = _dot_wv(weights, v, small).reshape(*x.shape[:-1], inner)
        out = _dense(cfg, width, inner, "out", self.dtype)(out)
        return nn.Dropout(cfg.dropout)(out, deterministic=deterministic)


class FeedForward(nn.Module):
    config: HTNetConfig
    stage: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        width = cfg.width(self.stage)
        hidden = cfg.mlp_mult * width
        x = _dense(cfg, hidden, width, "fc1", self.dtype)(x)
        x = nn.gelu(x, approximate=False)  # the exact (erf) form, as PyTorch's nn.GELU()
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        x = _dense(cfg, width, hidden, "fc2", self.dtype)(x)
        return nn.Dropout(cfg.dropout)(x, deterministic=deterministic)


class Block(nn.Module):
    """x + attn(attn_norm(x)), then x + ff(ff_norm(x))."""

    config: HTNetConfig
    stage: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        cfg, s, dtype = self.config, self.stage, self.dtype
        x = x + Attention(cfg, s, dtype, name="attn")(ChannelNorm(name="attn_norm")(x), deterministic)
        return x + FeedForward(cfg, s, dtype, name="ff")(ChannelNorm(name="ff_norm")(x), deterministic)


class Stage(nn.Module):
    """Blocks of L x L tokens (block-row major), positional scalars, `depth` Blocks, blocks put back."""

    config: HTNetConfig
    stage: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:  # (B, H, W, C) -> same
        cfg, s = self.config, self.stage
        side = cfg.block_side
        pos = self.param("pos_emb", nn.initializers.normal(1.0), (cfg.seq_len,))
        batch, height, width, chans = x.shape
        nh, nw = height // side, width // side
        tokens = x.reshape(batch, nh, side, nw, side, chans).transpose(0, 1, 3, 2, 4, 5)
        tokens = tokens.reshape(batch * nh * nw, side * side, chans)
        tokens = tokens + pos.astype(tokens.dtype)[None, :, None]
        for j in range(cfg.block_repeats[s]):
            tokens = Block(cfg, s, self.dtype, name=f"block_{j}")(tokens, deterministic)
        tokens = tokens.reshape(batch, nh, nw, side, side, chans).transpose(0, 1, 3, 2, 4, 5)
        return tokens.reshape(batch, height, width, chans)


class Aggregate(nn.Module):
    """3x3 conv (zero padding 1, bias) to the next width, ChannelNorm, 3x3 stride-2 max-pool (padding 1)."""

    config: HTNetConfig
    stage: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        features = cfg.width(self.stage + 1)
        fan_in = 9 * cfg.width(self.stage)
        inits = ({"kernel_init": torch_uniform(fan_in), "bias_init": torch_uniform(fan_in)}
                 if cfg.init == "torch" else {})
        x = nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name="conv", **inits)(x)
        x = ChannelNorm(name="norm")(x)
        # reduce_window pads with -inf: padded cells never win, as in PyTorch.
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class PatchEmbed(nn.Module):
    """P x P patches, flattened (row, column, channel), times a (P, P, channels, dim) kernel, plus bias."""

    config: HTNetConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: Array) -> Array:
        cfg = self.config
        p, g, c = cfg.patch_size, cfg.grid, cfg.channels
        fan_in = p * p * c
        kernel_init = torch_uniform(fan_in) if cfg.init == "torch" else nn.initializers.lecun_normal(
            in_axis=(0, 1, 2), out_axis=3)
        bias_init = torch_uniform(fan_in) if cfg.init == "torch" else nn.initializers.zeros
        kernel = self.param("kernel", kernel_init, (p, p, c, cfg.dim))
        bias = self.param("bias", bias_init, (cfg.dim,))
        batch = images.shape[0]
        patches = images.reshape(batch, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(batch, g, g, fan_in)
        patches, kernel, bias = nn.dtypes.promote_dtype(patches, kernel, bias, dtype=self.dtype)
        return patches @ kernel.reshape(fan_in, cfg.dim) + bias


class HTNet(nn.Module):
    """images (B, image, image, channels) float, 0..255 BGR -> (B, num_classes) float32 logits.

    `dtype`: compute dtype (float32: the original's numbers). Dropout (rate `config.dropout`, 0 in
    the released model) runs when `deterministic=False` and a 'dropout' rng is given.
    """

    config: HTNetConfig = HTNetConfig()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        expected = (cfg.image_size, cfg.image_size, cfg.channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"HTNet expects images of shape (B, {', '.join(map(str, expected))}) (channels last, "
                             f"values 0..255, BGR); got {tuple(images.shape)}")
        x = PatchEmbed(cfg, self.dtype, name="patch_embed")(images.astype(self.dtype))
        for s in range(cfg.num_hierarchies):
            x = Stage(cfg, s, self.dtype, name=f"stage_{s}")(x, deterministic)
            if s < cfg.num_hierarchies - 1:
                x = Aggregate(cfg, s, self.dtype, name=f"aggregate_{s}")(x)
        return Head(cfg, name="head")(x)


class Head(nn.Module):
    """ChannelNorm, mean over the positions, linear map to the logits (in float32)."""

    config: HTNetConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        x = ChannelNorm(name="norm")(x.astype(jnp.float32))
        pooled = x.mean(axis=(1, 2))
        fan_in = pooled.shape[-1]
        inits = ({"kernel_init": torch_uniform(fan_in), "bias_init": torch_uniform(fan_in)}
                 if cfg.init == "torch" else {})
        return nn.Dense(cfg.num_classes, name="fc", **inits)(pooled)


def _dummy_images(config: HTNetConfig) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1, config.image_size, config.image_size, config.channels), jnp.float32)


def init_params(config: HTNetConfig, rng: Array | None = None) -> dict[str, Any]:
    """`{"params": ...}` initialised as `config.init` says (torch: the original's defaults)."""
    images = _dummy_images(config)
    init = jax.jit(lambda key: HTNet(config).init(key, jnp.zeros(images.shape, images.dtype)))
    return init(jax.random.key(0) if rng is None else rng)


def param_shapes(config: HTNetConfig) -> dict[str, Any]:
    """The `{"params": ...}` tree of `config` as ShapeDtypeStructs, nothing allocated."""
    return jax.eval_shape(HTNet(config).init, jax.random.key(0), _dummy_images(config))


def count_params(params: Any) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


__all__ = ["ChannelNorm", "HTNet", "HTNetConfig", "INITS", "count_params", "init_params", "param_shapes",
           "torch_uniform"]
