"""HTNet per-subject `.pth` files <-> Flax params of `families.htnet.model.HTNet`, without PyTorch.

The original writes one bare state dict per held-out subject (`ourmodel_threedatasets_weights/
<subject>.pth`, 171 float32 tensors at the released size, storages tagged `cuda:0`). It is read
through the project's checked reader (`convert/io.py`: nothing is unpickled, torch is not needed)
and mapped by a table of (original name, Flax path, transform, original shape), strictly: every
missing, unexpected or wrong-shaped name is listed before any array is touched. The sizes come from
the shapes; the number of heads does not (an inner width of 255 fits 3, 5, 15 or 17 heads), so it
comes from the caller (default: the released 3) and is checked against every stage's inner width.
`export_pth` writes the original layout back (an OrderedDict in the original's order, `cuda:0` on
request) with the torch-free writer: original -> ours -> original is bit-exact.
"""
from __future__ import annotations

import collections
import math
import os
import re
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from pthnet_jax.convert.errors import CheckpointError, show
from pthnet_jax.convert.mapping import MappingError
from pthnet_jax.families.htnet.config import HTNetConfig

Transform = Callable[[np.ndarray], np.ndarray]
_STAGE = re.compile(r"^layers\.(\d{1,6})\.0\.pos_emb$")
_BLOCK = re.compile(r"^layers\.(\d{1,6})\.0\.layers\.(\d{1,6})\.")


class HTNetMappingError(CheckpointError, MappingError):
    """Names or shapes that do not fit an HTNet; the message starts with the file when known."""


def detect(keys: Iterable[str]) -> bool:
    """Whether a (prefix-stripped) key set looks like an HTNet / NesT state dict."""
    keys = set(keys)
    return ("to_patch_embedding.1.weight" in keys and "mlp_head.2.weight" in keys
            and any(key.startswith("layers.0.0.layers.") and key.endswith("fn.to_qkv.weight") for key in keys))


# --- transforms ----------------------------------------------------------------------------------

def _same(t: np.ndarray) -> np.ndarray:
    return t


def _flat(t: np.ndarray) -> np.ndarray:  # (1, C, 1, 1) -> (C,)
    return t.reshape(-1)


def _pointwise(t: np.ndarray) -> np.ndarray:  # 1x1 conv (out, in, 1, 1) -> Dense (in, out)
    return np.transpose(t[:, :, 0, 0])


def _linear(t: np.ndarray) -> np.ndarray:  # (out, in) -> (in, out)
    return np.transpose(t)


def _conv(t: np.ndarray) -> np.ndarray:  # (O, I, kh, kw) -> (kh, kw, I, O)
    return np.transpose(t, (2, 3, 1, 0))


def _patch(patch: int, channels: int) -> Transform:
    def to_flax(t: np.ndarray) -> np.ndarray:  # (C0, P*P*ch, 1, 1) -> (P, P, ch, C0)
        return np.transpose(t[:, :, 0, 0]).reshape(patch, patch, channels, t.shape[0])
    return to_flax


def _inverse(transform: Transform, shape: tuple[int, ...]) -> Transform:
    """Flax leaf -> original layout, for the transforms above (exact: only reshapes and transposes)."""
    if transform is _same:
        return _same
    if transform is _flat:
        return lambda a: a.reshape(shape)
    if transform is _pointwise:
        return lambda a: np.transpose(a)[:, :, None, None]
    if transform is _linear:
        return np.transpose
    if transform is _conv:
        return lambda a: np.transpose(a, (3, 2, 0, 1))
    return lambda a: np.transpose(a.reshape(-1, shape[0]))[:, :, None, None]  # the patch embedding


