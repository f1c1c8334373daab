"""LSTPNet (Lu et al., PRCV 2023 / IVC 2024) in Flax, from `docs/lstpnet-reference.md` sections 1-5.

ResNet-18 whose stages 2-4 gate each block's input with a temporal channel excitation (TCE), a TCE on
the last map, the per-frame mean, a two-layer temporal transformer (LSTformer) over each clip's
frames, the token mean and a linear classifier. Input: frames (B, T, H, W, 3) (channels last), RGB in
[0, 1]; released: T = 16, 224 x 224, but the weights fit any T, H, W. As the original: symmetric
explicit paddings, -inf max-pool padding, BatchNorm eps 1e-5 updating the running variance with the
unbiased batch variance (Flax momentum 0.9 = PyTorch 0.1), LayerNorm eps 1e-5 (two-pass), exact GELU.
`train=False` uses running statistics; `train=True` this device's batch statistics (DataParallel),
cross-device with `bn_axis_name`, updating the mutable `batch_stats`. Init is PyTorch's default.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pthnet_jax.models.fields import from_plain_dict

Array = jax.Array
INIT_FRAME_SIZE = 32  # parameters do not depend on H, W: initialise on small frames


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Nearest multiple of `divisor` (at least `divisor`), one step up if that lost over 10 %."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < round_limit * value else out


def tce_sizes(channels: int) -> tuple[int, int]:
    """(r, k) of a TCE on `channels`: r = make_divisible(C / 8), k = ECA's odd adaptive size (>= 3)."""
    t = int(abs(math.log(channels, 2) + 1) / 2)
    return make_divisible(channels / 8), max(t if t % 2 else t + 1, 3)


@dataclasses.dataclass(frozen=True)
class LSTPNetConfig:
    """Sizes of one LSTPNet. Defaults are the released model (24,619,686 parameters)."""

    num_classes: int = 7
    num_frames: int = 16  # frames per clip of the released model (the model takes T from its input)
    widths: tuple[int, ...] = (64, 128, 256, 512)  # stem/stage 1, stages 2, 3, 4; the last is the token width
    depth: int = 2  # LSTformer layers (the shared temporal conv + norm is used by each)
    num_heads: int = 8
    head_dim: int = 64
    mlp_dim: int = 4096
    bn_momentum: float = 0.9  # Flax convention (PyTorch momentum 0.1)
    bn_epsilon: float = 1e-5
    norm_eps: float = 1e-5  # every LayerNorm (PyTorch's default; Flax's would be 1e-6)
    bn_axis_name: str | None = None  # cross-device batch statistics; None: per device (DataParallel)

    def __post_init__(self):
        if isinstance(self.widths, list):  # from JSON
            object.__setattr__(self, "widths", tuple(self.widths))
        problems = []
        for name in ("num_classes", "num_frames", "depth", "num_heads", "head_dim", "mlp_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.widths, tuple) or len(self.widths) != 4 or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0
                                            for w in self.widths):
            problems.append(f"widths must be 4 positive integers (stem/stage 1, stages 2-4), got {self.widths!r}")
        elif self.num_heads == 1 and self.head_dim == self.dim:
            problems.append("num_heads=1 with head_dim equal to the token width: the original then has no "
                            "attention output projection, which this port does not build")
        if not 0.0 <= self.bn_momentum < 1.0:
            problems.append(f"bn_momentum (Flax convention) must be in [0, 1), got {self.bn_momentum}")
        if not (self.bn_epsilon > 0 and self.norm_eps > 0):
            problems.append("bn_epsilon and norm_eps must be positive")
        if self.bn_axis_name is not None and not isinstance(self.bn_axis_name, str):
            problems.append(f"bn_axis_name must be a string or None, got {self.bn_axis_name!r}")
        if problems:
            raise ValueError("LSTPNetConfig: " + "; ".join(problems))

    @property
    def dim(self) -> int:
        """Token width of the LSTformer (the stage-4 width)."""
        return self.widths[-1]

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim

    @classmethod
    def tiny(cls, **overrides: Any) -> "LSTPNetConfig":
        """A reduced member for tests and CPU demos (79,806 parameters)."""
        values = dict(widths=(8, 16, 16, 32), num_heads=2, head_dim=8, mlp_dim=48)
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "LSTPNetConfig":
        return from_plain_dict(cls, values)


