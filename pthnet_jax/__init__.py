"""pthnet-jax: PTH-Net (Pyramid Temporal Hierarchy Network, IEEE TIP 2024) in JAX/Flax."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__version__ = "0.1.0"
__all__ = ["LEVELS", "ModelConfig", "PTHNet", "init_variables", "load_model", "__version__"]

# JAX and Flax are imported on first use, so that `pthnet --help` and `pthnet convert` start fast.
_LAZY = {"LEVELS": "pthnet_jax.pyramid", "ModelConfig": "pthnet_jax.models.pthnet",
         "PTHNet": "pthnet_jax.models.pthnet", "init_variables": "pthnet_jax.models.pthnet"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pthnet_jax' has no attribute {name!r}")


def load_model(path: str | os.PathLike, dtype: Any = None):
    """Load a model from a PyTorch `.pth` file or a pthnet-jax checkpoint directory.

    A `.pth` file is read without PyTorch and without running code from it. A training work
    directory is accepted too: its `best` checkpoint is used.
    Returns `(model, variables)`: a `PTHNet` and its `{"params": ...}`. Then
    `model.apply(variables, {"H": features}, {"H": masks}, train=False)` returns `{"H": logits}` for
    features `(B, max_len, n_in)` (channels last) and boolean masks `(B, max_len)`.
    """
    from pthnet_jax.models.pthnet import PTHNet

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
