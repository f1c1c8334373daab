"""VideoMAE V2 checkpoints -> Flax params of `pthnet_jax.models.videomae.VideoMAE`, without PyTorch.

Pure functions over flat dicts: `unwrap` (container and prefixes), `infer_config` (sizes from
shapes), `key_table` (renames + transposes), `torch_to_flax` (strict: missing and unexpected keys
listed, shapes checked before any array is touched). `load_checkpoint` reads a file through the
project's safe reader (nothing in the file is executed) and converts one tensor at a time, dropping
each source tensor once its Flax copy exists, so converting needs about one extra copy of the
weights at most.

Layouts (PyTorch -> Flax):
- Conv3d weight (out, in, T, H, W)   -> patch_embed kernel (T, H, W, in, out)
- Linear weight (out, in)            -> Dense kernel (in, out)
- LayerNorm weight / bias (C,)       -> scale / bias (C,)
- q_bias, v_bias, biases (C,)        -> unchanged
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from pthnet_jax.convert.errors import CheckpointError, show
from pthnet_jax.convert.mapping import MappingError
from pthnet_jax.models.videomae import CHECKPOINT_FILE, SIZES, VideoMAE, VideoMAEConfig

PRETRAINING_FILE = "vit_g_hybrid_pt_1200e.pth"
PREFIXES = ("module.", "_orig_mod.")
WRAPPER_KEYS = ("module", "model", "state_dict")
DROPPED = ("head.weight", "head.bias")  # the Kinetics-710 classifier; features are taken before it
_BLOCK = re.compile(r"^blocks\.(\d{1,9})\.")


class VideoMAEMappingError(CheckpointError, MappingError):
    """State dict keys or shapes that do not fit a VideoMAE V2 ViT; the message starts with the file."""


@dataclasses.dataclass
class LoadedVideoMAE:
    config: VideoMAEConfig
    variables: dict[str, Any]  # {"params": ...}
    notes: list[str]


def describe(config: VideoMAEConfig, params: Any = None) -> str:
    """One line naming the model a checkpoint holds (for `pthnet convert` and logs)."""
    text = (f"VideoMAE V2 ViT {config.name or '(custom size)'}: {config.embed_dim}-d, {config.depth} blocks, "
            f"{config.num_heads} heads, MLP {config.mlp_dim}, patch {config.tubelet_size}x{config.patch_size}"
            f"x{config.patch_size}")
    if params is not None:
        import jax

        leaves = jax.tree.leaves(params)
        dtypes = sorted({str(leaf.dtype) for leaf in leaves})
        text += f", {sum(int(np.prod(leaf.shape)) for leaf in leaves):,} parameters ({'/'.join(dtypes)})"
    return text


# --- containers and prefixes ------------------------------------------------------------------

def unwrap(loaded: Any, source: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The flat model state dict inside `loaded` + notes on what was unwrapped.

    Accepts `{'module': sd}`, `{'model': sd}`, `{'state_dict': sd}`, a bare state dict, and keys
    prefixed `module.` / `_orig_mod.` (DataParallel, torch.compile), in any nesting.
    """
    notes: list[str] = []
    while isinstance(loaded, Mapping):
        wrappers = [key for key in WRAPPER_KEYS if isinstance(loaded.get(key), Mapping)]
        if not wrappers:
            break
        notes.append(f"state dict taken from the '{wrappers[0]}' entry")
        loaded = loaded[wrappers[0]]
    if not isinstance(loaded, Mapping):
        raise VideoMAEMappingError(source, f"expected a state dict (a mapping of names to tensors), "
                                   f"found {type(loaded).__name__}")
    state_dict = dict(loaded)
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in PREFIXES:
            if all(key.startswith(prefix) for key in state_dict):
                state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
                notes.append(f"prefix '{prefix}' stripped")
                changed = True
    bad = [key for key, value in state_dict.items() if not hasattr(value, "shape")]
    if bad:
        raise VideoMAEMappingError(source, f"entries that are not tensors: {[show(k) for k in bad[:10]]}")
    return state_dict, notes