# --- PyTorch's default initialisation ----------------------------------------------------------

def _uniform(bound: float):
    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def torch_kernel_init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """kaiming_uniform(a=sqrt(5)) = uniform +-1/sqrt(fan_in); fan_in = all kernel axes but the last."""
    return _uniform(1.0 / math.sqrt(max(1, int(np.prod(shape[:-1])))))(key, shape, dtype)


def _conv(features: int, kernel: tuple[int, ...], fan_in: int, *, name: str, dtype: Any, stride: int = 1,
          pad: int = 0, bias: bool = True, groups: int = 1) -> nn.Conv:
    """A conv with explicit symmetric padding and PyTorch's init (`fan_in` = in/groups x taps)."""
    return nn.Conv(features, kernel, strides=(stride,) * len(kernel), padding=((pad, pad),) * len(kernel),
                   use_bias=bias, feature_group_count=groups, dtype=dtype, kernel_init=torch_kernel_init,
                   bias_init=_uniform(1.0 / math.sqrt(fan_in)), name=name)


def _dense(features: int, fan_in: int, *, name: str, dtype: Any, bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=bias, dtype=dtype, kernel_init=torch_kernel_init,
                    bias_init=_uniform(1.0 / math.sqrt(fan_in)), name=name)


def _layer_norm(config: LSTPNetConfig, name: str, dtype: Any) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.norm_eps, use_fast_variance=False, dtype=dtype, name=name)


# --- layers --------------------------------------------------------------------------------------

