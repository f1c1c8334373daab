"""What the pickle stack machine builds instead of real objects: allowlisted globals as inert tokens,
checked numpy dtypes, holders for numpy arrays/dtypes being unpickled, storage and tensor-view
references; and the allowlist itself.
"""
from __future__ import annotations

import re
from typing import Any

import ml_dtypes
import numpy as np

from pthnet_jax.convert.errors import UnsafeCheckpointError, show


# --- dtypes ---------------------------------------------------------------------------------------

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64), "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16), "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64), "ComplexDoubleStorage": np.dtype(np.complex128),
}
# numpy dtypes a pickled numpy array or scalar may have: (kind, itemsize).
_NUMPY_KINDS = {("b", 1), ("i", 1), ("i", 2), ("i", 4), ("i", 8), ("u", 1), ("u", 2), ("u", 4), ("u", 8),
                ("f", 2), ("f", 4), ("f", 8), ("c", 8), ("c", 16)}
_DTYPE_SPEC = re.compile(r"^[<>|=]?[biufc]\d{1,2}$|^(bool|int8|int16|int32|int64|uint8|uint16|uint32|"
                         r"uint64|float16|float32|float64|complex64|complex128)$")


def _checked_dtype(spec: Any, where: str) -> np.dtype:
    if isinstance(spec, _DtypeHolder):
        return spec.dtype
    if not isinstance(spec, str) or not _DTYPE_SPEC.match(spec):
        raise UnsafeCheckpointError(None, f"{where}: numpy dtype {show(spec)} is not allowed (numeric "
                                    "dtypes only)")
    try:
        dtype = np.dtype(spec)
    except TypeError as err:
        raise UnsafeCheckpointError(None, f"{where}: invalid numpy dtype {show(spec)}") from err
    if (dtype.kind, dtype.itemsize) not in _NUMPY_KINDS or dtype.fields is not None or dtype.shape:
        raise UnsafeCheckpointError(None, f"{where}: numpy dtype {show(spec)} is not allowed (numeric "
                                    "dtypes only)")
    return dtype


# --- tokens the stack machine builds --------------------------------------------------------------

class _Global:
    """An allowlisted global, resolved to what the reader does with it (never the real object)."""

    __slots__ = ("kind", "path", "dtype")

    def __init__(self, kind: str, path: str, dtype: np.dtype | None = None):
        self.kind, self.path, self.dtype = kind, path, dtype

    def __repr__(self) -> str:
        return f"<global {self.path}>"


class _DtypeHolder:
    """A numpy dtype being unpickled: `numpy.dtype(spec, ...)` then BUILD sets its byte order."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


class _ArrayHolder:
    """A numpy array being unpickled: `_reconstruct(ndarray, ...)`, then BUILD gives its data."""

    __slots__ = ("array",)

    def __init__(self):
        self.array: np.ndarray | None = None


class _StorageRef:
    __slots__ = ("key", "dtype", "numel", "location")

    def __init__(self, key: str, dtype: np.dtype, numel: int, location: str):
        self.key, self.dtype, self.numel, self.location = key, dtype, numel, location


class _TensorRef:
    __slots__ = ("storage", "offset", "size", "stride", "numel", "extent")

    def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple, numel: int,
                 extent: int):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.numel, self.extent = numel, extent


_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
_ALLOWED: dict[tuple[str, str], str] = {
    ("torch._utils", "_rebuild_tensor_v2"): "tensor_v2",
    ("torch._utils", "_rebuild_tensor"): "tensor",
    ("torch._utils", "_rebuild_parameter"): "parameter",
    ("torch._utils", "_rebuild_parameter_with_state"): "parameter",
    ("torch._tensor", "_rebuild_from_type_v2"): "from_type_v2",
    ("torch", "Tensor"): "tensor_type",
    ("torch.nn.parameter", "Parameter"): "tensor_type",
    ("collections", "OrderedDict"): "ordered_dict",
    ("_codecs", "encode"): "codecs_encode",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy.core.multiarray", "scalar"): "scalar",
    ("numpy._core.multiarray", "scalar"): "scalar",
    ("builtins", "set"): "set",
    ("builtins", "frozenset"): "frozenset",
    ("builtins", "complex"): "complex",
    ("builtins", "bytes"): "bytes",
    ("builtins", "object"): "object",
    ("copyreg", "_reconstructor"): "reconstructor",
}
_PLACEHOLDER_MODULES = ("__main__",)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_STORAGE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_KEY_INT = 1 << 31  # int dict keys/set items beyond this could be chosen to collide in a dict
