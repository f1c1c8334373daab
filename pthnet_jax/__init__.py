"""pthnet-jax: PTH-Net (Pyramid Temporal Hierarchy Network, IEEE TIP 2024) in JAX/Flax."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__version__ = "0.1.0"
__all__ = ["LEVELS", "ModelConfig", "PTHNet", "init_variables", "load_model", "__version__"]
_MODEL_NAMES = ("LEVELS", "ModelConfig", "PTHNet", "init_variables")


def __getattr__(name: str):
    """The model names, imported on first use: `pthnet --version`, `synth` or `--help` need no JAX."""
    if name in _MODEL_NAMES:
        from pthnet_jax.models import pthnet

        return getattr(pthnet, name)
    raise AttributeError(f"module 'pthnet_jax' has no attribute {name!r}")


def load_model(path: str | os.PathLike, dtype: Any = None) -> tuple[PTHNet, dict[str, Any]]:
    """Load a model from a PyTorch `.pth` file or a pthnet-jax checkpoint directory.

    A `.pth` file is read without PyTorch and without running code from it. A training work
    directory is accepted too: its `best` checkpoint is used.
    Returns `(model, variables)`. `model.apply(variables, features, masks, train=False)` takes dicts
    keyed by level (`{"H": (B, T, n_in) float32}`, `{"H": (B, T) bool}`; evaluation uses level H,
    `T = max_len` = 16 windows picked as the original's evaluation does) and returns a dict
    `{"H": logits (B, num_classes)}` (training, `train=True`, returns `{"L", "M", "H"}`). For one
    clip's raw windows of any length, use the inference helper, which samples as the original.
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
    from pthnet_jax.models.pthnet import PTHNet

    return PTHNet(config, dtype=dtype), variables