class BatchNorm(nn.Module):
    """PyTorch's BatchNorm2d over the last axis: batch statistics (biased variance) in training, the
    running variance updated with the unbiased one; running statistics in evaluation."""

    config: LSTPNetConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        cfg, channels = self.config, x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((channels,), jnp.float32))
        xf = x.astype(jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            count = x.size // channels
            mean = xf.mean(axes)
            if cfg.bn_axis_name is not None:
                mean = jax.lax.pmean(mean, cfg.bn_axis_name)
                count = count * jax.lax.psum(1, cfg.bn_axis_name)
            var = jnp.square(xf - mean).mean(axes)  # two passes, as PyTorch
            if cfg.bn_axis_name is not None:
                var = jax.lax.pmean(var, cfg.bn_axis_name)
            if not self.is_initializing():
                keep = cfg.bn_momentum
                ra_mean.value = keep * ra_mean.value + (1 - keep) * jax.lax.stop_gradient(mean)
                unbiased = jax.lax.stop_gradient(var) * (count / jnp.maximum(count - 1, 1))
                ra_var.value = keep * ra_var.value + (1 - keep) * unbiased
        else:
            mean, var = ra_mean.value, ra_var.value
        y = (xf - mean) * jax.lax.rsqrt(var + cfg.bn_epsilon) * scale + bias
        return y.astype(self.dtype)


def spatial_max(x: Array) -> Array:
    """max over H, W of (N, H, W, C) -> (N, C), its gradient going to one arg-max position per map (as
    PyTorch's max-pool does). `x.max(axis=(1, 2))` would find its arg-max again in the backward pass by
    comparing with a recomputed forward value; XLA may recompute it with other rounding (seen on CPU
    at optimisation level 0 after a BatchNorm), find no match and divide 0 by 0."""
    n, h, w, c = x.shape
    flat = x.reshape(n, h * w, c)
    index = jnp.argmax(flat, axis=1)[:, None, :]
    return jnp.take_along_axis(flat, index, axis=1)[:, 0, :]


class TCE(nn.Module):
    """Temporal channel excitation: x (N, H, W, C) with N = clips x `frames` -> x * gate, gate in (0, 2)."""

    frames: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        n, _, _, c = x.shape
        r, k = tce_sizes(c)
        clips, t, h = n // self.frames, self.frames, (k - 1) // 2
        chan_in = _conv(r, (k,), k, pad=h, name="chan_in", dtype=self.dtype)
        time = _conv(c, (3,), 3 * c, pad=1, bias=False, name="time", dtype=self.dtype)
        chan_out = _conv(1, (k,), r * k, pad=h, name="chan_out", dtype=self.dtype)
        # Both descriptors (max, mean over H, W) through the same convs, stacked on the batch axis.
        d = jnp.stack([spatial_max(x), x.mean(axis=(1, 2))])  # (2, N, C)
        u = chan_in(d.reshape(2 * n, c, 1))  # along channels: (2N, C, r)
        u = u.reshape(2 * clips, t, c, r).transpose(0, 3, 1, 2).reshape(2 * clips * r, t, c)
        v = time(u)  # along time, channels dense, per clip and feature map
        v = v.reshape(2 * clips, r, t, c).transpose(0, 2, 3, 1).reshape(2 * n, c, r)
        z = chan_out(nn.relu(v)).reshape(2, n, c)  # along channels, r -> 1
        gate = 2.0 * nn.sigmoid(z[0] + z[1])
        return x * gate[:, None, None, :].astype(x.dtype)


class Block(nn.Module):
    """Residual block; with `tce`, the main branch and projection read the gated input, an identity
    shortcut the ungated one."""

    config: LSTPNetConfig
    features: int
    frames: int
    stride: int = 1
    tce: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        cfg, p, c_in = self.config, self.features, x.shape[-1]
        g = TCE(self.frames, self.dtype, name="tce")(x) if self.tce else x
        y = _conv(p, (3, 3), 9 * c_in, stride=self.stride, pad=1, name="conv1", dtype=self.dtype)(g)
        y = nn.relu(BatchNorm(cfg, self.dtype, name="bn1")(y, train))
        y = _conv(p, (3, 3), 9 * p, pad=1, name="conv2", dtype=self.dtype)(y)
        y = BatchNorm(cfg, self.dtype, name="bn2")(y, train)
        if self.stride != 1 or c_in != p:
            shortcut = _conv(p, (1, 1), c_in, stride=self.stride, name="proj_conv", dtype=self.dtype)(g)
            shortcut = BatchNorm(cfg, self.dtype, name="proj_bn")(shortcut, train)
        else:
            shortcut = x
        return nn.relu(y + shortcut)


class Backbone(nn.Module):
    """Stem (7x7/2 conv without bias, BN, ReLU, 3x3/2 max-pool) and four stages of two blocks."""

    config: LSTPNetConfig
    frames: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        cfg = self.config
        x = _conv(cfg.widths[0], (7, 7), 49 * x.shape[-1], stride=2, pad=3, bias=False, name="stem_conv",
                  dtype=self.dtype)(x)
        x = nn.relu(BatchNorm(cfg, self.dtype, name="stem_bn")(x, train))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # pads with -inf
        for stage, width in enumerate(cfg.widths, start=1):
            for index in range(2):
                stride = 2 if stage > 1 and index == 0 else 1
                x = Block(cfg, width, self.frames, stride, tce=stage > 1, dtype=self.dtype,
                          name=f"layer{stage}_{index}")(x, train)
        return x


class Layer(nn.Module):
    """One LSTformer layer after the shared conv + norm: pre-norm attention, then the pre-norm FFN."""

    config: LSTPNetConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        cfg, dtype = self.config, self.dtype
        b, t, d = x.shape
        heads, hd, inner, hidden = cfg.num_heads, cfg.head_dim, cfg.inner_dim, cfg.mlp_dim
        qkv = _dense(3 * inner, d, bias=False, name="qkv", dtype=dtype)(_layer_norm(cfg, "attn_norm", dtype)(x))
        q, k, v = jnp.moveaxis(qkv.reshape(b, t, 3, heads, hd), 2, 0)  # each (B, T, heads, hd)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * hd ** -0.5
        attn = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", attn.astype(v.dtype), v).reshape(b, t, inner)
        x = x + _dense(d, inner, name="attn_out", dtype=dtype)(out)
        h = _dense(hidden, d, name="fc1", dtype=dtype)(_layer_norm(cfg, "ffn_norm", dtype)(x))
        h = _layer_norm(cfg, "ln1", dtype)(nn.gelu(h, approximate=False))
        h = h + _conv(hidden, (3,), 3, pad=1, groups=hidden, name="dwconv", dtype=dtype)(h)  # over tokens
        h = _layer_norm(cfg, "ln2", dtype)(nn.gelu(h, approximate=False))
        h = _layer_norm(cfg, "ln3", dtype)(_dense(d, hidden, name="fc2", dtype=dtype)(h))
        return x + h, attn


class LSTformer(nn.Module):
    """`depth` layers, each preceded by x = norm(x + conv(x)) with ONE shared conv and norm."""

    config: LSTPNetConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:  # (B, T, D) -> (B, T, D), (B, heads, T, T)
        cfg, d = self.config, self.config.dim
        shared_tc = _conv(d, (3,), 3 * d, pad=1, name="shared_tc", dtype=self.dtype)
        shared_norm = _layer_norm(cfg, "shared_norm", self.dtype)
        attn = None
        for index in range(cfg.depth):
            x = shared_norm(x + shared_tc(x))
            x, attn = Layer(cfg, self.dtype, name=f"layer_{index}")(x)
        return x, attn


class LSTPNet(nn.Module):
    """frames (B, T, H, W, 3) in [0, 1] -> {"logits" (B, C), "features" (B, D), "frame_features"
    (B*T, D), "attention" (B, heads, T, T)}, all float32. `dtype` is the compute dtype."""

    config: LSTPNetConfig = LSTPNetConfig()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, frames: Array, *, train: bool) -> dict[str, Array]:
        cfg = self.config
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"LSTPNet expects frames of shape (B, T, H, W, 3) (channels last, values in "
                             f"[0, 1]); got {tuple(frames.shape)}")
        b, t, height, width, _ = frames.shape
        x = frames.reshape(b * t, height, width, 3).astype(self.dtype)
        x = Backbone(cfg, t, self.dtype, name="backbone")(x, train)
        x = TCE(t, self.dtype, name="head_tce")(x)
        frame_features = x.astype(jnp.float32).mean(axis=(1, 2))  # (N, D)
        tokens, attn = LSTformer(cfg, self.dtype, name="lstformer")(frame_features.reshape(b, t, cfg.dim)
                                                                    .astype(self.dtype))
        features = tokens.astype(jnp.float32).mean(axis=1)
        logits = _dense(cfg.num_classes, cfg.dim, name="classifier", dtype=jnp.float32)(features)
        return {"logits": logits, "features": features, "frame_features": frame_features,
                "attention": attn.astype(jnp.float32)}


