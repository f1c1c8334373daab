"""PTH-Net in Flax: temporal feature pyramid -> temporal hierarchy (THR layers) -> logits.

Channels-last throughout: features are (B, T, C) and masks (B, T) bool, where the original works in
(B, C, T). The behaviour reproduces the original PyTorch release, including the quirks marked
"as-is" in `docs/pthnet-reference.md` (padded steps enter layer norms, pooling divides by T, ...),
so that an imported PyTorch checkpoint gives the same logits.

Parameter names mirror the original's module names (`embd_0`, `stem_1/cross_att/query_norm`, ...)
so the converter in `pthnet_jax.convert.mapping` is a table of renames and transposes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from pthnet_jax.models.fields import from_plain_dict
from pthnet_jax.pyramid import LEVELS, level_lengths

_NORM_EPS = 1e-5  # PyTorch's LayerNorm / GroupNorm default (Flax's is 1e-6).

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Every field of the original model's constructor, with the original's defaults."""

    n_in: int = 1408
    n_embd: int = 512
    mlp_dim: int = 768
    max_len: int = 16
    arch: tuple[int, int, int, int] = (2, 2, 1, 1)  # (embedding convs, stem, branch_1, branch_2)
    scale_factor: int = 2
    with_ln: bool = True
    path_pdrop: float = 0.1
    downsample_type: str = "max"
    thr_size: tuple[int, int, int, int] = (3, 1, 3, 3)  # kernels of (embedding, stem, branch_1, branch_2)
    k: tuple[int, int, int] = (1, 3, 5)  # (k_L, k_M, k_H)
    num_classes: int = 7
    use_pos: bool = False
    num_heads: int = 8

    def __post_init__(self):
        # Normalise lists (from JSON or ml-collections) to tuples so the config stays hashable.
        for name in ("arch", "thr_size", "k"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        problems = []
        if len(self.arch) != 4 or len(self.thr_size) != 4 or len(self.k) != 3:
            problems.append("arch and thr_size need 4 entries, k needs 3")
        if any(size % 2 == 0 for size in (*self.thr_size, *self.k)):
            problems.append(f"kernel sizes must be odd, got thr_size={self.thr_size}, k={self.k}")
        if self.num_classes < 1 or self.n_in < 1:
            problems.append(f"num_classes and n_in must be >= 1, got {self.num_classes} and {self.n_in}")
        if self.n_embd % self.num_heads:
            problems.append(f"n_embd={self.n_embd} is not divisible by num_heads={self.num_heads}")
        if self.n_embd % 16:
            problems.append(f"n_embd={self.n_embd} must be divisible by 16 (GroupNorm with 16 groups)")
        if self.max_len % 4:
            problems.append(f"max_len={self.max_len} must be divisible by 4 (levels use max_len/4, /2, /1)")
        if self.downsample_type != "max":
            problems.append(f"downsample_type={self.downsample_type!r}: only 'max' is implemented")
        if self.scale_factor != 2:
            problems.append(f"scale_factor={self.scale_factor}: only 2 is implemented")
        if self.use_pos:
            problems.append("use_pos=True is not implemented (the released model does not use it)")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def level_lengths(self) -> dict[str, int]:
        """Time steps fed to the model per pyramid level."""
        return level_lengths(self.max_len)

    @property
    def level_kernels(self) -> dict[str, int]:
        return dict(zip(LEVELS, self.k))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        return from_plain_dict(cls, values)


class DepthwiseConv1D(nn.Module):
    """Per-channel 1-D convolution with zero 'same' padding (torch Conv1d with groups=C).

    Kernels here are at most 5 wide, so a sum of shifted copies beats a grouped convolution call.
    """

    kernel_size: int
    use_bias: bool = True
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:  # (B, T, C) -> (B, T, C)
        channels = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(in_axis=0, out_axis=1),
                            (self.kernel_size, channels))
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        half = self.kernel_size // 2
        length = x.shape[1]
        padded = jnp.pad(x, ((0, 0), (half, half), (0, 0)))
        out = sum(padded[:, tap:tap + length, :] * kernel[tap] for tap in range(self.kernel_size))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (channels,))
            out = out + bias.astype(out.dtype)
        return out


class TemporalConv(nn.Module):
    """Full 1-D convolution over time, zero 'same' padding, as one matrix product (B, T, Cin) -> (B, T, Cout).

    Parameters as `nn.Conv` has them (kernel (K, Cin, Cout), same initialiser). The K shifted copies of
    the input are laid side by side and multiplied by the kernel seen as (K * Cin, Cout): on CPU, XLA
    runs a convolution's gradient inside a loop (several steps per call) or a conditional ~15x slower
    than this product, and it is no slower anywhere else.
    """

    features: int
    kernel_size: int
    use_bias: bool = True
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        in_features = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (self.kernel_size, in_features, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        half, length = self.kernel_size // 2, x.shape[1]
        padded = jnp.pad(x, ((0, 0), (half, half), (0, 0)))
        columns = jnp.concatenate([padded[:, tap:tap + length] for tap in range(self.kernel_size)], axis=-1)
        out = columns @ kernel.reshape(self.kernel_size * in_features, self.features)
        return out if bias is None else out + bias


def _layer_norm(name: str, dtype: Any) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=_NORM_EPS, use_fast_variance=False, dtype=dtype, name=name)