def key_table(config: HTNetConfig) -> list[tuple[str, str, Transform, tuple[int, ...]]]:
    """(original name, Flax path, original -> Flax transform, original shape), in the original's order."""
    p, ch, d = config.patch_size, config.channels, config.dim
    table = [("to_patch_embedding.1.weight", "patch_embed/kernel", _patch(p, ch), (d, p * p * ch, 1, 1)),
             ("to_patch_embedding.1.bias", "patch_embed/bias", _same, (d,))]
    for i in range(config.num_hierarchies):
        c, inner, hidden = config.width(i), config.inner(i), config.mlp_mult * config.width(i)
        table.append((f"layers.{i}.0.pos_emb", f"stage_{i}/pos_emb", _same, (config.seq_len,)))
        for j in range(config.block_repeats[i]):
            src, dst = f"layers.{i}.0.layers.{j}.", f"stage_{i}/block_{j}/"
            table += [
                (src + "0.norm.g", dst + "attn_norm/scale", _flat, (1, c, 1, 1)),
                (src + "0.norm.b", dst + "attn_norm/bias", _flat, (1, c, 1, 1)),
                (src + "0.fn.to_qkv.weight", dst + "attn/qkv/kernel", _pointwise, (3 * inner, c, 1, 1)),
                (src + "0.fn.to_out.0.weight", dst + "attn/out/kernel", _pointwise, (c, inner, 1, 1)),
                (src + "0.fn.to_out.0.bias", dst + "attn/out/bias", _same, (c,)),
                (src + "1.norm.g", dst + "ff_norm/scale", _flat, (1, c, 1, 1)),
                (src + "1.norm.b", dst + "ff_norm/bias", _flat, (1, c, 1, 1)),
                (src + "1.fn.net.0.weight", dst + "ff/fc1/kernel", _pointwise, (hidden, c, 1, 1)),
                (src + "1.fn.net.0.bias", dst + "ff/fc1/bias", _same, (hidden,)),
                (src + "1.fn.net.3.weight", dst + "ff/fc2/kernel", _pointwise, (c, hidden, 1, 1)),
                (src + "1.fn.net.3.bias", dst + "ff/fc2/bias", _same, (c,)),
            ]
        if i < config.num_hierarchies - 1:
            nxt = config.width(i + 1)
            table += [(f"layers.{i}.1.0.weight", f"aggregate_{i}/conv/kernel", _conv, (nxt, c, 3, 3)),
                      (f"layers.{i}.1.0.bias", f"aggregate_{i}/conv/bias", _same, (nxt,)),
                      (f"layers.{i}.1.1.g", f"aggregate_{i}/norm/scale", _flat, (1, nxt, 1, 1)),
                      (f"layers.{i}.1.1.b", f"aggregate_{i}/norm/bias", _flat, (1, nxt, 1, 1))]
    last = config.width(config.num_hierarchies - 1)
    table += [("mlp_head.0.g", "head/norm/scale", _flat, (1, last, 1, 1)),
              ("mlp_head.0.b", "head/norm/bias", _flat, (1, last, 1, 1)),
              ("mlp_head.2.weight", "head/fc/kernel", _linear, (config.num_classes, last)),
              ("mlp_head.2.bias", "head/fc/bias", _same, (config.num_classes,))]
    return table


# --- sizes from shapes ---------------------------------------------------------------------------

def _shape(state_dict: Mapping[str, Any], key: str, source: str | None) -> tuple[int, ...]:
    if key not in state_dict:
        raise HTNetMappingError(source, f"'{key}' is missing; cannot infer the HTNet size "
                                "(is this an HTNet state dict?)")
    return tuple(int(n) for n in state_dict[key].shape)


def _indices(found: set[int], what: str, source: str | None) -> int:
    count = max(found) + 1 if found else 0
    if count != len(found):  # never range(count) over a crafted index
        gaps = [i for i in range(len(found) + 1) if i not in found][:10]
        raise HTNetMappingError(source, f"{what} {gaps} missing (found {len(found)} with indices up to {count - 1})")
    return count


