"""The pthnet-jax checkpoint directory: Orbax items `params`, `pthnet` (JSON) and `torch_extra`.

One format for everything that holds a model: `pthnet convert x.pth DIR` writes it, and every step
directory of a training run's `CheckpointManager` carries the same items (plus `train_state`), so
`load_checkpoint`, `pthnet evaluate` and `pthnet convert DIR out.pth` accept both.

- `params`: the Flax params tree (`StandardSave`), restored against the tree the model config implies.
- `pthnet`: `{"format": "pthnet-jax", "format_version": 1, "model_config": {...}, "provenance": {...}}`.
- `torch_extra` (optional): tensors of an imported PyTorch checkpoint that the Flax model does not use
  (the never-used `pos_embed*` weights), keyed by their PyTorch names, so an export gives them back.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import orbax.checkpoint as ocp

from pthnet_jax.models.pthnet import ModelConfig, abstract_variables

FORMAT = "pthnet-jax"
FORMAT_VERSION = 1
PARAMS_ITEM, INFO_ITEM, EXTRA_ITEM = "params", "pthnet", "torch_extra"


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, incomplete or of another format."""


def checkpoint_info(model_config: ModelConfig, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON document stored in the `pthnet` item."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            "model_config": model_config.to_dict(), "provenance": dict(provenance)}


def save_args(params: Any, model_config: ModelConfig, provenance: Mapping[str, Any],
              torch_extra: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Orbax save args for the model items; training adds its `train_state` item to these."""
    items = {PARAMS_ITEM: ocp.args.StandardSave(params),
             INFO_ITEM: ocp.args.JsonSave(checkpoint_info(model_config, provenance))}
    if torch_extra:
        items[EXTRA_ITEM] = ocp.args.StandardSave({k: np.asarray(v) for k, v in torch_extra.items()})
    return items


def save_checkpoint(path: str | os.PathLike, params: Any, model_config: ModelConfig,
                    provenance: Mapping[str, Any],
                    torch_extra: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write a checkpoint directory. Orbax writes to a temporary name and renames at the end."""
    path = Path(path).absolute()
    if path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite a checkpoint")
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(path, ocp.args.Composite(**save_args(params, model_config, provenance,
                                                                torch_extra)))
    return path


def read_info(path: str | os.PathLike) -> dict[str, Any]:
    """The `pthnet` JSON document of a checkpoint directory, validated."""
    path = Path(path)
    info_file = path / INFO_ITEM / "metadata"
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory (it does not exist or is a file)")
    if not info_file.is_file():
        raise CheckpointError(f"{path}: no '{INFO_ITEM}' item ({info_file} is missing); expected a "
                              "directory written by `pthnet convert` or `pthnet train`")
    try:
        info = json.loads(info_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{info_file}: invalid JSON ({err})") from err
    if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{info_file}: expected format {FORMAT!r} version {FORMAT_VERSION}, got "
                              f"{info.get('format')!r} version {info.get('format_version')!r}")
    if "model_config" not in info:
        raise CheckpointError(f"{info_file}: key 'model_config' is missing")
    return info


def load_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any], dict[str, Any],
                                                        dict[str, np.ndarray]]:
    """Read a checkpoint directory -> (model config, {"params": ...}, info JSON, torch extras)."""
    path = Path(path).absolute()
    info = read_info(path)
    try:
        config = ModelConfig.from_dict(info["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: bad 'model_config' in the {INFO_ITEM} item: {err}") from err
    target = abstract_variables(config)["params"]
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            params = checkpointer.restore(path / PARAMS_ITEM, target)
        except (ValueError, KeyError, FileNotFoundError) as err:
            raise CheckpointError(f"{path / PARAMS_ITEM}: parameters do not match the model config "
                                  f"{config}: {err}") from err
        extra: dict[str, np.ndarray] = {}
        if (path / EXTRA_ITEM).is_dir():
            extra = {k: np.asarray(v) for k, v in checkpointer.restore(path / EXTRA_ITEM).items()}
    return config, {"params": params}, info, extra