def init_variables(config: LSTPNetConfig, seed: int = 0) -> dict[str, Any]:
    """`LSTPNet.init`'s distributions as float32 numpy `{"params", "batch_stats"}`, drawn on the shapes of
    `variable_shapes` (compiling `init` takes tens of seconds on a CPU): conv/dense weights and biases
    uniform +-1/sqrt(fan_in of the kernel), norm scales 1 and biases 0, running means 0, variances 1."""
    from flax import traverse_util

    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(variable_shapes(config))
    out = {}
    for path, leaf in flat.items():
        parent, name = path[:-1], path[-1]
        kernel = flat.get(parent + ("kernel",))
        if path[0] == "batch_stats":
            value = np.full(leaf.shape, 1.0 if name == "var" else 0.0)
        elif kernel is not None:  # a conv or dense layer: its kernel and bias
            value = rng.uniform(-1, 1, leaf.shape) / math.sqrt(int(np.prod(kernel.shape[:-1])))
        else:  # a norm
            value = np.full(leaf.shape, 1.0 if name == "scale" else 0.0)
        out[path] = value.astype(np.float32)
    return traverse_util.unflatten_dict(out)


def variable_shapes(config: LSTPNetConfig) -> dict[str, Any]:
    """The `{"params", "batch_stats"}` tree of `config` as ShapeDtypeStructs, nothing allocated."""
    frames = jax.ShapeDtypeStruct((1, config.num_frames, INIT_FRAME_SIZE, INIT_FRAME_SIZE, 3), jnp.float32)
    return jax.eval_shape(lambda key, x: LSTPNet(config).init(key, x, train=False), jax.random.key(0), frames)


def count_params(params: Any) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


__all__ = ["LSTPNet", "LSTPNetConfig", "count_params", "init_variables", "make_divisible", "tce_sizes",
           "torch_kernel_init", "variable_shapes"]
