"""`.safetensors` files: a safe format (a JSON header and raw tensor bytes, nothing executable).

Read and written with the `safetensors` package, which validates the header (offsets in bounds, no
overlaps, dtype x shape = bytes). pthnet-jax keeps its model config and a little provenance as JSON
in the header's `__metadata__` under the key `pthnet`; the tensors carry the original's key names
(no `module.` prefix), so `safetensors.torch.load_file` + `load_state_dict` works on the PyTorch side.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pthnet_jax.convert.config_json import config_from_dict
from pthnet_jax.convert.errors import CheckpointLimitError, CheckpointReadError, show
from pthnet_jax.convert.torch_pickle import DEFAULT_LIMITS, ReadLimits
from pthnet_jax.fsutil import atomic_path

META_KEY = "pthnet"
_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL"}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
             "U16": 2, "U32": 4, "U64": 8, "BOOL": 1}


def read_safetensors(path: str | os.PathLike, limits: ReadLimits = DEFAULT_LIMITS
                     ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> array, the header's metadata) of a `.safetensors` file; CheckpointError otherwise."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise CheckpointReadError(path, f"cannot read the file ({err.strerror})") from None
    if size > limits.max_file_bytes:
        raise CheckpointLimitError(path, f"the file has {size} bytes, more than the limit "
                                   f"{limits.max_file_bytes}")
    try:
        from safetensors import safe_open

        tensors: dict[str, np.ndarray] = {}
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            names = list(handle.keys())
            if len(names) > limits.max_tensors:
                raise CheckpointLimitError(path, f"{len(names)} tensors, more than the limit "
                                           f"{limits.max_tensors}")
            total = 0
            for name in names:
                piece = handle.get_slice(name)
                dtype, shape = piece.get_dtype(), piece.get_shape()
                if dtype not in _DTYPES:
                    raise CheckpointReadError(path, f"tensor '{show(name)}' has dtype {show(dtype)}, "
                                              "which is not read")
                total += math.prod(shape) * _ITEMSIZE[dtype]
            if total > limits.max_storage_bytes:
                raise CheckpointLimitError(path, f"the tensors need {total} bytes, more than the limit "
                                           f"{limits.max_storage_bytes}")
            for name in names:
                array = handle.get_tensor(name)  # a copy in memory the array owns (not the mapping)
                tensors[name] = array.view(np.uint8) != 0 if array.dtype == np.bool_ else array
    except CheckpointReadError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError and others
        raise CheckpointReadError(path, f"not a valid safetensors file ({type(err).__name__}: "
                                  f"{show(str(err), 200)})") from None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CheckpointReadError(path, "safetensors metadata must map strings to strings")
    return tensors, dict(metadata)


def provenance_from_metadata(path: Path, metadata: Mapping[str, str]):
    """(ModelConfig or None, provenance dict) from the `pthnet` metadata entry, when there is one."""
    from pthnet_jax.convert.mapping import MappingError, check_config_bounds

    text = metadata.get(META_KEY)
    if text is None:
        return None, {}
    if len(text) > (1 << 20):
        raise CheckpointLimitError(path, "the 'pthnet' metadata entry is larger than 1 MiB")
    try:
        info = json.loads(text)
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        config = config_from_dict(info.get("model_config"))
        check_config_bounds(config)
    except (ValueError, TypeError, RecursionError, MappingError) as err:
        raise CheckpointReadError(path, f"invalid 'pthnet' metadata ({show(str(err), 300)})") from None
    provenance = info.get("provenance")
    return config, provenance if isinstance(provenance, dict) else {}


def write_safetensors(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray],
                      info: Mapping[str, Any]) -> None:
    """Write tensors + `info` (JSON, under the metadata key `pthnet`) atomically."""
    from safetensors.numpy import save_file

    tensors = {key: np.ascontiguousarray(value) for key, value in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", META_KEY: json.dumps(info)})