def is_videomae(keys: Iterable[str]) -> bool:
    """Whether a (prefix-stripped) key set looks like a VideoMAE ViT, fine-tuned or pre-training."""
    keys = set(keys)
    return ("patch_embed.proj.weight" in keys or "encoder.patch_embed.proj.weight" in keys) and any(
        ".attn.qkv.weight" in key for key in keys)


def is_pretraining(keys: Iterable[str]) -> bool:
    return any(key.startswith(("encoder.", "decoder.")) for key in keys)


# --- sizes --------------------------------------------------------------------------------------

def _shape(state_dict: Mapping[str, Any], key: str, source: str | None) -> tuple[int, ...]:
    if key not in state_dict:
        raise VideoMAEMappingError(source, f"key '{key}' is missing; cannot infer the model size")
    return tuple(int(n) for n in state_dict[key].shape)


def infer_config(state_dict: Mapping[str, Any], source: str | None = None,
                 **overrides: Any) -> VideoMAEConfig:
    """Sizes from the shapes (width, depth, MLP width, patch, tubelet, channels).

    The number of heads is not in the shapes: it comes from the family member of that width
    (`SIZES`) unless given in `overrides`, as are num_frames and img_size (default 16 and 224).
    """
    if is_pretraining(state_dict):
        raise pretraining_error(source)
    proj = _shape(state_dict, "patch_embed.proj.weight", source)
    if len(proj) != 5 or proj[3] != proj[4]:
        raise VideoMAEMappingError(source, f"'patch_embed.proj.weight' has shape {proj}; expected a "
                                   "Conv3d weight (embed_dim, channels, tubelet, patch, patch)")
    embed_dim, in_chans, tubelet, patch = proj[0], proj[1], proj[2], proj[3]
    indices = {int(m.group(1)) for key in state_dict if (m := _BLOCK.match(key))}
    if not indices:
        raise VideoMAEMappingError(source, "no 'blocks.<i>.' keys; not a VideoMAE ViT state dict")
    depth = max(indices) + 1
    if depth != len(indices):  # never build range(depth): a crafted index could be huge
        gaps = [i for i in range(len(indices) + 1) if i not in indices][:10]
        raise VideoMAEMappingError(source, f"blocks {gaps} are missing (found {len(indices)} blocks with "
                                   f"indices up to {depth - 1})")
    mlp_dim = _shape(state_dict, "blocks.0.mlp.fc1.weight", source)[0]
    values: dict[str, Any] = {"embed_dim": embed_dim, "depth": depth, "mlp_dim": mlp_dim, "patch_size": patch,
                              "tubelet_size": tubelet, "in_chans": in_chans}
    if "num_heads" not in overrides:
        by_width = {sizes[0]: sizes[2] for sizes in SIZES.values()}
        if embed_dim not in by_width:
            raise VideoMAEMappingError(
                source, f"embed_dim={embed_dim} is not a width of the family ({sorted(by_width)}); the "
                "number of heads cannot be read from the shapes: pass it (`--num-heads N` for pthnet extract, "
                "predict and convert; `num_heads=N` in Python)")
        values["num_heads"] = by_width[embed_dim]
    values.update(overrides)
    try:
        return VideoMAEConfig(**values)
    except (TypeError, ValueError) as err:
        raise VideoMAEMappingError(source, f"{err}") from err


def pretraining_error(source: str | None) -> VideoMAEMappingError:
    return VideoMAEMappingError(
        source, f"this is a VideoMAE V2 pre-training checkpoint (encoder./decoder. keys, like "
        f"{PRETRAINING_FILE}), a different model from the one PTH-Net's features come from; use the "
        f"fine-tuned checkpoint {CHECKPOINT_FILE}")


# --- the key table ------------------------------------------------------------------------------

def _conv3d(t: np.ndarray) -> np.ndarray:  # (out, in, T, H, W) -> (T, H, W, in, out)
    return np.transpose(t, (2, 3, 4, 1, 0))


def _linear(t: np.ndarray) -> np.ndarray:  # (out, in) -> (in, out)
    return np.transpose(t)


def _same(t: np.ndarray) -> np.ndarray:
    return t


Transform = Callable[[np.ndarray], np.ndarray]


