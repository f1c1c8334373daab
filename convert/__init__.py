"""PyTorch <-> pthnet-jax checkpoints (installed as `pthnet_jax.convert`).

Import reads `.pth` files without PyTorch (see `torch_pickle`); export needs PyTorch.
"""
from pthnet_jax.convert.io import (ImportedCheckpoint, checkpoint_to_pth, import_pth,
                                   pth_to_checkpoint, state_dict_from_file)

__all__ = ["ImportedCheckpoint", "checkpoint_to_pth", "import_pth", "pth_to_checkpoint",
           "state_dict_from_file"]
