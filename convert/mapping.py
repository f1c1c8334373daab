"""Pure functions between the original's PyTorch state dict and the Flax params tree.

Layouts (PyTorch -> Flax):
- Conv1d (out, in/groups, k) full conv  -> TemporalConv kernel (k, in, out) (nn.Conv's layout)
- Conv1d (C, 1, k) depthwise            -> DepthwiseConv1D kernel (k, C)
- Conv1d (out, in, 1) 1x1 projection    -> nn.Dense kernel (in, out)
- Linear (out, in)                      -> nn.Dense kernel (in, out)
- channel LayerNorm weight/bias (1, C, 1), AffineDropPath scale (1, C, 1) -> (C,)
- GroupNorm weight/bias (C,)            -> scale/bias (C,)
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Callable, Iterable, Mapping

import ml_dtypes
import numpy as np

from pthnet_jax.convert.errors import show
from pthnet_jax.models.pthnet import LEVELS, ModelConfig

PREFIX = "module."
STAGES = ("stem", "branch_1", "branch_2")


class MappingError(ValueError):
    """State dict keys or shapes that do not fit the PTH-Net architecture."""


def strip_prefix(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Remove DataParallel's `module.` prefix when every key has it."""
    keys = list(state_dict)
    if keys and all(key.startswith(PREFIX) for key in keys):
        return {key[len(PREFIX):]: value for key, value in state_dict.items()}, True
    return dict(state_dict), False


# Transforms: (torch -> flax, flax -> torch given the torch shape).
def _conv_full(t: np.ndarray) -> np.ndarray:
    return np.transpose(t, (2, 1, 0))


