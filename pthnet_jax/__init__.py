"""pthnet-jax: PTH-Net (Pyramid Temporal Hierarchy Network, IEEE TIP 2024) in JAX/Flax."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pthnet_jax.models.pthnet import LEVELS, ModelConfig, PTHNet, init_variables

__version__ = "0.1.0"
__all__ = ["LEVELS", "ModelConfig", "PTHNet", "init_variables", "load_model", "__version__"]


def load_model(path: str | os.PathLike, dtype: Any = None) -> tuple[PTHNet, dict[str, Any]]:
    """Load a model from a PyTorch `.pth` file or a pthnet-jax checkpoint directory.

    A `.pth` file is read without PyTorch and without running code from it. A training work
    directory is accepted too: its `best` checkpoint is used.
    Returns `(model, variables)`; call `model.apply(variables, features, masks, train=False)`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    if path.is_file():
        from pthnet_jax.convert import import_pth

        imported = import_pth(path)
        config, variables = imported.config, imported.variables
    else:
        from pthnet_jax.checkpoint import load_checkpoint

        if not (path / "pthnet").exists() and (path / "best").exists():
            path = path / "best"
        config, variables, _, _ = load_checkpoint(path)
    return PTHNet(config, dtype=dtype), variables
