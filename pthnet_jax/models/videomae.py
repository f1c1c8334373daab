"""VideoMAE V2 ViT in Flax: the video backbone whose features PTH-Net reads.

The model is the fine-tuned VideoMAE V2 ViT used through `forward_features` (see
`docs/videomae-reference.md` §1): a tubelet embedding (Conv3d, kernel = stride), a fixed sinusoid
position table, pre-norm transformer blocks, and the mean of the tokens through `fc_norm`. The
classification head is not part of this module.

Input (channels last, unlike the original's (B, 3, T, H, W)):
    frames (B, num_frames, img_size, img_size, 3), float, RGB, values in [0, 1].
    No mean/std normalisation: the original extractor feeds `frames / 255` resized to 224 x 224
    straight into the model. `preprocess` turns uint8 frames into that range (the resize to
    224 x 224 belongs to the video pipeline: bilinear, half-pixel centres, no antialiasing).
Output: (B, embed_dim) float32 features.

Compute dtype: `VideoMAE(config, dtype=...)`, float32 for the original's numbers, bfloat16 for
speed. Attention: `chunked_attention` on CPU, `jax.nn.dot_product_attention` elsewhere (cuDNN's
fused kernel for half precision on GPU); see `attention`.

Parameter names mirror the original's module names (`patch_embed/proj`, `blocks_3/attn/qkv`,
`blocks_3/attn/q_bias`, `fc_norm`, ...) so that `pthnet_jax.convert.videomae` is a table of renames
and transposes; its `load_videomae(path)` gives (module, variables) from the released checkpoint.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pthnet_jax.models.fields import from_plain_dict

Array = jax.Array

# (embed_dim, depth, num_heads, mlp_dim, patch_size) of the family (VideoMAE V2 `vit_*_patch*_224`).
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "small": (384, 12, 6, 1536, 16),
    "base": (768, 12, 12, 3072, 16),
    "large": (1024, 24, 16, 4096, 16),
    "huge": (1280, 32, 16, 5120, 16),
    "giant": (1408, 40, 16, 6144, 14),  # MLP ratio 48/11
}
CHECKPOINT_FILE = "vit_g_hybrid_pt_1200e_k710_ft.pth"  # the released fine-tuned ViT-g the features come from


@dataclasses.dataclass(frozen=True)
class VideoMAEConfig:
    """Sizes of one VideoMAE V2 ViT. The defaults are the giant (ViT-g/14) the features come from."""

    embed_dim: int = 1408
    depth: int = 40
    num_heads: int = 16
    mlp_dim: int = 6144  # hidden width of the MLP (the original's int(embed_dim * mlp_ratio))
    patch_size: int = 14
    tubelet_size: int = 2
    num_frames: int = 16
    img_size: int = 224
    in_chans: int = 3
    norm_eps: float = 1e-6  # the original's LayerNorm(eps=1e-6) (PyTorch's default would be 1e-5)

    def __post_init__(self):
        problems = []
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if self.img_size % self.patch_size:
            problems.append(f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}")
        if self.num_frames % self.tubelet_size:
            problems.append(f"num_frames={self.num_frames} is not divisible by "
                            f"tubelet_size={self.tubelet_size}")
        if min(self.embed_dim, self.depth, self.num_heads, self.mlp_dim, self.patch_size,
               self.tubelet_size, self.num_frames, self.img_size, self.in_chans) < 1:
            problems.append("every size must be positive")
        if problems:
            raise ValueError("VideoMAEConfig: " + "; ".join(problems))

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "VideoMAEConfig":
        """A named size of the family: small, base, large, huge or giant."""
        if name not in SIZES:
            raise ValueError(f"unknown VideoMAE size {name!r}; known: {', '.join(SIZES)}")
        embed_dim, depth, num_heads, mlp_dim, patch_size = SIZES[name]
        return cls(**{"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads, "mlp_dim": mlp_dim,
                      "patch_size": patch_size, **overrides})

    @property
    def name(self) -> str | None:
        """The family name these sizes match (ignoring frames/image size), or None."""
        key = (self.embed_dim, self.depth, self.num_heads, self.mlp_dim, self.patch_size)
        return next((name for name, sizes in SIZES.items() if sizes == key), None)

    @property
    def mlp_ratio(self) -> float:
        return self.mlp_dim / self.embed_dim

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def grid(self) -> tuple[int, int, int]:
        """Tokens along (time, height, width)."""
        side = self.img_size // self.patch_size
        return self.num_frames // self.tubelet_size, side, side

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def flops_per_clip(self) -> int:
        """Matrix-product FLOPs (2 per multiply-add) of one clip's forward pass: 5.09e12 for the giant.

        Counted by hand because XLA's cost analysis counts a loop body once, so it misses most of
        `chunked_attention` (the CPU path).
        """
        tokens, dim = self.num_tokens, self.embed_dim
        patch = self.tubelet_size * self.patch_size ** 2 * self.in_chans
        per_token = patch * dim + self.depth * (4 * dim * dim + 2 * dim * self.mlp_dim)  # embed, qkv+proj, MLP
        attention = self.depth * 2 * tokens * tokens * dim  # q k^T and weights @ v
        return 2 * (tokens * per_token + attention)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "VideoMAEConfig":
        return from_plain_dict(cls, values)


def sinusoid_table(num_tokens: int, dim: int) -> np.ndarray:
    """The original's fixed 1-D position table, (num_tokens, dim) float32.

    angle(p, j) = p / 10000^(2 * floor(j / 2) / dim); sin on even j, cos on odd j (interleaved, not
    two halves). Built in float64 and rounded once, as the original does.
    """
    positions = np.arange(num_tokens, dtype=np.float64)[:, None]
    exponents = 2.0 * (np.arange(dim) // 2) / dim
    angles = positions / np.power(10000.0, exponents)[None, :]
    table = np.where(np.arange(dim) % 2 == 0, np.sin(angles), np.cos(angles))
    return table.astype(np.float32)


def preprocess(frames: Array, dtype: Any = jnp.float32) -> Array:
    """uint8 RGB frames (..., H, W, 3) in [0, 255] -> `dtype` in [0, 1], the model's input range.

    This is all the scaling the original does (`/ 255`, no mean/std). Frames must already be
    img_size x img_size (the resize to 224 x 224 is bilinear, half-pixel centres, no antialiasing:
    see the video pipeline).
    """
    return (jnp.asarray(frames).astype(jnp.float32) / 255.0).astype(dtype)  # a division, as the original


def _layer_norm(name: str, config: VideoMAEConfig, dtype: Any) -> nn.LayerNorm:
    # Two-pass variance, like PyTorch (Flax's fast E[x^2] - E[x]^2 loses digits on large activations).
    return nn.LayerNorm(epsilon=config.norm_eps, dtype=dtype, use_fast_variance=False, name=name)


class PatchEmbed(nn.Module):
    """Conv3d with kernel = stride = (tubelet, patch, patch), computed as one matrix product.

    The kernel keeps the Flax 3-D conv layout (T, H, W, in, out) so the checkpoint mapping is the
    usual Conv3d transpose; tokens come out in the original's (t, h, w) flatten order.
    """

    config: VideoMAEConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, frames: Array) -> Array:  # (B, T, H, W, C) -> (B, tokens, D)
        cfg = self.config
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (cfg.tubelet_size, cfg.patch_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim))
        bias = self.param("bias", nn.initializers.zeros, (cfg.embed_dim,))
        batch = frames.shape[0]
        gt, gh, gw = cfg.grid
        tt, pp = cfg.tubelet_size, cfg.patch_size
        # (B, gt*tt, gh*pp, gw*pp, C) -> (B, gt, gh, gw, tt, pp, pp, C) -> (B, tokens, tt*pp*pp*C)
        patches = frames.reshape(batch, gt, tt, gh, pp, gw, pp, cfg.in_chans)
        patches = patches.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(batch, gt * gh * gw, -1)
        patches, kernel, bias = nn.dtypes.promote_dtype(patches, kernel, bias, dtype=self.dtype)
        return patches @ kernel.reshape(-1, cfg.embed_dim) + bias


SCORE_BLOCK = 1 << 20  # score elements per block of `chunked_attention` (4 MiB in float32: cache-sized)


def _query_chunk(num_tokens: int, rows: int) -> int:
    """Rows per query block: at most `rows`, preferring a divisor of the token count (no padding)."""
    rows = max(8, min(rows, num_tokens))
    return next((size for size in range(rows, rows // 2, -1) if num_tokens % size == 0), rows)


def chunked_attention(q: Array, k: Array, v: Array, score_block: int = SCORE_BLOCK) -> Array:
    """Softmax attention computed a block of queries at a time: (B, N, heads, head_dim) -> same.

    The same arithmetic per query row as `jax.nn.dot_product_attention`, whose XLA form
    materialises all (B, heads, N, N) scores at once: for 2048 tokens that is 256 MiB per clip of
    the giant, memory-bound on a CPU. Here one clip at a time, in blocks of about `score_block`
    scores that stay in cache (~3x faster on CPU).
    """
    batch, num_tokens, heads, head_dim = q.shape
    chunk = _query_chunk(num_tokens, score_block // (heads * num_tokens))
    pad = (-num_tokens) % chunk
    scale = jnp.asarray(head_dim ** -0.5, q.dtype)

    def one_clip(qkv: tuple[Array, Array, Array]) -> Array:  # (N, heads, hd) each -> (N, heads, hd)
        queries, keys, values = qkv
        # (N, heads, hd) -> (num_chunks, heads, chunk, hd); keys and values -> (heads, N, hd)
        queries = jnp.pad(queries * scale, ((0, pad), (0, 0), (0, 0)))
        queries = queries.reshape(-1, chunk, heads, head_dim).transpose(0, 2, 1, 3)
        keys, values = keys.transpose(1, 0, 2), values.transpose(1, 0, 2)

        def block(query_block: Array) -> Array:  # (heads, chunk, hd)
            scores = jnp.einsum("hqd,hkd->hqk", query_block, keys, preferred_element_type=jnp.float32)
            weights = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
            return jnp.einsum("hqk,hkd->hqd", weights, values)

        out = jax.lax.map(block, queries)  # (num_chunks, heads, chunk, hd)
        return out.transpose(0, 2, 1, 3).reshape(-1, heads, head_dim)[:num_tokens]

    return jax.lax.map(one_clip, (q, k, v))


ATTENTION_IMPLEMENTATIONS = ("auto", "chunked", "dot_product_attention", "cudnn")


def attention(q: Array, k: Array, v: Array, implementation: str = "auto") -> Array:
    """softmax(q k^T / sqrt(head_dim)) v over (B, N, heads, head_dim), by one of the implementations.

    "chunked": `chunked_attention`; "dot_product_attention": `jax.nn.dot_product_attention` (XLA);
    "cudnn": its fused cuDNN kernel (GPU, float16/bfloat16 only). "auto" picks "chunked" on CPU,
    "cudnn" on GPU for half-precision inputs when cuDNN accepts them (else XLA), and XLA otherwise.
    All give the original's numbers up to rounding.
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {implementation!r}; "
                         f"known: {', '.join(ATTENTION_IMPLEMENTATIONS)}")
    backend = jax.default_backend()
    if implementation == "chunked" or (implementation == "auto" and backend == "cpu"):
        return chunked_attention(q, k, v)
    if implementation == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    if implementation == "auto" and backend == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
        try:  # cuDNN's checks (dtype, head size, library version) run here, at trace time
            return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
        except (NotImplementedError, ValueError, RuntimeError):
            pass
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")