def _depthwise(t: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(t[:, 0, :].T)


def _pointwise(t: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(t[:, :, 0].T)


def _linear(t: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(t.T)


def _vector(t: np.ndarray) -> np.ndarray:  # (C,) biases, GroupNorm affine
    if t.ndim != 1:
        raise ValueError("expected a vector")
    return t


def _channel(t: np.ndarray) -> np.ndarray:  # (1, C, 1) channel LayerNorm affine, drop-path scale
    if t.ndim != 3 or t.shape[0] != 1 or t.shape[2] != 1:
        raise ValueError("expected (1, C, 1)")
    return t.reshape(-1)


_INVERSE: dict[Callable, Callable[[np.ndarray, tuple[int, ...]], np.ndarray]] = {
    _conv_full: lambda f, shape: np.ascontiguousarray(np.transpose(f, (2, 1, 0))),
    _depthwise: lambda f, shape: np.ascontiguousarray(f.T[:, None, :]),
    _pointwise: lambda f, shape: np.ascontiguousarray(f.T[:, :, None]),
    _linear: lambda f, shape: np.ascontiguousarray(f.T),
    _vector: lambda f, shape: f,
    _channel: lambda f, shape: f.reshape(1, -1, 1),
}


def _thr_layer_table(torch_prefix: str, flax_prefix: str, drop_path: bool) -> list[tuple[str, str, Callable]]:
    rows = [(f"{torch_prefix}.ln.weight", f"{flax_prefix}/ln/scale", _channel),
            (f"{torch_prefix}.ln.bias", f"{flax_prefix}/ln/bias", _channel),
            (f"{torch_prefix}.gn.weight", f"{flax_prefix}/gn/scale", _vector),
            (f"{torch_prefix}.gn.bias", f"{flax_prefix}/gn/bias", _vector)]
    convs = ["psi", "fc", *(f"convw_{lvl}" for lvl in ("H", "M", "L")),
             *(f"convkw_{lvl}" for lvl in ("H", "M", "L")), "global_fc"]
    for conv in convs:
        rows += [(f"{torch_prefix}.{conv}.weight", f"{flax_prefix}/{conv}/kernel", _depthwise),
                 (f"{torch_prefix}.{conv}.bias", f"{flax_prefix}/{conv}/bias", _vector)]
    att_t, att_f = f"{torch_prefix}.cross_att", f"{flax_prefix}/cross_att"
    for name in ("query", "key", "value"):
        rows += [(f"{att_t}.{name}_conv.conv.weight", f"{att_f}/{name}_conv/kernel", _depthwise),
                 (f"{att_t}.{name}_norm.weight", f"{att_f}/{name}_norm/scale", _channel),
                 (f"{att_t}.{name}_norm.bias", f"{att_f}/{name}_norm/bias", _channel)]
    for name in ("key", "query", "value", "proj"):
        rows += [(f"{att_t}.{name}.weight", f"{att_f}/{name}/kernel", _pointwise),
                 (f"{att_t}.{name}.bias", f"{att_f}/{name}/bias", _vector)]
    rows += [(f"{torch_prefix}.mlp.0.weight", f"{flax_prefix}/mlp_fc1/kernel", _pointwise),
             (f"{torch_prefix}.mlp.0.bias", f"{flax_prefix}/mlp_fc1/bias", _vector),
             (f"{torch_prefix}.mlp.2.weight", f"{flax_prefix}/mlp_fc2/kernel", _pointwise),
             (f"{torch_prefix}.mlp.2.bias", f"{flax_prefix}/mlp_fc2/bias", _vector)]
    if drop_path:
        rows += [(f"{torch_prefix}.drop_path_out.scale", f"{flax_prefix}/drop_path_out/scale", _channel),
                 (f"{torch_prefix}.drop_path_mlp.scale", f"{flax_prefix}/drop_path_mlp/scale", _channel)]
    return rows


def _unused_keys(torch_prefix: str) -> list[str]:
    base = f"{torch_prefix}." if torch_prefix else ""
    return [f"{base}pos_embed.conv.weight", f"{base}pos_embed.conv.bias",
            f"{base}pos_embed_norm.weight", f"{base}pos_embed_norm.bias"]


def key_table(config: ModelConfig) -> tuple[list[tuple[str, str, Callable]], list[str]]:
    """(torch key, flax path, transform) rows in the original's state_dict order, and unused keys.

    The unused keys (never read by the forward pass) are listed in state_dict order too; the returned
    order of `torch_keys_in_order` interleaves them where the original registers them.
    """
    rows: list[tuple[str, str, Callable]] = []
    for i in range(config.arch[0]):
        rows.append((f"embd.{i}.conv.weight", f"embd_{i}/kernel", _conv_full))
        if not config.with_ln:
            rows.append((f"embd.{i}.conv.bias", f"embd_{i}/bias", _vector))
    if config.with_ln:
        for i in range(config.arch[0]):
            rows += [(f"embd_norm.{i}.weight", f"embd_norm_{i}/scale", _channel),
                     (f"embd_norm.{i}.bias", f"embd_norm_{i}/bias", _channel)]
    unused = _unused_keys("")
    for stage, depth in zip(STAGES, config.arch[1:]):
        for i in range(depth):
            rows += _thr_layer_table(f"{stage}.{i}", f"{stage}_{i}",
                                     drop_path=stage != "stem" and config.path_pdrop > 0)
            unused += _unused_keys(f"{stage}.{i}")
    rows += [("head.weight", "head/kernel", _linear), ("head.bias", "head/bias", _vector)]
    return rows, unused


def torch_keys_in_order(config: ModelConfig) -> list[str]:
    """Every key of the original model's state_dict, in its registration order."""
    rows, _ = key_table(config)
    mapped = [torch_key for torch_key, _, _ in rows]
    ordered: list[str] = []
    # Model level: embd, embd_norm, pos_embed, pos_embed_norm, stem..., branch_1..., branch_2..., head.
    head = [k for k in mapped if k.startswith("head.")]
    embedding = [k for k in mapped if k.startswith(("embd.", "embd_norm."))]
    ordered += embedding + _unused_keys("")
    for stage, depth in zip(STAGES, config.arch[1:]):
        for i in range(depth):
            ordered += [k for k in mapped if k.startswith(f"{stage}.{i}.")] + _unused_keys(f"{stage}.{i}")
    return ordered + head


# Sane bounds for a config inferred from a file (a crafted key such as `stem.1000000000000.x` or a
# huge tensor shape must not turn into an absurd model).
MAX_LAYERS = 64
MAX_WIDTH = 1 << 16
MAX_KERNEL = 63


def check_config_bounds(config: ModelConfig) -> None:
    """MappingError unless every size of `config` is within the bounds a real PTH-Net could have."""
    problems = []
    for name in ("n_in", "n_embd", "mlp_dim", "num_classes"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_WIDTH:
            problems.append(f"{name}={value!r} (1..{MAX_WIDTH})")
    if not all(0 <= n <= MAX_LAYERS for n in config.arch) or config.arch[0] < 1:
        problems.append(f"arch={config.arch} (each 0..{MAX_LAYERS}, at least one embedding conv)")
    if not all(1 <= n <= MAX_KERNEL for n in (*config.thr_size, *config.k)):
        problems.append(f"thr_size={config.thr_size}, k={config.k} (kernels 1..{MAX_KERNEL})")
    if not isinstance(config.max_len, int) or not 4 <= config.max_len <= 4096:
        problems.append(f"max_len={config.max_len!r} (4..4096)")
    if not isinstance(config.num_heads, int) or not 1 <= config.num_heads <= 256:
        problems.append(f"num_heads={config.num_heads!r} (1..256)")
    if not isinstance(config.path_pdrop, (int, float)) or not 0.0 <= config.path_pdrop < 1.0:
        problems.append(f"path_pdrop={config.path_pdrop!r} (0..1)")
    if problems:
        raise MappingError("config out of the supported bounds: " + ", ".join(problems))


def _count_indices(keys: Iterable[str], stage: str) -> int:
    """Layers of a stage: indices must run 0..n-1 with n <= MAX_LAYERS."""
    pattern = re.compile(rf"^{re.escape(stage)}\.(\d+)\.")
    found = {m.group(1) for key in keys if (m := pattern.match(key))}
    if not found:
        return 0
    if any(len(text) > 3 or (text != "0" and text.startswith("0")) for text in found):
        raise MappingError(f"layer indices of '{stage}' out of range: "
                           f"{sorted(found, key=len)[-3:]} (at most {MAX_LAYERS} layers)")
    indices = {int(text) for text in found}
    if max(indices) >= MAX_LAYERS or len(indices) != max(indices) + 1:
        raise MappingError(f"layer indices of '{stage}' are not 0..n-1 with n <= {MAX_LAYERS}: "
                           f"{sorted(indices)[:10]}")
    return len(indices)


def infer_config(state_dict: Mapping[str, np.ndarray]) -> tuple[ModelConfig, list[str]]:
    """Model config from tensor shapes, and notes on what could not be inferred."""
    keys = list(state_dict)
    if "embd.0.conv.weight" not in state_dict or "head.weight" not in state_dict:
        raise MappingError("not a PTH-Net state dict: 'embd.0.conv.weight' and 'head.weight' are "
                           f"required; found keys starting with {sorted({k.split('.')[0] for k in keys})}")
    embd = state_dict["embd.0.conv.weight"]
    head = state_dict["head.weight"]
    if not isinstance(embd, np.ndarray) or not isinstance(head, np.ndarray) or np.ndim(embd) != 3 \
            or np.ndim(head) != 2:
        raise MappingError(f"'embd.0.conv.weight' must be 3-D (out, in, k), got {np.shape(embd)}; "
                           f"'head.weight' must be 2-D (classes, channels), got {np.shape(head)}")
    arch = (_count_indices(keys, "embd"), *(_count_indices(keys, stage) for stage in STAGES))
    defaults = ModelConfig()
    def dim(key: str, axis: int) -> int:
        value = state_dict.get(key)
        if value is None:
            raise MappingError(f"missing key '{key}' needed to infer the THR layer shapes")
        if np.ndim(value) <= axis:
            raise MappingError(f"'{key}' has shape {np.shape(value)}: expected at least {axis + 1} axes")
        return int(np.shape(value)[axis])

    thr_size = [embd.shape[2]]
    for stage, depth, default in zip(STAGES, arch[1:], defaults.thr_size[1:]):
        key = f"{stage}.0.psi.weight"
        thr_size.append(dim(key, 2) if depth else default)
    first_thr = next((f"{s}.0" for s, d in zip(STAGES, arch[1:]) if d), None)
    k = defaults.k
    mlp_dim = defaults.mlp_dim
    if first_thr is not None:
        k = tuple(dim(f"{first_thr}.convkw_{lvl}.weight", 2) for lvl in LEVELS)
        mlp_dim = dim(f"{first_thr}.mlp.0.weight", 0)
    has_drop_path = any(".drop_path_out.scale" in key for key in keys)
    notes = ["max_len, scale_factor, downsample_type and use_pos are not stored in a state dict: "
             "using the original's defaults (16, 2, 'max', False)"]
    if has_drop_path:
        notes.append("drop-path scales present: path_pdrop set to the original's 0.1 (the rate itself "
                     "is not stored)")
    try:
        config = ModelConfig(n_in=int(embd.shape[1]), n_embd=int(embd.shape[0]), mlp_dim=int(mlp_dim),
                             arch=arch, with_ln="embd_norm.0.weight" in state_dict,
                             path_pdrop=0.1 if has_drop_path else 0.0, thr_size=tuple(thr_size), k=k,
                             num_classes=int(head.shape[0]))
    except (ValueError, TypeError) as err:
        raise MappingError(f"the tensor shapes give an unsupported config: {err}") from err
    check_config_bounds(config)
    return config, notes


def _check_keys(state_dict: Mapping[str, np.ndarray], expected: list[str]) -> None:
    expected_set = set(expected)  # once: a membership test per key, linear overall
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected_set]
    if missing or unexpected:
        raise MappingError("state dict does not match the inferred PTH-Net architecture:\n"
                           f"  missing keys ({len(missing)}): {_some(missing)}\n"
                           f"  unexpected keys ({len(unexpected)}): {_some(unexpected)}")


def _some(keys: list[str], limit: int = 20) -> str:
    """A bounded, escaped list of key names for a message."""
    shown = [show(k) for k in keys[:limit]]
    return "[" + ", ".join(repr(k) for k in shown) + (f", ... {len(keys) - limit} more]"
                                                       if len(keys) > limit else "]")


def _set(tree: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split("/")
    for name in parents:
        tree = tree.setdefault(name, {})
    tree[leaf] = value


def _get(tree: Mapping, path: str) -> Any:
    for name in path.split("/"):
        tree = tree[name]
    return tree


def expected_flax_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Flat 'a/b/kernel' -> shape of the Flax params for a config."""
    from flax.traverse_util import flatten_dict

    from pthnet_jax.models.pthnet import abstract_variables

    flat = flatten_dict(abstract_variables(config)["params"], sep="/")
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def torch_to_flax(state_dict: Mapping[str, np.ndarray], config: ModelConfig | None = None
                  ) -> tuple[ModelConfig, dict[str, Any], dict[str, np.ndarray], list[str]]:
    """-> (config, params tree, unused tensors by torch key, notes). Strict on keys and shapes."""
    state_dict, _ = strip_prefix(state_dict)
    notes: list[str] = []
    if config is None:
        config, notes = infer_config(state_dict)
    check_config_bounds(config)
    bad = [f"{show(k)}: {getattr(v, 'dtype', type(v).__name__)}" for k, v in state_dict.items()
           if not isinstance(v, np.ndarray) or not _is_float(v.dtype)]
    if bad:
        raise MappingError(f"parameters must be floating-point arrays; not: {', '.join(bad[:10])}"
                           + (f" and {len(bad) - 10} more" if len(bad) > 10 else ""))
    rows, unused = key_table(config)
    _check_keys(state_dict, [k for k, _, _ in rows] + unused)
    shapes = expected_flax_shapes(config)
    params: dict[str, Any] = {}
    wrong = []
    for torch_key, flax_path, transform in rows:
        tensor = np.asarray(state_dict[torch_key])
        try:
            value = transform(tensor)
        except (ValueError, IndexError):
            value = None
        if value is None or tuple(value.shape) != shapes[flax_path]:
            if len(wrong) < 20:
                wrong.append(f"{torch_key}: shape {tuple(tensor.shape)} does not give {flax_path} "
                             f"{shapes[flax_path]}")
            continue
        _set(params, flax_path, value)
    if wrong:
        raise MappingError("tensors with the wrong shape for the inferred config "
                           f"{config}:\n  " + "\n  ".join(wrong))
    extra = {key: np.asarray(state_dict[key]) for key in unused}
    return config, params, extra, notes


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype == ml_dtypes.bfloat16


def flax_to_torch(params: Mapping[str, Any], config: ModelConfig,
                  torch_extra: Mapping[str, np.ndarray] | None = None) -> "OrderedDict[str, np.ndarray]":
    """Flax params -> the original's state dict (no `module.` prefix), in its key order.

    Without `torch_extra` the never-used `pos_embed*` tensors are synthesised deterministically:
    zero conv weights and biases, LayerNorm weight 1 and bias 0 (the forward pass never reads them).
    """
    rows, unused = key_table(config)
    by_key = {}
    for torch_key, flax_path, transform in rows:
        try:
            value = np.asarray(_get(params, flax_path))
        except KeyError as err:
            raise MappingError(f"params tree has no '{flax_path}' (needed for {torch_key})") from err
        by_key[torch_key] = _INVERSE[transform](value, value.shape)
    torch_extra = dict(torch_extra or {})
    for key in unused:
        if key in torch_extra:
            by_key[key] = np.asarray(torch_extra[key])
        else:
            by_key[key] = _synthesised_unused(key, config)
    return OrderedDict((key, by_key[key]) for key in torch_keys_in_order(config))


def _synthesised_unused(key: str, config: ModelConfig) -> np.ndarray:
    c = config.n_embd
    if key.endswith("pos_embed_norm.weight"):
        return np.ones((1, c, 1), np.float32)
    if key.endswith("pos_embed_norm.bias"):
        return np.zeros((1, c, 1), np.float32)
    if key.endswith("pos_embed.conv.bias"):
        return np.zeros((c,), np.float32)
    stage = key.split(".")[0]
    kernel = config.thr_size[0] if stage == "pos_embed" else config.thr_size[1 + STAGES.index(stage)]
    return np.zeros((c, 1, kernel), np.float32)
