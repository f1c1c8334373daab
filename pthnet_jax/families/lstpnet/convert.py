"""LSTPNet checkpoints <-> Flax variables of `families.lstpnet.model.LSTPNet`, without PyTorch.

`docs/lstpnet-reference.md` sections 5-6. Released files keep the weights under `model_state_dict`
with DataParallel's `module.` prefix; they are read by the project's checked reader (nothing
unpickled). Unlike the original's lenient loader this is strict: every parameter and BatchNorm
statistic with its shape, unknown names listed, `num_batches_tracked` ignored, the two extra copies of
the LSTformer's shared conv and norm (`layers.<l>.0/1.*`) checked equal to it. Layouts: Conv2d (O, I,
kh, kw) -> (kh, kw, I, O); Conv1d (O, I/groups, k) -> (k, I/groups, O); Linear (out, in) -> (in, out);
norm weight -> scale; running_mean/var -> batch_stats mean/var. Also the MS-Celeb ResNet-18 init file
(`resnet18_msceleb.pth`, torchvision names under `state_dict`) -> the backbone's convs and BatchNorms.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
from typing import Any, Iterable, Mapping

import numpy as np
from flax import traverse_util

from pthnet_jax.convert.errors import CheckpointError, show
from pthnet_jax.convert.mapping import MappingError
from pthnet_jax.families.lstpnet.model import LSTPNetConfig, tce_sizes

CONTAINERS = ("model_state_dict", "state_dict", "model", "module")
PREFIXES = ("module.", "_orig_mod.")
BACKBONE = "s_former.ir_back."
TRANSFORMER = "t_former.spatial_transformer."
_LAYER = re.compile(r"^t_former\.spatial_transformer\.layers\.(\d{1,9})\.2\.fn\.fn\.to_qkv\.weight$")
# torch -> flax transforms by kind, and their inverses
_TO_FLAX = {"conv2d": (2, 3, 1, 0), "conv1d": (2, 1, 0), "linear": (1, 0), "vector": None}
_TO_TORCH = {"conv2d": (3, 2, 0, 1), "conv1d": (2, 1, 0), "linear": (1, 0), "vector": None}


class LSTPNetMappingError(CheckpointError, MappingError):
    """Keys or shapes that do not form an LSTPNet state dict; the message starts with the file."""


@dataclasses.dataclass(frozen=True)
class Row:
    torch_key: str
    path: str  # full variable path: "params/..." or "batch_stats/..."
    kind: str  # conv2d | conv1d | linear | vector
    shape: tuple[int, ...]  # the PyTorch shape


@dataclasses.dataclass
class LoadedLSTPNet:
    config: LSTPNetConfig
    variables: dict[str, Any]  # {"params": ..., "batch_stats": ...}, float32 numpy arrays
    notes: list[str]
    num_tensors: int  # distinct tensors converted
    metadata: dict[str, Any]  # the file's other top-level entries (epoch, ...), as plain data


# --- the key table ----------------------------------------------------------------------------

def _conv(key: str, path: str, shape: tuple[int, ...], bias: bool = True) -> list[Row]:
    kind = "conv2d" if len(shape) == 4 else "conv1d"
    rows = [Row(f"{key}.weight", f"params/{path}/kernel", kind, shape)]
    return rows + ([Row(f"{key}.bias", f"params/{path}/bias", "vector", (shape[0],))] if bias else [])


def _linear(key: str, path: str, out: int, inp: int, bias: bool = True) -> list[Row]:
    rows = [Row(f"{key}.weight", f"params/{path}/kernel", "linear", (out, inp))]
    return rows + ([Row(f"{key}.bias", f"params/{path}/bias", "vector", (out,))] if bias else [])


def _norm(key: str, path: str, width: int, batch: bool = False) -> list[Row]:
    rows = [Row(f"{key}.weight", f"params/{path}/scale", "vector", (width,)),
            Row(f"{key}.bias", f"params/{path}/bias", "vector", (width,))]
    if batch:
        rows += [Row(f"{key}.running_mean", f"batch_stats/{path}/mean", "vector", (width,)),
                 Row(f"{key}.running_var", f"batch_stats/{path}/var", "vector", (width,))]
    return rows


def _tce(key: str, path: str, c: int) -> list[Row]:
    r, k = tce_sizes(c)
    return (_conv(f"{key}.eca_conv_1.0", f"{path}/chan_in", (r, 1, k))
            + _conv(f"{key}.action_p2_conv1", f"{path}/time", (c, c, 3), bias=False)
            + _conv(f"{key}.eca_conv_2.0", f"{path}/chan_out", (1, r, k)))


def _backbone(config: LSTPNetConfig) -> list[Row]:
    w0 = config.widths[0]
    rows = _conv(BACKBONE + "conv1", "backbone/stem_conv", (w0, 3, 7, 7), bias=False)
    rows += _norm(BACKBONE + "bn1", "backbone/stem_bn", w0, batch=True)
    c_in = w0
    for stage, p in enumerate(config.widths, start=1):
        for index in range(2):
            key, path = f"{BACKBONE}layer{stage}.{index}", f"backbone/layer{stage}_{index}"
            stride = 2 if stage > 1 and index == 0 else 1
            rows += _conv(f"{key}.conv1", f"{path}/conv1", (p, c_in, 3, 3)) + _norm(f"{key}.bn1", f"{path}/bn1", p, True)
            rows += _conv(f"{key}.conv2", f"{path}/conv2", (p, p, 3, 3)) + _norm(f"{key}.bn2", f"{path}/bn2", p, True)
            if stride != 1 or c_in != p:
                rows += _conv(f"{key}.downsample.0", f"{path}/proj_conv", (p, c_in, 1, 1))
                rows += _norm(f"{key}.downsample.1", f"{path}/proj_bn", p, batch=True)
            if stage > 1:
                rows += _tce(f"{key}.eca", f"{path}/tce", c_in)
            c_in = p
    return rows


def key_table(config: LSTPNetConfig) -> tuple[list[Row], dict[str, str]]:
    """(rows in the original's state-dict order, duplicate torch key -> the shared torch key it copies)."""
    d, hidden, inner = config.dim, config.mlp_dim, config.inner_dim
    rows = _backbone(config) + _tce("s_former.eca", "head_tce", d)
    shared_tc, shared_norm = TRANSFORMER + "TC", TRANSFORMER + "norm"
    rows += _conv(shared_tc, "lstformer/shared_tc", (d, d, 3)) + _norm(shared_norm, "lstformer/shared_norm", d)
    duplicates = {}
    for layer in range(config.depth):
        key, path = f"{TRANSFORMER}layers.{layer}.", f"lstformer/layer_{layer}/"
        for copy, shared in ((0, shared_tc), (1, shared_norm)):
            for name in ("weight", "bias"):
                duplicates[f"{key}{copy}.{name}"] = f"{shared}.{name}"
        ffn = key + "3.fn.fn."
        rows += (_norm(key + "2.fn.norm", path + "attn_norm", d)
                 + _linear(key + "2.fn.fn.to_qkv", path + "qkv", 3 * inner, d, bias=False)
                 + _linear(key + "2.fn.fn.to_out.0", path + "attn_out", d, inner)
                 + _norm(key + "3.fn.norm", path + "ffn_norm", d)
                 + _linear(ffn + "linear1.0", path + "fc1", hidden, d) + _norm(ffn + "linear1.2", path + "ln1", hidden)
                 + _conv(ffn + "TC", path + "dwconv", (hidden, 1, 3)) + _norm(ffn + "norm", path + "ln2", hidden)
                 + _linear(ffn + "linear2.0", path + "fc2", d, hidden) + _norm(ffn + "linear2.1", path + "ln3", d))
    rows += _linear("fc", "classifier", config.num_classes, d)
    return rows, duplicates


def torch_key_order(config: LSTPNetConfig) -> list[str]:
    """Every name of the original's state dict but `num_batches_tracked`, in its order (each layer's
    copies of the shared conv and norm, `layers.<l>.0/1`, before its own entries)."""
    rows, duplicates = key_table(config)
    out = []
    for row in rows:
        match = re.match(r"^(t_former\.spatial_transformer\.layers\.\d+\.)2\.fn\.norm\.weight$", row.torch_key)
        if match:
            out += [dup for dup in duplicates if dup.startswith(match.group(1))]
        out.append(row.torch_key)
    return out


# --- reading ----------------------------------------------------------------------------------

def unwrap(loaded: Any, source: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The flat state dict inside a loaded file (`model_state_dict`, `state_dict`, ... containers;
    `module.` / `_orig_mod.` prefixes stripped) + notes on what was done."""
    notes: list[str] = []
    while isinstance(loaded, Mapping):
        found = [key for key in CONTAINERS if isinstance(loaded.get(key), Mapping)]
        if not found:
            break
        notes.append(f"weights taken from the '{found[0]}' entry")
        loaded = loaded[found[0]]
    if not isinstance(loaded, Mapping):
        raise LSTPNetMappingError(source, f"expected a state dict (names -> tensors), found {type(loaded).__name__}")
    state_dict = dict(loaded)
    bad = [key for key, value in state_dict.items() if not isinstance(key, str) or not hasattr(value, "shape")]
    if bad:
        raise LSTPNetMappingError(source, f"entries that are not named tensors: {[show(k) for k in bad[:10]]}")
    for prefix in PREFIXES:
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
            notes.append(f"prefix '{prefix}' stripped")
    return state_dict, notes


def is_lstpnet(keys: Iterable[str]) -> bool:
    """Whether a key set (with or without `module.`) looks like an LSTPNet state dict."""
    stripped = {key[len("module."):] if key.startswith("module.") else key for key in keys}
    return BACKBONE + "conv1.weight" in stripped and TRANSFORMER + "TC.weight" in stripped


def _shape(state_dict: Mapping[str, Any], key: str, source: str | None) -> tuple[int, ...]:
    if key not in state_dict:
        raise LSTPNetMappingError(source, f"key '{key}' is missing; cannot infer the model's sizes")
    return tuple(int(n) for n in state_dict[key].shape)


def infer_config(state_dict: Mapping[str, Any], source: str | None = None, **overrides: Any) -> LSTPNetConfig:
    """Sizes from the shapes. The head count is not in them: head_dim 64 (the released value) unless
    `num_heads` or `head_dim` is given."""
    widths = tuple(_shape(state_dict, f"{BACKBONE}layer{s}.0.conv1.weight", source)[0] for s in range(1, 5))
    layers = {int(m.group(1)) for key in state_dict if (m := _LAYER.match(key))}
    if not layers or max(layers) + 1 != len(layers):
        raise LSTPNetMappingError(source, f"LSTformer layers {sorted(layers)[:10]}: expected 0..n-1")
    inner = _shape(state_dict, TRANSFORMER + "layers.0.2.fn.fn.to_qkv.weight", source)[0] // 3
    values: dict[str, Any] = {
        "widths": widths, "depth": len(layers), "num_classes": _shape(state_dict, "fc.weight", source)[0],
        "mlp_dim": _shape(state_dict, TRANSFORMER + "layers.0.3.fn.fn.linear1.0.weight", source)[0]}
    values.update(overrides)
    if "num_heads" in overrides and "head_dim" not in overrides:
        values["head_dim"] = inner // max(1, int(overrides["num_heads"]))
    elif "num_heads" not in overrides:
        head_dim = int(values.get("head_dim", 64))
        if inner % head_dim:
            raise LSTPNetMappingError(source, f"attention width {inner} is not a multiple of head_dim "
                                      f"{head_dim}: pass num_heads (or a config)")
        values["head_dim"], values["num_heads"] = head_dim, inner // head_dim
    try:
        return LSTPNetConfig(**values)
    except (TypeError, ValueError) as err:
        raise LSTPNetMappingError(source, str(err)) from err


def _some(items: list[str], limit: int = 12) -> str:
    return ", ".join(items[:limit]) + (f" ... ({len(items)} in all)" if len(items) > limit else "")


def _key_problems(state_dict: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]],
                  ignored: Iterable[str]) -> list[str]:
    ignored = set(ignored)
    missing = [key for key in expected if key not in state_dict]
    unknown = [show(key) for key in state_dict if key not in expected and key not in ignored]
    wrong = [f"{key}: {tuple(state_dict[key].shape)}, expected {shape}" for key, shape in expected.items()
             if key in state_dict and tuple(state_dict[key].shape) != shape]
    problems = [f"{len(missing)} missing keys: {_some(missing)}"] if missing else []
    problems += [f"{len(unknown)} unknown keys: {_some(unknown)}"] if unknown else []
    return problems + ([f"wrong shapes: {_some(wrong)}"] if wrong else [])


def _batches_tracked(state_dict: Mapping[str, Any], rows: list[Row]) -> list[str]:
    bns = {row.torch_key.rsplit(".", 1)[0] for row in rows if row.torch_key.endswith(".running_mean")}
    return [key for key in state_dict if key.endswith(".num_batches_tracked") and key.rsplit(".", 1)[0] in bns]


def check_state_dict(state_dict: Mapping[str, Any], config: LSTPNetConfig, source: str | None = None) -> list[str]:
    """Strict check (names, shapes, equal shared copies) before anything is converted; notes back."""
    rows, duplicates = key_table(config)
    expected = {row.torch_key: row.shape for row in rows}
    expected.update({dup: expected[shared] for dup, shared in duplicates.items()})
    ignored = _batches_tracked(state_dict, rows)
    problems = _key_problems(state_dict, expected, ignored)
    if not problems:
        differ = [f"{dup} differs from {shared}" for dup, shared in duplicates.items()
                  if not np.array_equal(np.asarray(state_dict[dup]), np.asarray(state_dict[shared]))]
        problems += [f"the copies of the LSTformer's shared conv/norm must be equal: {_some(differ)}"] if differ else []
    if problems:
        size = f"widths {list(config.widths)}, depth {config.depth}, MLP {config.mlp_dim}"
        raise LSTPNetMappingError(source, f"not an LSTPNet state dict ({size}): " + "; ".join(problems))
    return [f"{len(duplicates)} copies of the shared conv/norm checked equal",
            f"{len(ignored)} num_batches_tracked ignored"]


def _to_flax(row: Row, tensor: Any) -> np.ndarray:
    array = np.asarray(tensor).astype(np.float32)
    axes = _TO_FLAX[row.kind]
    return np.ascontiguousarray(array if axes is None else array.transpose(axes))


def torch_to_flax(state_dict: Mapping[str, Any], config: LSTPNetConfig | None = None, source: str | None = None,
                  **overrides: Any) -> tuple[LSTPNetConfig, dict[str, Any], list[str]]:
    """Prefix-stripped state dict -> (config, {"params", "batch_stats"} of float32 numpy, notes)."""
    config = infer_config(state_dict, source, **overrides) if config is None else config
    notes = check_state_dict(state_dict, config, source)
    rows, _ = key_table(config)
    flat = {}
    for row in rows:
        flat[tuple(row.path.split("/"))] = _to_flax(row, state_dict[row.torch_key])
    notes.insert(0, f"{len(rows)} tensors converted to float32")
    return config, traverse_util.unflatten_dict(flat), notes


def flax_to_torch(variables: Mapping[str, Any], config: LSTPNetConfig,
                  batches_tracked: int = 0) -> collections.OrderedDict:
    """Flax variables -> the original's state dict (no prefix), in its order, with the shared conv/norm
    under all three names (one array) and every BatchNorm's `num_batches_tracked`."""
    flat = traverse_util.flatten_dict(variables, sep="/")
    rows, duplicates = key_table(config)
    by_key = {}
    for row in rows:
        array = np.asarray(flat[row.path], dtype=np.float32)
        axes = _TO_TORCH[row.kind]
        by_key[row.torch_key] = np.ascontiguousarray(array if axes is None else array.transpose(axes))
        if tuple(by_key[row.torch_key].shape) != row.shape:
            raise ValueError(f"{row.path}: shape {array.shape} does not give {row.torch_key} {row.shape}")
        if row.torch_key.endswith(".running_var"):
            by_key[row.torch_key.rsplit(".", 1)[0] + ".num_batches_tracked"] = np.asarray(batches_tracked, np.int64)
    for dup, shared in duplicates.items():
        by_key[dup] = by_key[shared]
    return collections.OrderedDict((key, by_key[key]) for key in _state_dict_order(config, by_key))


def _state_dict_order(config: LSTPNetConfig, by_key: Mapping[str, Any]) -> list[str]:
    order = []
    for key in torch_key_order(config):
        order.append(key)
        if key.endswith(".running_var"):
            order.append(key.rsplit(".", 1)[0] + ".num_batches_tracked")
    return order


def read_file(path: str | os.PathLike) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """A `.pth` (or `.safetensors`) file -> (prefix-stripped state dict, notes, other top-level entries)."""
    from pthnet_jax.convert.io import file_format, state_dict_from_file
    from pthnet_jax.convert.torch_pickle import read_torch_file, to_plain

    source = str(path)
    if file_format(path) == "safetensors":
        state_dict, meta = state_dict_from_file(path)
        return (*unwrap(state_dict, source), meta)
    loaded = read_torch_file(path)
    meta = {}
    if isinstance(loaded, dict):
        meta = {str(k): to_plain(v) for k, v in loaded.items() if k not in CONTAINERS and not hasattr(v, "shape")}
    return (*unwrap(loaded, source), meta)


def load_checkpoint(path: str | os.PathLike, config: LSTPNetConfig | None = None, **overrides: Any) -> LoadedLSTPNet:
    """An original LSTPNet checkpoint file -> config + float32 `{"params", "batch_stats"}`."""
    state_dict, notes, meta = read_file(path)
    config, variables, more = torch_to_flax(state_dict, config, str(path), **overrides)
    return LoadedLSTPNet(config, variables, notes + more, len(key_table(config)[0]), meta)


def export_pth(path: str | os.PathLike, variables: Mapping[str, Any], config: LSTPNetConfig,
               extra: Mapping[str, Any] | None = None) -> int:
    """Write a `.pth` the original code loads strictly (`model_state_dict` with `module.` names),
    without PyTorch and atomically. `extra`: more top-level entries (epoch, ...). Returns the name count."""
    from pthnet_jax.convert.torch_writer import write_torch_file

    state_dict = flax_to_torch(variables, config)
    payload = dict(extra or {})
    payload["model_state_dict"] = collections.OrderedDict(("module." + k, v) for k, v in state_dict.items())
    write_torch_file(path, payload)
    return len(state_dict)


# --- the MS-Celeb ResNet-18 initialisation ----------------------------------------------------

def msceleb_rows(config: LSTPNetConfig) -> list[Row]:
    """The backbone entries the MS-Celeb ResNet-18 provides, under torchvision's names: the stem conv,
    every block and shortcut conv weight (not their biases, which it lacks) and every BatchNorm."""
    rows, _ = key_table(config)
    return [dataclasses.replace(row, torch_key=row.torch_key[len(BACKBONE):]) for row in rows
            if row.torch_key.startswith(BACKBONE) and ".eca." not in row.torch_key
            and not (row.torch_key.endswith(".bias") and "conv" in row.path.split("/")[-2])]


def load_msceleb(path: str | os.PathLike, variables: Mapping[str, Any],
                 config: LSTPNetConfig) -> tuple[dict[str, Any], list[str]]:
    """A copy of `variables` whose backbone convs and BatchNorms come from `resnet18_msceleb.pth`
    (its `fc` dropped); conv biases, TCEs, LSTformer and classifier keep their values."""
    state_dict, notes, _ = read_file(path)
    rows = msceleb_rows(config)
    dropped = [key for key in state_dict if key.startswith("fc.")]
    problems = _key_problems(state_dict, {row.torch_key: row.shape for row in rows},
                             dropped + _batches_tracked(state_dict, rows))
    if problems:
        raise LSTPNetMappingError(str(path), f"not a ResNet-18 of widths {list(config.widths)} in torchvision "
                                  "naming: " + "; ".join(problems))
    flat = dict(traverse_util.flatten_dict(variables, sep="/"))
    for row in rows:
        flat[row.path] = _to_flax(row, state_dict[row.torch_key])
    notes += [f"{len(rows)} backbone tensors from the MS-Celeb ResNet-18", f"dropped: {_some(dropped)}"]
    return traverse_util.unflatten_dict(flat, sep="/"), notes
