"""PyTorch <-> pthnet-jax checkpoints (installed as `pthnet_jax.convert`). No PyTorch needed.

Import reads `.pth` files (see `torch_pickle`: a checked, allowlist-only reader that never runs code
from the file) and `.safetensors`; export writes the `torch.save` zip layout itself
(`torch_writer`) or safetensors. Every problem a file causes is a `CheckpointError` naming the file.
"""
from pthnet_jax.convert.errors import (CheckpointError, CheckpointLimitError, CheckpointReadError,
                                       UnsafeCheckpointError)
from pthnet_jax.convert.io import (CheckpointMappingError, ImportedCheckpoint, checkpoint_to_pth,
                                   checkpoint_to_safetensors, export_checkpoint, import_pth,
                                   pth_to_checkpoint, state_dict_from_file)
from pthnet_jax.convert.torch_pickle import DEFAULT_LIMITS, ReadLimits, read_torch_file

__all__ = ["CheckpointError", "CheckpointLimitError", "CheckpointMappingError", "CheckpointReadError",
           "DEFAULT_LIMITS", "ImportedCheckpoint", "ReadLimits", "UnsafeCheckpointError",
           "checkpoint_to_pth", "checkpoint_to_safetensors", "export_checkpoint", "import_pth",
           "pth_to_checkpoint", "read_torch_file", "state_dict_from_file"]