def key_table(config: VideoMAEConfig) -> list[tuple[str, str, Transform, tuple[int, ...]]]:
    """(torch key, flax path, torch -> flax transform, torch shape) for every parameter, in file order."""
    d, h, c = config.embed_dim, config.mlp_dim, config.in_chans
    t, p = config.tubelet_size, config.patch_size
    table = [("patch_embed.proj.weight", "patch_embed/kernel", _conv3d, (d, c, t, p, p)),
             ("patch_embed.proj.bias", "patch_embed/bias", _same, (d,))]
    for i in range(config.depth):
        src, dst = f"blocks.{i}.", f"blocks_{i}/"
        table += [
            (src + "norm1.weight", dst + "norm1/scale", _same, (d,)),
            (src + "norm1.bias", dst + "norm1/bias", _same, (d,)),
            (src + "attn.q_bias", dst + "attn/q_bias", _same, (d,)),
            (src + "attn.v_bias", dst + "attn/v_bias", _same, (d,)),
            (src + "attn.qkv.weight", dst + "attn/qkv/kernel", _linear, (3 * d, d)),
            (src + "attn.proj.weight", dst + "attn/proj/kernel", _linear, (d, d)),
            (src + "attn.proj.bias", dst + "attn/proj/bias", _same, (d,)),
            (src + "norm2.weight", dst + "norm2/scale", _same, (d,)),
            (src + "norm2.bias", dst + "norm2/bias", _same, (d,)),
            (src + "mlp.fc1.weight", dst + "mlp/fc1/kernel", _linear, (h, d)),
            (src + "mlp.fc1.bias", dst + "mlp/fc1/bias", _same, (h,)),
            (src + "mlp.fc2.weight", dst + "mlp/fc2/kernel", _linear, (d, h)),
            (src + "mlp.fc2.bias", dst + "mlp/fc2/bias", _same, (d,)),
        ]
    table += [("fc_norm.weight", "fc_norm/scale", _same, (d,)),
              ("fc_norm.bias", "fc_norm/bias", _same, (d,))]
    return table


def check_keys(state_dict: Mapping[str, Any], config: VideoMAEConfig,
               source: str | None = None) -> list[str]:
    """Strict key and shape check (no array is read). Returns notes on keys dropped on purpose."""
    if is_pretraining(state_dict):
        raise pretraining_error(source)
    table = key_table(config)
    expected = {key: shape for key, _, _, shape in table}
    missing = [key for key in expected if key not in state_dict]
    unexpected = [show(key) for key in state_dict if key not in expected and key not in DROPPED]
    wrong = [f"{key}: {tuple(state_dict[key].shape)}, expected {expected[key]}"
             for key in expected if key in state_dict and tuple(state_dict[key].shape) != expected[key]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {missing[:20]}{' ...' if len(missing) > 20 else ''}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {unexpected[:20]}"
                        f"{' ...' if len(unexpected) > 20 else ''}")
    if wrong:
        problems.append(f"wrong shapes: {wrong[:20]}")
    if problems:
        if "norm.weight" in state_dict and "fc_norm.weight" not in state_dict:
            problems.append("(a per-token 'norm' instead of 'fc_norm': not the mean-pooled fine-tuned "
                            f"model; use {CHECKPOINT_FILE})")
        size = f"{config.name or ''} ({config.embed_dim}/{config.depth}/{config.num_heads})"
        raise VideoMAEMappingError(source, f"the state dict does not fit VideoMAE {size}: "
                                   + "; ".join(problems))
    return [f"'{key}' not used (classification head)" for key in DROPPED if key in state_dict]


