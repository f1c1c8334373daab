"""Files in, files out: `.pth` -> checkpoint directory and back."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from pthnet_jax.convert.mapping import MappingError, flax_to_torch, strip_prefix, torch_to_flax
from pthnet_jax.convert.torch_pickle import CheckpointReadError, Placeholder, read_torch_file, to_plain
from pthnet_jax.models.pthnet import ModelConfig, count_params


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


def state_dict_from_file(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The model state dict of a `.pth` file (training checkpoint or plain state dict) + its metadata."""
    path = Path(path)
    loaded = read_torch_file(path)
    meta: dict[str, Any] = {}
    if isinstance(loaded, dict) and "state_dict" in loaded:
        state_dict = loaded["state_dict"]
        for key, value in loaded.items():
            if key == "state_dict":
                continue
            if key == "optimizer":
                meta["optimizer"] = {"present": True,
                                     "param_groups": to_plain(value.get("param_groups", []))
                                     if isinstance(value, dict) else None}
            elif isinstance(value, Placeholder):
                meta[key] = value.summary()
            elif isinstance(value, np.ndarray) and value.size == 1:
                meta[key] = value.item()
            else:
                meta[key] = to_plain(value)
    elif isinstance(loaded, dict):
        state_dict = loaded
    else:
        raise CheckpointReadError(f"{path}: expected a dict (a state dict, or a training checkpoint with "
                                  f"a 'state_dict' key), found {type(loaded).__name__}")
    if not isinstance(state_dict, dict) or not all(isinstance(v, np.ndarray) for v in state_dict.values()):
        bad = [k for k, v in (state_dict.items() if isinstance(state_dict, dict) else [])
               if not isinstance(v, np.ndarray)]
        raise CheckpointReadError(f"{path}: 'state_dict' must map names to tensors; non-tensor entries: "
                                  f"{bad[:10]}")
    return state_dict, meta


def import_pth(path: str | os.PathLike, config: ModelConfig | None = None) -> ImportedCheckpoint:
    """Read an original PTH-Net `.pth` into Flax variables, inferring the config from shapes."""
    path = Path(path)
    state_dict, meta = state_dict_from_file(path)
    _, had_prefix = strip_prefix(state_dict)
    try:
        config, params, extra, notes = torch_to_flax(state_dict, config)
    except MappingError as err:
        raise MappingError(f"{path}: {err}") from err
    provenance = {"source": "pytorch", "source_file": str(path.absolute()), "sha256": _sha256(path),
                  "module_prefix": had_prefix, "epoch": meta.get("epoch"),
                  "best_acc": meta.get("best_acc"), "metadata": meta, "notes": notes}
    return ImportedCheckpoint(config, {"params": params}, provenance, extra, notes)


def pth_to_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> ImportedCheckpoint:
    """`.pth` -> pthnet-jax checkpoint directory."""
    from pthnet_jax.checkpoint import save_checkpoint

    imported = import_pth(src)
    save_checkpoint(dst, imported.variables["params"], imported.config, imported.provenance,
                    imported.torch_extra)
    return imported


def _require_torch():
    try:
        import torch
    except ImportError as err:
        raise ImportError("exporting to a .pth file needs PyTorch: pip install \"pthnet-jax[torch]\" "
                          "(installs torch==2.13.0; a CPU build is enough)") from err
    return torch


def checkpoint_to_pth(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Checkpoint directory -> `.pth` the original code loads (`module.`-prefixed state_dict + epoch).

    Written to a temporary name and renamed, so a crash never leaves a half-written file.
    """
    from pthnet_jax.checkpoint import load_checkpoint

    torch = _require_torch()
    config, variables, info, extra = load_checkpoint(src)
    state_dict = flax_to_torch(variables["params"], config, extra)
    provenance = info.get("provenance", {})
    epoch = provenance.get("epoch")
    payload: dict[str, Any] = {
        "epoch": int(epoch) if epoch is not None else 0,
        "state_dict": type(state_dict)(("module." + key, torch.from_numpy(np.array(value)))
                                       for key, value in state_dict.items()),
    }
    if provenance.get("best_acc") is not None:
        payload["best_acc"] = torch.tensor(float(provenance["best_acc"]))
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return {"config": config, "num_params": count_params(variables["params"]), "epoch": payload["epoch"]}