class Attention(nn.Module):
    """Multi-head self-attention with the original's biases: q and v have one, k has none."""

    config: VideoMAEConfig
    dtype: Any = jnp.float32
    implementation: str = "auto"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        dim, heads = cfg.embed_dim, cfg.num_heads
        q_bias = self.param("q_bias", nn.initializers.zeros, (dim,))
        v_bias = self.param("v_bias", nn.initializers.zeros, (dim,))
        qkv = nn.Dense(3 * dim, use_bias=False, dtype=self.dtype, name="qkv")(x)
        bias = jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(qkv.dtype)
        qkv = qkv + bias
        # Output feature j is (part j // D, head (j % D) // head_dim, channel j % head_dim):
        # (B, N, 3D) -> (B, N, 3, heads, head_dim)
        qkv = qkv.reshape(*qkv.shape[:-1], 3, heads, cfg.head_dim)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        # Scale head_dim^-0.5, softmax over keys (what the original computes by hand).
        out = attention(q, k, v, self.implementation)
        out = out.reshape(*out.shape[:-2], dim)
        return nn.Dense(dim, dtype=self.dtype, name="proj")(out)


class Mlp(nn.Module):
    config: VideoMAEConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.Dense(self.config.mlp_dim, dtype=self.dtype, name="fc1")(x)
        x = nn.gelu(x, approximate=False)  # the original's nn.GELU() is the exact (erf) form
        return nn.Dense(self.config.embed_dim, dtype=self.dtype, name="fc2")(x)