def _set(tree: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split("/")
    for name in parents:
        tree = tree.setdefault(name, {})
    tree[leaf] = value


def _to_numpy(array: np.ndarray, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=dtype)


def torch_to_flax(state_dict: dict[str, Any], config: VideoMAEConfig | None = None, dtype: Any = None,
                  source: str | None = None, place: Callable[[np.ndarray, Any], Any] = _to_numpy,
                  consume: bool = False) -> tuple[VideoMAEConfig, dict[str, Any], list[str]]:
    """Flat (prefix-stripped) PyTorch state dict -> (config, Flax params tree, notes).

    Every key and shape is checked before any tensor is converted. `place(array, dtype)` makes
    each Flax leaf from the transposed view (default: a contiguous numpy array; `dtype` None keeps
    the tensor's own dtype). With `consume`, each source tensor is removed from `state_dict` as soon
    as its leaf exists, so the source's memory is released tensor by tensor.
    """
    config = infer_config(state_dict, source) if config is None else config
    notes = check_keys(state_dict, config, source)
    params: dict[str, Any] = {}
    for key, path, transform, _ in key_table(config):
        tensor = state_dict.pop(key) if consume else state_dict[key]
        leaf_dtype = tensor.dtype if dtype is None else dtype
        _set(params, path, place(transform(np.asarray(tensor)), leaf_dtype))
        del tensor
    if consume:
        for key in DROPPED:
            state_dict.pop(key, None)
    return config, params, notes


def flax_shapes(config: VideoMAEConfig) -> dict[str, tuple[int, ...]]:
    """Flax path -> shape expected from the key table (what `torch_to_flax` produces)."""
    out = {}
    for _, path, transform, shape in key_table(config):
        view = np.broadcast_to(np.zeros((), np.float16), shape)  # no memory: zero strides
        out[path] = tuple(transform(view).shape)
    return out


# --- files --------------------------------------------------------------------------------------

def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, Any], list[str]]:
    """A `.pth` or `.safetensors` file -> flat, prefix-stripped state dict + notes.

    Read by the project's safe reader (`state_dict_from_file`: nothing in the file is executed,
    PyTorch is not needed, `{'module': ...}` / `{'model': ...}` containers opened); `module.` /
    `_orig_mod.` prefixes are stripped here.
    """
    from pthnet_jax.convert.io import state_dict_from_file

    state_dict, _ = state_dict_from_file(path)
    return unwrap(state_dict, str(path))


def load_checkpoint(path: str | os.PathLike, config: VideoMAEConfig | None = None, dtype: Any = None,
                    **overrides: Any) -> LoadedVideoMAE:
    """A VideoMAE V2 checkpoint file -> config + `{"params": ...}` of jax arrays.

    Tensors are converted and moved to the default device one at a time while the source state
    dict is emptied, so the peak is about one copy of the weights plus one tensor (the checkpoint's
    precision is kept unless `dtype` is given). `overrides` (num_heads, num_frames, img_size) go to
    `infer_config` when `config` is None.
    """
    import jax
    import jax.numpy as jnp

    source = str(path)
    state_dict, notes = read_state_dict(path)
    if is_pretraining(state_dict):
        raise pretraining_error(source)
    if config is None:
        config = infer_config(state_dict, source, **overrides)

    def place(array: np.ndarray, leaf_dtype: Any) -> Any:
        return jax.device_put(jnp.asarray(array, dtype=leaf_dtype))

    config, params, more = torch_to_flax(state_dict, config, dtype, source, place=place, consume=True)
    return LoadedVideoMAE(config, {"params": params}, notes + more)


def load_videomae(path: str | os.PathLike, dtype: Any = None, compute_dtype: Any = np.float32,
                  config: VideoMAEConfig | None = None, attention: str = "auto", **overrides: Any
                  ) -> tuple[VideoMAE, dict[str, Any]]:
    """A VideoMAE V2 checkpoint (`.pth` or `.safetensors`) -> (module, {"params": ...}).

    The size is inferred from the shapes unless `config` is given (`overrides` such as num_heads,
    num_frames, img_size complete the inferred config). Parameters keep the checkpoint's precision
    (float16 for the released ViT-g) unless `dtype` asks for another; `compute_dtype` is the
    module's compute dtype (float32: the original's numbers; bfloat16: speed).
    """
    loaded = load_checkpoint(path, config=config, dtype=dtype, **overrides)
    return VideoMAE(loaded.config, dtype=compute_dtype, attention=attention), loaded.variables


__all__ = ["DROPPED", "LoadedVideoMAE", "PRETRAINING_FILE", "VideoMAEMappingError", "check_keys", "describe",
           "flax_shapes", "infer_config", "is_pretraining", "is_videomae", "key_table", "load_checkpoint",
           "load_videomae", "read_state_dict", "torch_to_flax", "unwrap"]