class AffineDropPath(nn.Module):
    """Learnable per-channel scale (init 1e-4), then per-sample stochastic depth while training."""

    drop_prob: float
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        scale = self.param("scale", nn.initializers.constant(1e-4), (x.shape[-1],))
        x = x * scale.astype(x.dtype)
        if not train or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        survive = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0], 1, 1))
        return jnp.where(survive, x / keep, jnp.zeros_like(x))


class MaskedCrossAttention(nn.Module):
    """Masked multi-head cross attention with depthwise-conv q/k/v stems (`cross_att`)."""

    num_heads: int
    dtype: Any = None

    @nn.compact
    def __call__(self, query: Array, key_value: Array, mask: Array) -> Array:
        batch, length, channels = query.shape
        head_dim = channels // self.num_heads
        step_mask = mask[..., None].astype(query.dtype)  # (B, T, 1)

        def stem(inputs: Array, name: str) -> Array:
            conv = DepthwiseConv1D(3, use_bias=False, dtype=self.dtype, name=f"{name}_conv")
            return _layer_norm(f"{name}_norm", self.dtype)(conv(inputs) * step_mask)

        q = nn.Dense(channels, dtype=self.dtype, name="query")(stem(query, "query"))
        k = nn.Dense(channels, dtype=self.dtype, name="key")(stem(key_value, "key"))
        v = nn.Dense(channels, dtype=self.dtype, name="value")(stem(key_value, "value"))
        v = v * step_mask.astype(v.dtype)

        # (B, T, C) -> (B, T, heads, head_dim); channel c belongs to head c // head_dim as in torch.
        q = q.reshape(batch, length, self.num_heads, head_dim)
        k = k.reshape(batch, length, self.num_heads, head_dim)
        v = v.reshape(batch, length, self.num_heads, head_dim)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q * (1.0 / math.sqrt(head_dim)), k)
        # A finite minimum instead of -inf: identical whenever a clip has one valid step (always, for
        # real clips), and no NaN for the all-padding rows of a padded evaluation batch.
        scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, channels)
        return nn.Dense(channels, dtype=self.dtype, name="proj")(out) * step_mask.astype(out.dtype)


class THRLayer(nn.Module):
    """One THR ("SSD") layer; all levels share it except the per-level `convw_*`/`convkw_*` pairs."""

    kernel_size: int
    k: tuple[int, int, int]
    mlp_dim: int
    num_heads: int
    path_pdrop: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, mask: Array, level: str, train: bool) -> Array:
        channels = x.shape[-1]
        level_kernel = dict(zip(LEVELS, self.k))[level]

        def dw(size: int, name: str) -> DepthwiseConv1D:
            return DepthwiseConv1D(size, dtype=self.dtype, name=name)

        normed = _layer_norm("ln", self.dtype)(x)
        psi = dw(self.kernel_size, "psi")(normed)
        gate = dw(1, "fc")(normed)
        level_weight = (dw(self.kernel_size, f"convw_{level}")(normed)
                        + dw(level_kernel, f"convkw_{level}")(normed))
        # Global context: mean over ALL steps, padding included (as-is).
        context = nn.relu(dw(1, "global_fc")(jnp.mean(normed, axis=1, keepdims=True)))
        attended = MaskedCrossAttention(self.num_heads, dtype=self.dtype, name="cross_att")(
            level_weight * psi, gate * context, mask)

        step_mask = mask[..., None].astype(x.dtype)
        out = x * step_mask + self._drop_path("drop_path_out", attended + normed, train)
        # GroupNorm statistics over all steps, padding included (as-is).
        hidden = nn.GroupNorm(num_groups=16, epsilon=_NORM_EPS, use_fast_variance=False,
                              dtype=self.dtype, name="gn")(out)
        hidden = nn.Dense(self.mlp_dim, dtype=self.dtype, name="mlp_fc1")(hidden)
        hidden = nn.gelu(hidden, approximate=False)
        hidden = nn.Dense(channels, dtype=self.dtype, name="mlp_fc2")(hidden)
        return out + self._drop_path("drop_path_mlp", hidden, train)

    def _drop_path(self, name: str, x: Array, train: bool) -> Array:
        # Without drop path the original uses identities (no scale parameter at all).
        if self.path_pdrop <= 0.0:
            return x
        return AffineDropPath(self.path_pdrop, dtype=self.dtype, name=name)(x, train)