class Block(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)); no layer scale."""

    config: VideoMAEConfig
    dtype: Any = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg, dtype = self.config, self.dtype
        x = x + Attention(cfg, dtype, self.attention, name="attn")(_layer_norm("norm1", cfg, dtype)(x))
        return x + Mlp(cfg, dtype, name="mlp")(_layer_norm("norm2", cfg, dtype)(x))


class VideoMAE(nn.Module):
    """VideoMAE V2 ViT, `forward_features`: frames (B, T, H, W, 3) in [0, 1] -> (B, embed_dim) float32.

    `dtype` is the compute dtype (float32 reproduces the original; bfloat16 for speed). Parameters
    are used in whatever dtype they are given (e.g. the checkpoint's float16) and cast to `dtype`
    inside each layer. The token mean and `fc_norm` run in float32. `attention` picks the
    attention implementation (see `attention`; "auto" by default).
    """

    config: VideoMAEConfig = VideoMAEConfig()
    dtype: Any = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, frames: Array) -> Array:
        cfg = self.config
        expected = (cfg.num_frames, cfg.img_size, cfg.img_size, cfg.in_chans)
        if frames.ndim != 5 or tuple(frames.shape[1:]) != expected:
            raise ValueError(f"VideoMAE expects frames of shape (B, {', '.join(map(str, expected))}) "
                             f"(channels last, values in [0, 1]); got {tuple(frames.shape)}")
        x = PatchEmbed(cfg, self.dtype, name="patch_embed")(frames.astype(self.dtype))
        x = x + jnp.asarray(sinusoid_table(cfg.num_tokens, cfg.embed_dim), dtype=x.dtype)
        for index in range(cfg.depth):
            x = Block(cfg, self.dtype, self.attention, name=f"blocks_{index}")(x)
        pooled = x.astype(jnp.float32).mean(axis=1)
        return _layer_norm("fc_norm", cfg, jnp.float32)(pooled)


def _dummy_frames(config: VideoMAEConfig) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1, config.num_frames, config.img_size, config.img_size, config.in_chans),
                                jnp.float32)


def init_params(config: VideoMAEConfig, rng: Array | None = None, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Randomly initialised `{"params": ...}` for `config` (tests, demos), compiled as one program."""
    frames = _dummy_frames(config)
    init = jax.jit(lambda key: jax.tree.map(lambda p: p.astype(dtype), VideoMAE(config).init(
        key, jnp.zeros(frames.shape, frames.dtype))))
    return init(jax.random.key(0) if rng is None else rng)


def param_shapes(config: VideoMAEConfig) -> dict[str, Any]:
    """The `{"params": ...}` tree of `config` as ShapeDtypeStructs, without allocating anything."""
    return jax.eval_shape(VideoMAE(config).init, jax.random.key(0), _dummy_frames(config))


def count_params(params: Any) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


__all__ = ["ATTENTION_IMPLEMENTATIONS", "CHECKPOINT_FILE", "SIZES", "VideoMAE", "VideoMAEConfig", "attention",
           "chunked_attention", "count_params", "init_params", "param_shapes", "preprocess", "sinusoid_table"]
