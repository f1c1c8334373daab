"""Files in, files out: `.pth` / `.safetensors` -> checkpoint directory and back. No PyTorch anywhere.

Every problem a file can cause ends in `CheckpointError` (a `ValueError`) naming the file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pthnet_jax.convert.config_json import config_from_dict
from pthnet_jax.convert.errors import CheckpointError, CheckpointLimitError, CheckpointReadError, show
from pthnet_jax.convert.mapping import MappingError, flax_to_torch, strip_prefix, torch_to_flax
from pthnet_jax.convert.read_limits import _Budget
from pthnet_jax.convert.torch_pickle import DEFAULT_LIMITS, ReadLimits, read_torch_file, to_plain
from pthnet_jax.models.pthnet import ModelConfig, count_params

# Where a training checkpoint keeps its model weights, in the order they are looked for:
# PTH-Net and most scripts use 'state_dict', timm 'model', VideoMAE / DeepSpeed 'module', LSTPNet
# 'model_state_dict'.
STATE_DICT_KEYS = ("state_dict", "model", "module", "model_state_dict")
SAFETENSORS_META_KEY = "pthnet"


class CheckpointMappingError(CheckpointError, MappingError):
    """A readable file whose tensors do not form a PTH-Net state dict (names the file)."""


@dataclasses.dataclass
class ImportedCheckpoint:
    config: ModelConfig
    variables: dict[str, Any]  # {"params": ...}
    provenance: dict[str, Any]  # source file, sha256, epoch, best_acc, ...
    torch_extra: dict[str, np.ndarray]  # tensors the Flax model does not use (pos_embed*)
    notes: list[str]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_format(path: str | os.PathLike) -> str:
    """'pth' (a zip archive), 'safetensors' or 'unknown', from the file's first bytes."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return "unknown"
    if head[:2] == b"PK":
        return "pth"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30):
        return "safetensors"
    return "unknown"


def _numeric(value: Any) -> bool:
    return isinstance(value, np.ndarray) and (value.dtype.kind in "biufc" or value.dtype.name == "bfloat16")


def _split_checkpoint(loaded: Any, path: Path) -> tuple[Any, dict[str, Any], str | None]:
    if not isinstance(loaded, dict):
        raise CheckpointReadError(path, "expected a dict (a state dict, or a training checkpoint with a "
                                  f"'state_dict' key), found {type(loaded).__name__}")
    for key in STATE_DICT_KEYS:
        if isinstance(loaded.get(key), dict):
            return loaded[key], {k: v for k, v in loaded.items() if k != key}, key
    return loaded, {}, None


def _metadata(rest: Mapping[str, Any], limits: ReadLimits) -> dict[str, Any]:
    budget = _Budget(limits.max_plain_nodes)
    meta: dict[str, Any] = {}
    for key, value in rest.items():
        name = key if isinstance(key, str) else str(key)
        if key == "optimizer":
            groups = value.get("param_groups", []) if isinstance(value, dict) else None
            meta["optimizer"] = {"present": True,
                                 "param_groups": None if groups is None
                                 else to_plain(groups, limits=limits, _budget=budget)}
        elif isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "biuf":
            meta[name] = value.reshape(()).item()
        else:
            meta[name] = to_plain(value, limits=limits, _budget=budget)
    return meta


