"""pthnet-jax: PTH-Net (Pyramid Temporal Hierarchy Network, IEEE TIP 2024) and other facial-expression
model families (`pthnet_jax.task.FAMILIES`) in JAX/Flax, on one training and evaluation harness."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__version__ = "0.1.0"
__all__ = ["LEVELS", "ModelConfig", "PTHNet", "init_variables", "load_model", "load_variables", "__version__"]

# JAX and Flax are imported on first use, so that `pthnet --help` and `pthnet convert` start fast.
_LAZY = {"LEVELS": "pthnet_jax.pyramid", "ModelConfig": "pthnet_jax.models.pthnet",
         "PTHNet": "pthnet_jax.models.pthnet", "init_variables": "pthnet_jax.models.pthnet"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pthnet_jax' has no attribute {name!r}")


def load_model(path: str | os.PathLike, dtype: Any = None):
    """Load a model from a PyTorch `.pth` or `.safetensors` file or a pthnet-jax checkpoint directory.

    A `.pth` file is read without PyTorch and without running code from it. A training work
    directory is accepted too: its `best` checkpoint is used. A checkpoint directory names its model
    family (PTH-Net when it names none), which builds the model.
    Returns `(model, variables)`. For PTH-Net, `model.apply(variables, features, masks, train=False)`
    takes dicts keyed by level (`{"H": (B, T, n_in) float32}`, `{"H": (B, T) bool}`; evaluation uses
    level H, `T = max_len` = 16 windows picked as the original's evaluation does) and returns a dict
    `{"H": logits (B, num_classes)}` (training, `train=True`, returns `{"L", "M", "H"}`). For one
    clip's raw windows of any length, `pthnet_jax.inference` samples as the original does.
    """
    task, config, variables = load_variables(path)
    return task.model(config, dtype=dtype), variables


def load_variables(path: str | os.PathLike) -> tuple[Any, Any, dict]:
    """(the family's task, its model config, variables {"params", *model_state}) of a checkpoint
    file or directory (see `load_model`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    if path.is_file():
        from pthnet_jax.convert.cli import import_file
        from pthnet_jax.task import get_task

        imported = import_file(path)  # PTH-Net's, or the family whose keys these are (LSTPNet, HTNet)
        return get_task(getattr(imported, "family", None) or "pthnet"), imported.config, imported.variables
    from pthnet_jax.checkpoint import load_checkpoint, task_and_config

    if not (path / "pthnet").exists() and (path / "best").exists():
        path = path / "best"
    config, variables, info, _ = load_checkpoint(path)
    task, _ = task_and_config(path, info)
    return task, config, variables
