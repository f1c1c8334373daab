"""The pthnet-jax checkpoint directory: Orbax items `params`, `pthnet` (JSON), and the optional
`model_state` and `torch_extra`. One format for every model family.

`pthnet convert x.pth DIR` writes it, and every step directory of a training run
(`run_checkpoints.TrainCheckpoints`) carries the same items (plus `optimizer`), so
`load_checkpoint`, `pthnet evaluate` and `pthnet convert DIR out.pth` accept both.

- `params`: the Flax params tree (`StandardSave`), restored against the tree the model config implies.
- `pthnet`: `{"format": "pthnet-jax", "format_version": 1, "family": "pthnet", "model_config": {...},
  "provenance": {...}}`. `family` names the model family (`pthnet_jax.task.FAMILIES`) whose config
  dataclass reads `model_config`; checkpoints written before families existed have none: PTH-Net.
- `model_state` (optional): the mutable collections of families that have them (BatchNorm's
  `batch_stats`); absent = none.
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

from pthnet_jax.orbax_errors import QuietOrbaxErrors
from pthnet_jax.task import DEFAULT_FAMILY, UnknownFamily, get_task

FORMAT = "pthnet-jax"
FORMAT_VERSION = 1
PARAMS_ITEM, INFO_ITEM, EXTRA_ITEM, MODEL_STATE_ITEM = "params", "pthnet", "torch_extra", "model_state"


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, incomplete or of another format."""


def checkpoint_info(model_config: Any, provenance: Mapping[str, Any], family: str = DEFAULT_FAMILY
                    ) -> dict[str, Any]:
    """The JSON document stored in the `pthnet` item."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "family": family,
            "model_config": model_config.to_dict(), "provenance": dict(provenance)}


def class_names(info: Mapping[str, Any]) -> list[str] | None:
    """The class names (in label order) of the data a checkpoint was trained on, when it records them
    (a training run's checkpoints do, in `provenance.class_names` or its dataset fingerprint)."""
    provenance = info.get("provenance") or {}
    names = provenance.get("class_names") or (provenance.get("dataset") or {}).get("class_names")
    return [str(n) for n in names] if isinstance(names, list) and names else None


def save_args(params: Any, model_config: Any, provenance: Mapping[str, Any],
              torch_extra: Mapping[str, np.ndarray] | None = None, *, family: str = DEFAULT_FAMILY,
              model_state: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Orbax save args for the model items; training adds its `optimizer` item to these."""
    items = {PARAMS_ITEM: ocp.args.StandardSave(params),
             INFO_ITEM: ocp.args.JsonSave(checkpoint_info(model_config, provenance, family))}
    if model_state:
        items[MODEL_STATE_ITEM] = ocp.args.StandardSave(dict(model_state))
    if torch_extra:
        items[EXTRA_ITEM] = ocp.args.StandardSave({k: np.asarray(v) for k, v in torch_extra.items()})
    return items


def save_checkpoint(path: str | os.PathLike, params: Any, model_config: Any, provenance: Mapping[str, Any],
                    torch_extra: Mapping[str, np.ndarray] | None = None, *, family: str = DEFAULT_FAMILY,
                    model_state: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint directory. Orbax writes to a temporary name and renames at the end."""
    path = Path(path).absolute()
    if path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite a checkpoint")
    remove_unfinished_saves(path)
    try:  # a failure is reported once by the caller; Orbax's writer threads stay quiet
        with QuietOrbaxErrors(), ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            checkpointer.save(path, ocp.args.Composite(**save_args(params, model_config, provenance, torch_extra,
                                                                    family=family, model_state=model_state)))
    except BaseException:
        remove_unfinished_saves(path)  # a failed save (disk full...) leaves nothing behind
        raise
    return path


def remove_unfinished_saves(path: Path) -> list[Path]:
    """Remove Orbax's temporary directories of `path` (`PATH.orbax-checkpoint-tmp-*`): what a writer
    killed mid-save left behind. Called before writing `path` again (process 0 only)."""
    import jax

    from pthnet_jax.fsutil import remove_path

    if jax.process_index() != 0 or not path.parent.is_dir():
        return []
    leftovers = list(path.parent.glob(f"{path.name}.orbax-checkpoint-tmp*"))
    for leftover in leftovers:
        remove_path(leftover)
    return leftovers


def read_info(path: str | os.PathLike) -> dict[str, Any]:
    """The `pthnet` JSON document of a checkpoint directory, validated (`family` filled in)."""
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
    if not isinstance(info, dict) or info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        got = info if not isinstance(info, dict) else f"{info.get('format')!r} version {info.get('format_version')!r}"
        raise CheckpointError(f"{info_file}: expected format {FORMAT!r} version {FORMAT_VERSION}, got {got}")
    if "model_config" not in info:
        raise CheckpointError(f"{info_file}: key 'model_config' is missing")
    info.setdefault("family", DEFAULT_FAMILY)  # written before families existed: PTH-Net
    return info


def task_and_config(path: Path, info: Mapping[str, Any]) -> tuple[Any, Any]:
    """The family's task and its model config from a checkpoint's info JSON."""
    try:
        task = get_task(info.get("family", DEFAULT_FAMILY))
    except UnknownFamily as err:
        raise CheckpointError(f"{path}: {err}") from err
    try:
        return task, task.config_from_dict(info["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: bad 'model_config' in the {INFO_ITEM} item: {err}") from err


def split_variables(variables: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """{"params", *collections} -> (params, {collections})."""
    return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def load_checkpoint(path: str | os.PathLike) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
    """Read a checkpoint directory -> (model config, variables {"params", *model_state}, info JSON,
    torch extras). The checkpoint's family says which model config and variables to expect."""
    path = Path(path).absolute()
    info = read_info(path)
    task, config = task_and_config(path, info)
    params_target, state_target = split_variables(task.abstract_variables(config))
    with ocp.StandardCheckpointer() as checkpointer:
        params = _restore_item(checkpointer, path / PARAMS_ITEM, params_target, config)
        model_state: dict[str, Any] = {}
        if state_target:
            if not (path / MODEL_STATE_ITEM).is_dir():
                raise CheckpointError(f"{path}: no '{MODEL_STATE_ITEM}' item, but a {info['family']} model keeps "
                                      f"{sorted(state_target)}; the checkpoint is incomplete")
            model_state = _restore_item(checkpointer, path / MODEL_STATE_ITEM, state_target, config)
        extra: dict[str, np.ndarray] = {}
        if (path / EXTRA_ITEM).is_dir():
            try:
                extra = {k: np.asarray(v) for k, v in checkpointer.restore(path / EXTRA_ITEM).items()}
            except Exception as err:  # noqa: BLE001
                raise CheckpointError(f"{path / EXTRA_ITEM}: cannot be read ({type(err).__name__}: "
                                      f"{str(err)[:600]}); the checkpoint is damaged") from err
    return config, {"params": params, **model_state}, info, extra


def _restore_item(checkpointer, item: Path, target: Any, config: Any) -> Any:
    try:
        return checkpointer.restore(item, target)
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise CheckpointError(f"{item}: the arrays do not match the model config {config}: "
                              f"{str(err)[:600]}") from err
    except Exception as err:  # noqa: BLE001 - TensorStore errors of damaged files
        raise CheckpointError(f"{item}: cannot be read ({type(err).__name__}: {str(err)[:600]}); "
                              "the checkpoint is damaged") from err