def _downsample(x: Array, mask: Array) -> tuple[Array, Array]:
    """Max-pool over time (kernel 3, stride 2, -inf padding 1), mask by nearest neighbour."""
    length = x.shape[1]
    pooled = nn.max_pool(x, window_shape=(3,), strides=(2,), padding=((1, 1),))
    out_length = length // 2
    source = (jnp.arange(out_length) * length) // out_length  # floor(i * T / (T // 2))
    return pooled[:, :out_length], mask[:, source]


class PTHNet(nn.Module):
    """PTH-Net over any subset of the pyramid levels "L", "M", "H".

    `apply(variables, features, masks, train=...)` with dicts keyed by level; returns a dict of
    (B, num_classes) logits keyed the same way. All weights are shared between levels except the
    per-level depthwise convs inside each THR layer.
    """

    config: ModelConfig
    dtype: Any = None  # compute dtype (e.g. jnp.bfloat16); parameters stay float32

    def setup(self):
        cfg = self.config
        self.embd = [TemporalConv(cfg.n_embd, cfg.thr_size[0], use_bias=not cfg.with_ln, dtype=self.dtype,
                                  name=f"embd_{i}") for i in range(cfg.arch[0])]
        self.embd_norm = ([_layer_norm(f"embd_norm_{i}", self.dtype) for i in range(cfg.arch[0])]
                          if cfg.with_ln else None)

        def thr_layers(stage: str, depth: int, kernel: int, pdrop: float) -> list[THRLayer]:
            return [THRLayer(kernel, cfg.k, cfg.mlp_dim, cfg.num_heads, pdrop, dtype=self.dtype,
                             name=f"{stage}_{i}") for i in range(depth)]

        # The original builds the stem without drop path and the branches with it.
        self.stem = thr_layers("stem", cfg.arch[1], cfg.thr_size[1], 0.0)
        self.branch_1 = thr_layers("branch_1", cfg.arch[2], cfg.thr_size[2], cfg.path_pdrop)
        self.branch_2 = thr_layers("branch_2", cfg.arch[3], cfg.thr_size[3], cfg.path_pdrop)
        self.head = nn.Dense(cfg.num_classes, dtype=self.dtype, name="head")

    def trunk(self, features: Array, mask: Array, level: str, train: bool) -> tuple[Array, Array]:
        """Embedding, stem and branches for one level: (B, T, n_in) -> (B, T', n_embd), mask (B, T')."""
        x = features
        step_mask = mask[..., None]
        for i, conv in enumerate(self.embd):
            x = conv(x) * step_mask.astype(x.dtype)
            if self.embd_norm is not None:
                x = self.embd_norm[i](x)
            x = nn.relu(x)  # padded steps hold ReLU(LN bias) from here on (as-is)
        for layer in self.stem:
            x = layer(x, mask, level, train)
        for stage in (self.branch_1, self.branch_2):
            if not stage:
                break  # the original stops before a downsample whose branch is empty
            x, mask = _downsample(x, mask)
            for layer in stage:
                x = layer(x, mask, level, train)
        return x, mask

    def __call__(self, features: Mapping[str, Array], masks: Mapping[str, Array],
                 train: bool = False) -> dict[str, Array]:
        unknown = sorted(set(features) - set(LEVELS))
        if unknown or set(features) != set(masks):
            raise ValueError(f"features/masks must share keys from {LEVELS}; got features "
                             f"{sorted(features)} and masks {sorted(masks)}")
        logits = {}
        for level in LEVELS:
            if level not in features:
                continue
            x, mask = self.trunk(features[level], masks[level].astype(bool), level, train)
            # Mean over ALL steps of the masked features, i.e. divided by T, not by valid steps (as-is).
            pooled = jnp.mean(x * mask[..., None].astype(x.dtype), axis=1)
            logits[level] = self.head(pooled).astype(jnp.float32)
        return logits


def dummy_inputs(config: ModelConfig, batch_size: int = 1,
                 levels: tuple[str, ...] = LEVELS) -> tuple[dict[str, Array], dict[str, Array]]:
    """Zero features and all-valid masks of the right shapes, for initialisation and tracing."""
    lengths = config.level_lengths
    features = {lvl: jnp.zeros((batch_size, lengths[lvl], config.n_in), jnp.float32) for lvl in levels}
    masks = {lvl: jnp.ones((batch_size, lengths[lvl]), bool) for lvl in levels}
    return features, masks


def init_variables(model: PTHNet, rng: Array) -> dict[str, Any]:
    """Initialise all parameters (every level's, so `convw_L/M/H` all exist)."""
    features, masks = dummy_inputs(model.config)
    return model.init({"params": rng}, features, masks, train=False)


def abstract_variables(config: ModelConfig) -> dict[str, Any]:
    """Shapes and dtypes of the variables, without computing anything (a restore target)."""
    return jax.eval_shape(lambda: init_variables(PTHNet(config), jax.random.key(0)))


def count_params(params: Any) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))