def infer_config(state_dict: Mapping[str, Any], source: str | None = None, heads: int = 3,
                 channels: int = 3, **overrides: Any) -> HTNetConfig:
    """Sizes from the shapes (patch, dim, stages, depths, block side, MLP ratio, classes); `heads` and
    `channels` are not fixed by the shapes and come from the caller (defaults: the released 3 and 3)."""
    embed = _shape(state_dict, "to_patch_embedding.1.weight", source)
    if len(embed) != 4 or embed[2:] != (1, 1) or embed[1] % channels:
        raise HTNetMappingError(source, f"'to_patch_embedding.1.weight' has shape {embed}; expected "
                                f"(dim, {channels} * patch^2, 1, 1)")
    dim, patch = embed[0], int(round(math.sqrt(embed[1] // channels)))
    if patch * patch * channels != embed[1]:
        raise HTNetMappingError(source, f"'to_patch_embedding.1.weight' has {embed[1]} inputs, not "
                                f"{channels} * patch^2 for any patch size")
    stages = _indices({int(m.group(1)) for key in state_dict if (m := _STAGE.match(key))}, "stages (pos_emb)", source)
    if stages == 0:
        raise HTNetMappingError(source, "no 'layers.<i>.0.pos_emb' names: not an HTNet state dict")
    depths = []
    for i in range(stages):
        found = {int(m.group(2)) for key in state_dict if (m := _BLOCK.match(key)) and int(m.group(1)) == i}
        depths.append(_indices(found, f"blocks of stage {i}", source))
    seq_len = _shape(state_dict, "layers.0.0.pos_emb", source)
    side = int(round(math.sqrt(seq_len[0]))) if len(seq_len) == 1 else -1
    if side < 1 or side * side != seq_len[0]:
        raise HTNetMappingError(source, f"'layers.0.0.pos_emb' has shape {seq_len}; expected (L^2,)")
    hidden = _shape(state_dict, "layers.0.0.layers.0.1.fn.net.0.weight", source)[0]
    classes = _shape(state_dict, "mlp_head.2.weight", source)[0]
    values = {"image_size": side * 2 ** (stages - 1) * patch, "patch_size": patch, "num_classes": classes,
              "dim": dim, "heads": heads, "num_hierarchies": stages, "block_repeats": tuple(depths),
              "mlp_mult": max(hidden // dim, 1), "channels": channels, **overrides}
    try:
        config = HTNetConfig(**values)
    except (TypeError, ValueError) as err:
        raise HTNetMappingError(source, str(err)) from err
    for i in range(stages):
        key = f"layers.{i}.0.layers.0.0.fn.to_qkv.weight"
        if key in state_dict:
            stored = _shape(state_dict, key, source)[0] // 3
            if config.inner(i) != stored:
                raise HTNetMappingError(source, f"stage {i}: heads {config.num_heads(i)} x floor({config.width(i)} / "
                                        f"{config.num_heads(i)}) = {config.inner(i)} != the stored inner width "
                                        f"{stored}; pass the number of heads the model was built with")
    return config


def check_keys(state_dict: Mapping[str, Any], config: HTNetConfig, source: str | None = None) -> None:
    """Strict name and shape check against `config` (no array is read)."""
    expected = {key: shape for key, _, _, shape in key_table(config)}
    missing = [key for key in expected if key not in state_dict]
    unexpected = [show(key) for key in state_dict if key not in expected]
    wrong = [f"{key}: {tuple(state_dict[key].shape)}, expected {expected[key]}"
             for key in expected if key in state_dict and tuple(state_dict[key].shape) != expected[key]]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shapes", wrong)):
        if items:
            problems.append(f"{len(items)} {label}: {items[:20]}{' ...' if len(items) > 20 else ''}")
    if problems:
        raise HTNetMappingError(source, f"the state dict does not fit HTNet {config.to_dict()}: "
                                + "; ".join(problems))


def _set(tree: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split("/")
    for name in parents:
        tree = tree.setdefault(name, {})
    tree[leaf] = value


def torch_to_flax(state_dict: Mapping[str, Any], config: HTNetConfig | None = None, source: str | None = None,
                  heads: int = 3) -> tuple[HTNetConfig, dict[str, Any]]:
    """Original state dict -> (config, Flax params tree of numpy arrays); everything checked first."""
    config = infer_config(state_dict, source, heads=heads) if config is None else config
    check_keys(state_dict, config, source)
    params: dict[str, Any] = {}
    for key, path, transform, _ in key_table(config):
        _set(params, path, np.ascontiguousarray(transform(np.asarray(state_dict[key]))))
    return config, params


def flax_to_torch(params: Mapping[str, Any], config: HTNetConfig) -> "collections.OrderedDict[str, np.ndarray]":
    """Flax params -> the original's state dict (an OrderedDict in the original's order)."""
    out: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    for key, path, transform, shape in key_table(config):
        leaf: Any = params
        for name in path.split("/"):
            if not isinstance(leaf, Mapping) or name not in leaf:
                raise HTNetMappingError(None, f"the parameters have no '{path}' (config {config.to_dict()})")
            leaf = leaf[name]
        array = np.ascontiguousarray(_inverse(transform, shape)(np.asarray(leaf)))
        if array.shape != shape:
            raise HTNetMappingError(None, f"'{path}' has shape {np.shape(leaf)}, which does not give {key} {shape}")
        out[key] = array
    return out


# --- files ---------------------------------------------------------------------------------------

def load_pth(path: str | os.PathLike, config: HTNetConfig | None = None,
             heads: int = 3) -> tuple[HTNetConfig, dict[str, Any]]:
    """A per-subject `.pth` of the original -> (config, `{"params": ...}` of numpy arrays)."""
    from pthnet_jax.convert.io import state_dict_from_file

    state_dict, _ = state_dict_from_file(path)
    for prefix in ("module.", "_orig_mod."):
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
    config, params = torch_to_flax(state_dict, config, str(path), heads)
    return config, {"params": params}


def export_pth(path: str | os.PathLike, params: Mapping[str, Any], config: HTNetConfig,
               location: str = "cpu") -> None:
    """Write `params` as the original's bare state dict (`location='cuda:0'`: tagged like the released
    files); the original loads it with `load_state_dict(..., strict=True)`. Written atomically."""
    from pthnet_jax.convert.torch_writer import write_torch_file

    params = params.get("params", params) if isinstance(params, Mapping) else params
    write_torch_file(path, flax_to_torch(params, config), location=location)


__all__ = ["HTNetMappingError", "check_keys", "detect", "export_pth", "flax_to_torch", "infer_config",
           "key_table", "load_pth", "torch_to_flax"]