def state_dict_from_file(path: str | os.PathLike, limits: ReadLimits = DEFAULT_LIMITS
                         ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The model state dict of a `.pth` or `.safetensors` file + its metadata.

    `.pth`: a plain state dict, or a training checkpoint keeping it under 'state_dict', 'model' or
    'module' (the other entries become the metadata, made JSON-friendly). Values are numeric numpy
    arrays, each storage read straight into its final array. Raises `CheckpointError` naming the file.
    """
    path = Path(path)
    if file_format(path) == "safetensors":
        from pthnet_jax.convert.safetensors_io import read_safetensors

        state_dict, header_meta = read_safetensors(path, limits)
        return state_dict, {"safetensors_metadata": header_meta}
    loaded = read_torch_file(path, limits)
    state_dict, rest, _ = _split_checkpoint(loaded, path)
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not _numeric(v)]
    if bad:
        raise CheckpointReadError(path, "the state dict must map names to numeric tensors; other "
                                  f"entries: {[show(k) for k in bad[:10]]}"
                                  + (f" and {len(bad) - 10} more" if len(bad) > 10 else ""))
    try:
        meta = _metadata(rest, limits)
    except CheckpointLimitError as err:
        raise CheckpointLimitError(path, err.reason) from None
    return dict(state_dict), meta


def _plain_number(value: Any, kind: type) -> Any:
    """An int epoch / float accuracy from metadata, or None when it is anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if kind is int:
        return int(value) if float(value).is_integer() and abs(value) < (1 << 31) else None
    return float(value) if math.isfinite(value) else None


def _mapped(path: Path, state_dict: Mapping[str, np.ndarray], config: ModelConfig | None):
    try:
        return torch_to_flax(state_dict, config)
    except MappingError as err:
        raise CheckpointMappingError(path, str(err)) from None


def import_pth(path: str | os.PathLike, config: ModelConfig | None = None,
               limits: ReadLimits = DEFAULT_LIMITS) -> ImportedCheckpoint:
    """Read an original PTH-Net `.pth` (or a `.safetensors` written by `pthnet convert`) into Flax
    variables; the config comes from the file's metadata or is inferred from the tensor shapes."""
    path = Path(path)
    state_dict, meta = state_dict_from_file(path, limits)
    if "safetensors_metadata" in meta:
        from pthnet_jax.convert.safetensors_io import provenance_from_metadata

        stored_config, stored = provenance_from_metadata(path, meta["safetensors_metadata"])
        config = config or stored_config
        meta = {"epoch": stored.get("epoch"), "best_acc": stored.get("best_acc")}
    _, had_prefix = strip_prefix(state_dict)
    config, params, extra, notes = _mapped(path, state_dict, config)
    epoch, best_acc = _plain_number(meta.get("epoch"), int), _plain_number(meta.get("best_acc"), float)
    for name, raw, clean in (("epoch", meta.get("epoch"), epoch), ("best_acc", meta.get("best_acc"), best_acc)):
        if raw is not None and clean is None:
            notes.append(f"ignored a {name} that is not a plain number")
    provenance = {"source": "pytorch", "source_file": str(path.absolute()), "sha256": _sha256(path),
                  "module_prefix": had_prefix, "epoch": epoch, "best_acc": best_acc, "metadata": meta,
                  "notes": notes}
    return ImportedCheckpoint(config, {"params": params}, provenance, extra, notes)


def pth_to_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> ImportedCheckpoint:
    """`.pth` / `.safetensors` -> pthnet-jax checkpoint directory (DST must not exist)."""
    from pthnet_jax.checkpoint import save_checkpoint

    imported = import_pth(src)
    save_checkpoint(dst, imported.variables["params"], imported.config, imported.provenance,
                    imported.torch_extra)
    return imported


def _export_payload(src: str | os.PathLike):
    from pthnet_jax.checkpoint import load_checkpoint

    config, variables, info, extra = load_checkpoint(src)
    state_dict = flax_to_torch(variables["params"], config, extra)
    provenance = info.get("provenance", {})
    epoch = _plain_number(provenance.get("epoch"), int)
    best_acc = _plain_number(provenance.get("best_acc"), float)
    return config, variables, state_dict, epoch, best_acc


def checkpoint_to_pth(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Checkpoint directory -> `.pth` the original code loads (`module.`-prefixed state_dict + epoch).

    Written without PyTorch (`torch_writer`), to a temporary name and renamed: a crash never leaves a
    half-written file. `torch.load(dst, weights_only=True)` reads it.
    """
    from pthnet_jax.convert.torch_writer import write_torch_file

    config, variables, state_dict, epoch, best_acc = _export_payload(src)
    payload: dict[str, Any] = {
        "epoch": epoch if epoch is not None else 0,
        "state_dict": type(state_dict)(("module." + key, np.asarray(value)) for key, value in state_dict.items()),
    }
    if best_acc is not None:
        payload["best_acc"] = np.asarray(best_acc, np.float32).reshape(())
    write_torch_file(dst, payload)
    return {"config": config, "num_params": count_params(variables["params"]), "epoch": payload["epoch"]}


def checkpoint_to_safetensors(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Checkpoint directory -> `.safetensors` (the original's key names without `module.`, every
    tensor incl. the unused pos_embed ones) with the model config and provenance in its metadata."""
    from pthnet_jax.convert.safetensors_io import write_safetensors

    config, variables, state_dict, epoch, best_acc = _export_payload(src)
    write_safetensors(dst, state_dict, {"format": "pthnet-jax", "format_version": 1,
                                        "model_config": config.to_dict(),
                                        "provenance": {"epoch": epoch, "best_acc": best_acc}})
    return {"config": config, "num_params": count_params(variables["params"]), "epoch": epoch}


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Checkpoint directory -> `.safetensors` when DST ends so, else a `.pth`."""
    if str(dst).lower().endswith(".safetensors"):
        return checkpoint_to_safetensors(src, dst)
    return checkpoint_to_pth(src, dst)


def config_from_json(text: str) -> ModelConfig:
    """A ModelConfig from JSON text, fields type-checked (ValueError otherwise)."""
    values = json.loads(text)
    return config_from_dict(values)
