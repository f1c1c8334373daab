"""Read `torch.save` zip files without PyTorch, building only what was checked.

A `.pth` file is a zip archive holding a pickle (`<top>/data.pkl`) and one raw byte file per tensor
storage (`<top>/data/<key>`). This reader never unpickles with `pickle`: it walks the opcodes with
`pickletools.genops` and runs them on its own small stack machine, which

- resolves globals only from an allowlist, to inert tokens; nothing the file names is imported or
  called (tensor rebuilds, `OrderedDict`, numpy arrays/dtypes/scalars, `_codecs.encode`, sets);
  classes of the saving script's `__main__` (the original's `RecorderMeter`) become inert
  `Placeholder` objects holding the pickled state as plain data;
- builds numpy arrays itself: numeric dtypes only (an allowlist of kinds and sizes), bytes length
  checked against dtype x element count, never the `numpy.ndarray` constructor or a buffer the file
  points at;
- bounds its work: opcodes, memo entries, stack, container sizes, bytes of strings/arrays, nesting
  depth of the result, dict keys restricted to types whose hashes cannot be made to collide.

Tensors are rebuilt after the pickle is done, when every view of every storage is known: each view's
offset, sizes and strides are checked non-negative and in bounds; each storage member is read only up
to the extent its views need, straight into its final array (a tensor covering its whole storage is
that array, no copy), after the archive's declared sizes were checked against `ReadLimits` and
against the bytes the file really holds. Every failure is a `CheckpointError` naming the file.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import os
import pickletools
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from pthnet_jax.convert.errors import (CheckpointError, CheckpointLimitError, CheckpointReadError,
                                       UnsafeCheckpointError, show)

__all__ = ["CheckpointError", "CheckpointLimitError", "CheckpointReadError", "DEFAULT_LIMITS",
           "Placeholder", "ReadLimits", "UnsafeCheckpointError", "read_torch_file", "to_plain"]


@dataclasses.dataclass(frozen=True)
class ReadLimits:
    """Upper bounds on what reading one file may cost. The defaults admit checkpoints of many GB
    (the 2 GB VideoMAE V2 ViT-g file reads with room to spare) while a crafted file of a few KB can
    make the reader do only a few MB of work. Raise one with `dataclasses.replace(DEFAULT_LIMITS, ...)`.
    """

    max_file_bytes: int = 256 << 30     # the archive itself
    max_members: int = 200_000          # zip entries
    max_pickle_bytes: int = 256 << 20   # the data.pkl member
    max_opcodes: int = 4_000_000        # ~1 us each: a few seconds at most
    max_memo: int = 2_000_000
    max_stack: int = 2_000_000          # objects on the stack plus open marks
    max_items: int = 10_000_000         # elements stored in containers, all together
    max_container: int = 2_000_000      # elements of one container
    max_depth: int = 64                 # nesting of containers in the result
    max_object_bytes: int = 512 << 20   # strings/bytes/arrays the pickle itself builds, all together
    max_int_bits: int = 256             # integers the pickle holds
    max_tensors: int = 1_000_000
    max_ndim: int = 32
    max_storage_bytes: int = 128 << 30  # tensor bytes read from storage members, all together
    copy_slack_bytes: int = 64 << 20    # tensor copies allowed beyond the storage bytes read
    max_plain_nodes: int = 200_000      # values in the metadata made plain (to_plain)


DEFAULT_LIMITS = ReadLimits()
# Any size, stride, offset, element count or product of non-zero sizes beyond this is nonsense (2**48
# elements is 1 PiB of bytes); the bound keeps every byte count numpy computes far from int64 overflow.
_DIM_LIMIT = 1 << 48


class Placeholder:
    """Stand-in for an object of a class the reader does not trust (e.g. `__main__.RecorderMeter`)."""

    __slots__ = ("class_path", "args", "state")

    def __init__(self, class_path: str, args: tuple = (), state: Any = None):
        self.class_path = class_path
        self.args = args
        self.state = state

    def __repr__(self) -> str:
        return f"Placeholder({self.class_path})"

    def summary(self, limits: ReadLimits = DEFAULT_LIMITS) -> dict[str, Any]:
        """The values it held, as JSON-friendly metadata."""
        return to_plain(self, limits=limits)


class _Budget:
    def __init__(self, limit: int):
        self.left = limit


def to_plain(value: Any, max_items: int = 10_000, limits: ReadLimits = DEFAULT_LIMITS,
             _budget: _Budget | None = None, _depth: int = 0) -> Any:
    """A read value as JSON-friendly data (small numeric arrays -> lists, larger ones -> a summary).

    Bounded: counts every value it writes out, shared objects once per appearance, so a small DAG of
    shared containers cannot expand into an exponential tree ("billion laughs"); past
    `limits.max_plain_nodes` values, or deeper than `limits.max_depth`, it raises `CheckpointLimitError`.
    """
    budget = _budget if _budget is not None else _Budget(limits.max_plain_nodes)
    budget.left -= 1
    if budget.left < 0 or _depth > limits.max_depth:
        raise CheckpointLimitError(None, "metadata too large, too repetitive or too deeply nested to make "
                                   f"plain (limits: {limits.max_plain_nodes} values, depth "
                                   f"{limits.max_depth})")
    recurse = lambda v: to_plain(v, max_items, limits, budget, _depth + 1)  # noqa: E731
    if isinstance(value, (dict, list, tuple, set, frozenset)) and len(value) > budget.left:
        raise CheckpointLimitError(None, "metadata too large or too repetitive to make plain "
                                   f"(limit: {limits.max_plain_nodes} values)")
    if isinstance(value, np.ndarray):
        if value.size <= max_items and value.dtype.kind in "biuf":
            budget.left -= value.size
            if budget.left < 0:
                raise CheckpointLimitError(None, "metadata too large or too repetitive to make plain "
                                           f"(limit: {limits.max_plain_nodes} values)")
            if value.dtype.kind == "f":
                return value.astype(np.float64).tolist()
            return value.astype(np.int64).tolist()
        return {"array_shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        item = value.item()
        return item if isinstance(item, (bool, int, float)) else str(value)
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): recurse(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [recurse(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [recurse(v) for v in sorted(value, key=repr)]
    if isinstance(value, Placeholder):
        return {"class": value.class_path, "state": recurse(value.state)}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": len(value)}
    if isinstance(value, complex):
        return [value.real, value.imag]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(type(value).__name__)


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


# --- the stack machine ----------------------------------------------------------------------------

class _Machine:
    """Runs a pickle's opcodes (from `pickletools.genops`) building only inert, checked values."""

    def __init__(self, data: bytes, limits: ReadLimits):
        self.data, self.limits = data, limits
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.items = 0
        self.object_bytes = 0
        self.storages: dict[str, _StorageRef] = {}
        self.tensors = 0

    # helpers
    def _fail(self, message: str, unsafe: bool = False) -> None:
        raise (UnsafeCheckpointError if unsafe else CheckpointReadError)(None, message)

    def _limit(self, what: str, limit: int) -> None:
        raise CheckpointLimitError(None, f"the pickle exceeds the reader's limit on {what} ({limit})")

    def _pop(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            self._fail("corrupt pickle: stack underflow")
        return self.stack.pop()

    def _top(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            self._fail("corrupt pickle: stack underflow")
        return self.stack[-1]

    def _pop_mark(self) -> list[Any]:
        if not self.marks:
            self._fail("corrupt pickle: no MARK on the stack")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def _push(self, value: Any) -> None:
        if len(self.stack) + len(self.marks) >= self.limits.max_stack:
            self._limit("stack size", self.limits.max_stack)
        self.stack.append(value)

    def _count(self, n: int, container_len: int = 0) -> None:
        self.items += n
        if self.items > self.limits.max_items:
            self._limit("container elements", self.limits.max_items)
        if container_len + n > self.limits.max_container:
            self._limit("elements of one container", self.limits.max_container)

    def _bytes(self, n: int) -> None:
        self.object_bytes += n
        if self.object_bytes > self.limits.max_object_bytes:
            self._limit("bytes of strings and arrays in the pickle", self.limits.max_object_bytes)

    def _key(self, key: Any) -> Any:
        """Dict keys and set items: types whose hashes a file cannot make collide."""
        if isinstance(key, (str, bytes)) or key is None or isinstance(key, bool):
            return key
        if type(key) is int and -_KEY_INT <= key < _KEY_INT:
            return key
        if type(key) is float and key.is_integer() and -_KEY_INT <= key < _KEY_INT:
            return key
        self._fail(f"unsupported dict key or set item {show(key)} (only strings, bytes and small "
                   "integers are accepted)")

    def _int(self, value: int) -> int:
        if value.bit_length() > self.limits.max_int_bits:
            self._limit("integer size in bits", self.limits.max_int_bits)
        return value

    def _memo_put(self, index: Any) -> None:
        if type(index) is not int or index < 0:
            self._fail(f"corrupt pickle: memo index {show(index)}")
        if index not in self.memo and len(self.memo) >= self.limits.max_memo:
            self._limit("memo entries", self.limits.max_memo)
        self.memo[index] = self._top()

    def _memo_get(self, index: Any) -> None:
        if type(index) is not int or index not in self.memo:
            self._fail(f"corrupt pickle: memo index {show(index)} was never stored")
        self._push(self.memo[index])

    def _set_items(self, target: Any, pairs: list[Any]) -> None:
        if not isinstance(target, dict):
            self._fail(f"corrupt pickle: SETITEM(S) on a {type(target).__name__}, not a dict")
        if len(pairs) % 2:
            self._fail("corrupt pickle: odd number of items for SETITEMS")
        self._count(len(pairs) // 2, len(target))
        for i in range(0, len(pairs), 2):
            target[self._key(pairs[i])] = pairs[i + 1]

    # globals
    def _global(self, module: Any, name: Any) -> _Global:
        if not isinstance(module, str) or not isinstance(name, str):
            self._fail("corrupt pickle: global name is not a string")
        module = _MODULE_ALIASES.get(module, module)
        path = f"{module}.{name}"
        if module == "torch" and name in _STORAGE_DTYPES:
            return _Global("storage_type", path, _STORAGE_DTYPES[name])
        kind = _ALLOWED.get((module, name))
        if kind is not None:
            return _Global(kind, path)
        if module in _PLACEHOLDER_MODULES and _NAME.match(name):
            return _Global("placeholder", path)
        raise UnsafeCheckpointError(
            None, f"the pickle references the global '{show(path, 200)}', which is not on the allowlist "
            "of tensor/container types; refusing to load it (nothing was executed)")

    def _instantiate(self, cls: Any, args: Any, how: str) -> Placeholder:
        if not isinstance(cls, _Global) or cls.kind != "placeholder":
            self._fail(f"{how} of {show(cls)} is not allowed (only classes of __main__ become inert "
                       "placeholders)", unsafe=True)
        args = tuple(args) if isinstance(args, (tuple, list)) else ()
        return Placeholder(cls.path, args)

    # REDUCE: calls of allowlisted globals, each a checked rebuild written here
    def _call(self, func: Any, args: Any) -> Any:
        if not isinstance(func, _Global):
            self._fail(f"REDUCE on {show(type(func).__name__)}, which is not an allowed callable",
                       unsafe=True)
        if not isinstance(args, tuple):
            self._fail(f"REDUCE of {func.path} with arguments that are not a tuple")
        kind = func.kind
        if kind in ("tensor_v2", "tensor"):
            return self._tensor(func, args)
        if kind == "parameter":
            if not args or not isinstance(args[0], _TensorRef):
                self._fail(f"{func.path} of something that is not a tensor")
            return args[0]
        if kind == "from_type_v2":
            if len(args) != 4 or not isinstance(args[0], _Global) or args[0].kind not in ("tensor_v2",
                                                                                          "tensor"):
                self._fail(f"{func.path} with unexpected arguments", unsafe=True)
            if not (isinstance(args[1], _Global) and args[1].kind == "tensor_type"):
                self._fail(f"{func.path} of the type {show(args[1])} is not allowed", unsafe=True)
            if not isinstance(args[2], tuple):
                self._fail(f"{func.path} with arguments that are not a tuple")
            return self._tensor(args[0], args[2])
        if kind == "ordered_dict":
            result: collections.OrderedDict = collections.OrderedDict()
            if args:
                if len(args) != 1 or not isinstance(args[0], (list, tuple)):
                    self._fail("OrderedDict with unexpected arguments")
                self._count(len(args[0]))
                for pair in args[0]:
                    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                        self._fail("OrderedDict item that is not a pair")
                    result[self._key(pair[0])] = pair[1]
            return result
        if kind == "codecs_encode":
            if not (1 <= len(args) <= 2) or not isinstance(args[0], str):
                self._fail("_codecs.encode with unexpected arguments")
            encoding = args[1] if len(args) == 2 else "utf-8"
            if encoding not in ("latin1", "latin-1", "iso-8859-1"):
                self._fail(f"_codecs.encode with encoding {show(encoding)} is not allowed", unsafe=True)
            self._bytes(len(args[0]))
            try:
                return args[0].encode("latin-1")
            except UnicodeEncodeError as err:
                self._fail(f"_codecs.encode of text that is not latin-1 ({err.reason})")
        if kind == "bytes":
            if args:
                self._fail("builtins.bytes with arguments is not allowed", unsafe=True)
            return b""
        if kind == "reconstruct":
            if len(args) != 3 or not (isinstance(args[0], _Global) and args[0].kind == "ndarray"):
                self._fail(f"{func.path} of {show(args[0] if args else None)} is not allowed", unsafe=True)
            return _ArrayHolder()
        if kind == "dtype":
            if not args:
                self._fail("numpy.dtype without arguments")
            return _DtypeHolder(_checked_dtype(args[0], "numpy.dtype"))
        if kind == "scalar":
            if len(args) != 2 or not isinstance(args[1], bytes):
                self._fail("numpy scalar with unexpected arguments", unsafe=True)
            dtype = _checked_dtype(args[0], "numpy scalar")
            if len(args[1]) != dtype.itemsize:
                self._fail(f"numpy scalar of {dtype} with {len(args[1])} bytes")
            return np.frombuffer(args[1], dtype=dtype, count=1).astype(dtype.newbyteorder("="))[0]
        if kind in ("set", "frozenset"):
            items: Any = args[0] if args else ()
            if len(args) > 1 or not isinstance(items, (list, tuple)):
                self._fail(f"{func.path} with unexpected arguments")
            self._count(len(items))
            built = {self._key(item) for item in items}
            return built if kind == "set" else frozenset(built)
        if kind == "complex":
            if not (1 <= len(args) <= 2) or not all(type(a) in (int, float) for a in args):
                self._fail("complex with unexpected arguments")
            try:
                return complex(*args)
            except OverflowError:
                self._fail("complex of an integer too large")
        if kind == "reconstructor":  # protocol 0/1 objects: copyreg._reconstructor(cls, object, None)
            if len(args) != 3 or not (isinstance(args[1], _Global) and args[1].kind == "object") \
                    or args[2] is not None:
                self._fail("copyreg._reconstructor with unexpected arguments", unsafe=True)
            return self._instantiate(args[0], (), "copyreg._reconstructor")
        if kind == "placeholder":
            return self._instantiate(func, args, "a call")
        self._fail(f"calling {func.path} is not allowed", unsafe=True)

    def _tensor(self, func: _Global, args: tuple) -> _TensorRef:
        wanted = (4,) if func.kind == "tensor" else (6, 7)
        if len(args) not in wanted:
            self._fail(f"{func.path} with {len(args)} arguments")
        storage, offset, size, stride = args[:4]
        if not isinstance(storage, _StorageRef):
            self._fail(f"{func.path} of something that is not a storage")
        if type(offset) is not int or not isinstance(size, (tuple, list)) \
                or not isinstance(stride, (tuple, list)):
            self._fail(f"{func.path}: storage offset, sizes and strides must be integers")
        size, stride = tuple(size), tuple(stride)
        if len(size) != len(stride) or len(size) > self.limits.max_ndim:
            self._fail(f"tensor with {len(size)} sizes and {len(stride)} strides (at most "
                       f"{self.limits.max_ndim} dimensions, as many strides as sizes)")
        if not all(type(v) is int and 0 <= v < _DIM_LIMIT for v in (offset, *size, *stride)):
            self._fail(f"tensor view (offset {show(offset)}, sizes {show(size)}, strides {show(stride)}): "
                       "offset, sizes and strides must be non-negative integers")
        if math.prod(max(n, 1) for n in size) >= _DIM_LIMIT:
            self._fail(f"tensor view with sizes {show(size)}: too many elements")
        stride = tuple(s if n > 1 else 0 for n, s in zip(size, stride))  # unused strides: no effect
        numel = math.prod(size)
        extent = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride)) if numel else 0
        if extent > storage.numel:
            self._fail(f"tensor view (offset {offset}, sizes {size}, strides {stride}) reads past the end "
                       f"of its storage '{show(storage.key)}' of {storage.numel} elements")
        self.tensors += 1
        if self.tensors > self.limits.max_tensors:
            self._limit("tensors", self.limits.max_tensors)
        return _TensorRef(storage, offset, size, stride, numel, extent)

    def _persistent(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            self._fail(f"unexpected persistent id {show(pid)}")
        _, stype, key, location, numel = pid
        if not (isinstance(stype, _Global) and stype.kind == "storage_type"):
            self._fail(f"storage of unknown type {show(stype)}", unsafe=True)
        if not isinstance(key, str) or not _STORAGE_KEY.match(key):
            self._fail(f"storage with an invalid key {show(key)}")
        if not isinstance(location, str) or len(location) > 64:
            self._fail(f"storage with an invalid location {show(location)}")
        if type(numel) is not int or not 0 <= numel < _DIM_LIMIT:
            self._fail(f"storage '{key}' with an invalid element count {show(numel)}")
        known = self.storages.get(key)
        if known is not None:
            if known.dtype != stype.dtype or known.numel != numel:
                self._fail(f"storage '{key}' is referenced with different types or sizes")
            return known
        if len(self.storages) >= self.limits.max_tensors:
            self._limit("storages", self.limits.max_tensors)
        ref = _StorageRef(key, stype.dtype, numel, location)
        self.storages[key] = ref
        return ref

    def _build(self, target: Any, state: Any) -> None:
        if isinstance(target, Placeholder):
            target.state = state
        elif isinstance(target, _ArrayHolder):
            if target.array is not None:
                self._fail("numpy array built twice")
            target.array = self._array(state)
        elif isinstance(target, _DtypeHolder):
            if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
                self._fail(f"numpy dtype state {show(state)} is not allowed", unsafe=True)
            if state[1] in "<>" and target.dtype.itemsize > 1:
                target.dtype = target.dtype.newbyteorder(state[1])
        elif isinstance(target, dict) and (state is None or isinstance(state, dict)):
            pass  # attributes of a dict subclass (a state dict's `_metadata` versions): not kept
        else:
            self._fail(f"BUILD on a {type(target).__name__} is not allowed (only numpy arrays, dtypes and "
                       "placeholders take a state)", unsafe=True)

    def _array(self, state: Any) -> np.ndarray:
        if not isinstance(state, tuple) or len(state) != 5:
            self._fail("numpy array state is not (version, shape, dtype, fortran, data)")
        _, shape, dtype, fortran, raw = state
        dtype = _checked_dtype(dtype, "numpy array")
        if not isinstance(shape, (tuple, list)) or len(shape) > self.limits.max_ndim or \
                not all(type(n) is int and 0 <= n < _DIM_LIMIT for n in shape):
            self._fail(f"numpy array with shape {show(shape)}")
        if math.prod(max(n, 1) for n in shape) >= _DIM_LIMIT:
            self._fail(f"numpy array with shape {show(shape)}: too many elements")
        if not isinstance(raw, bytes):
            self._fail("numpy array whose data is not bytes (object arrays are not allowed)", unsafe=True)
        count = math.prod(shape)
        if count * dtype.itemsize != len(raw):
            self._fail(f"numpy array of shape {show(shape)} and dtype {dtype} with {len(raw)} bytes of data")
        self._bytes(len(raw))
        flat = np.frombuffer(raw, dtype=dtype, count=count)  # a view of a bytes object, length checked
        array = flat.reshape(tuple(shape), order="F" if fortran else "C")
        return np.array(array, dtype=dtype.newbyteorder("="), order="C")  # own, native-order memory

    # the loop
    def run(self) -> Any:
        limits = self.limits
        table = self._table()
        count = 0
        ops = pickletools.genops(self.data)
        while True:
            try:
                opcode, arg, _pos = next(ops)
            except StopIteration:
                self._fail("corrupt pickle: it ends without STOP")
            except (ValueError, OverflowError, UnicodeDecodeError, EOFError, IndexError,
                    TypeError) as err:
                self._fail(f"corrupt pickle: {show(str(err), 200)}")
            count += 1
            if count > limits.max_opcodes:
                self._limit("opcodes", limits.max_opcodes)
            name = opcode.name
            if name == "STOP":
                return self._pop()
            handler = table.get(name)
            if handler is None:
                self._fail(f"unsupported pickle opcode {name}", unsafe=True)
            handler(arg)

    def _table(self) -> dict[str, Any]:
        """Opcode name -> handler(arg); a dict lookup per opcode keeps the loop fast."""
        push = self._push

        def constant(value):
            return lambda arg: push(value)

        def integer(arg):
            push(self._int(arg) if type(arg) is int else arg)

        def text(arg):
            self._bytes(len(arg))
            push(arg)

        def data(arg):
            self._bytes(len(arg))
            push(bytes(arg))

        def refuse(message):
            def handler(arg):
                self._fail(message, unsafe=True)
            return handler

        table: dict[str, Any] = {
            "NONE": constant(None), "NEWTRUE": constant(True), "NEWFALSE": constant(False),
            "EMPTY_TUPLE": constant(()),
            "EMPTY_LIST": lambda arg: push([]), "EMPTY_DICT": lambda arg: push({}),
            "EMPTY_SET": lambda arg: push(set()),
            "FLOAT": lambda arg: push(float(arg)), "BINFLOAT": lambda arg: push(float(arg)),
            "MARK": self._mark, "TUPLE": self._from_mark, "LIST": self._from_mark, "DICT": self._from_mark,
            "FROZENSET": self._from_mark,
            "TUPLE1": lambda arg: self._small_tuple(1), "TUPLE2": lambda arg: self._small_tuple(2),
            "TUPLE3": lambda arg: self._small_tuple(3),
            "APPEND": self._append, "APPENDS": self._appends, "SETITEM": self._setitem,
            "SETITEMS": lambda arg: self._set_items_at_top(self._pop_mark()),
            "ADDITEMS": self._additems, "POP": self._pop_op, "POP_MARK": lambda arg: self._pop_mark(),
            "DUP": lambda arg: push(self._top()),
            "PUT": self._memo_put, "BINPUT": self._memo_put, "LONG_BINPUT": self._memo_put,
            "MEMOIZE": lambda arg: self._memo_put(len(self.memo)),
            "GET": self._memo_get, "BINGET": self._memo_get, "LONG_BINGET": self._memo_get,
            "GLOBAL": self._global_op, "STACK_GLOBAL": self._stack_global,
            "REDUCE": self._reduce, "BUILD": self._build_op, "NEWOBJ": self._newobj,
            "NEWOBJ_EX": self._newobj_ex, "OBJ": self._obj, "INST": self._inst,
            "BINPERSID": lambda arg: push(self._persistent(self._pop())),
            "PROTO": self._proto, "FRAME": lambda arg: None,
            "PERSID": refuse("text persistent ids (PERSID) are not used by torch.save"),
            "EXT1": refuse(_EXT_MESSAGE), "EXT2": refuse(_EXT_MESSAGE), "EXT4": refuse(_EXT_MESSAGE),
            "NEXT_BUFFER": refuse("out-of-band buffers are not allowed"),
            "READONLY_BUFFER": refuse("out-of-band buffers are not allowed"),
        }
        for name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"):
            table[name] = integer
        for name in ("STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
                     "BINUNICODE8"):
            table[name] = text
        for name in ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"):
            table[name] = data
        # TUPLE/LIST/DICT/FROZENSET share a handler that needs the opcode's name
        for name in ("TUPLE", "LIST", "DICT", "FROZENSET"):
            table[name] = (lambda n: lambda arg: self._from_mark(n))(name)
        return table

    def _mark(self, arg: Any) -> None:
        if len(self.stack) + len(self.marks) >= self.limits.max_stack:
            self._limit("stack size", self.limits.max_stack)
        self.marks.append(len(self.stack))

    def _from_mark(self, name: str) -> None:
        items = self._pop_mark()
        self._count(len(items))
        if name == "TUPLE":
            self._push(tuple(items))
        elif name == "LIST":
            self._push(items)
        elif name == "FROZENSET":
            self._push(frozenset(self._key(i) for i in items))
        else:
            built: dict = {}
            self._set_items(built, items)
            self._push(built)

    def _small_tuple(self, n: int) -> None:
        items = [self._pop() for _ in range(n)][::-1]
        self._count(n)
        self._push(tuple(items))

    def _append(self, arg: Any) -> None:
        stack, marks = self.stack, self.marks
        if len(stack) < 2 or (marks and len(stack) - 1 <= marks[-1]):
            self._fail("corrupt pickle: stack underflow")
        target = stack[-2]
        if type(target) is not list:
            self._fail(f"corrupt pickle: APPEND to a {type(target).__name__}")
        self.items += 1
        if self.items > self.limits.max_items or len(target) >= self.limits.max_container:
            self._count(1, len(target))
        target.append(stack.pop())

    def _appends(self, arg: Any) -> None:
        items = self._pop_mark()
        target = self._top()
        if not isinstance(target, list):
            self._fail(f"corrupt pickle: APPENDS to a {type(target).__name__}")
        self._count(len(items), len(target))
        target.extend(items)

    def _setitem(self, arg: Any) -> None:
        value = self._pop()
        key = self._pop()
        self._set_items(self._top(), [key, value])

    def _set_items_at_top(self, items: list[Any]) -> None:
        self._set_items(self._top(), items)

    def _additems(self, arg: Any) -> None:
        items = self._pop_mark()
        target = self._top()
        if not isinstance(target, set):
            self._fail(f"corrupt pickle: ADDITEMS to a {type(target).__name__}")
        self._count(len(items), len(target))
        target.update(self._key(i) for i in items)

    def _pop_op(self, arg: Any) -> None:
        if self.stack and not (self.marks and len(self.stack) <= self.marks[-1]):
            self.stack.pop()
        else:
            self._pop_mark()

    def _global_op(self, arg: Any) -> None:
        module, _, attr = arg.partition(" ")
        self._push(self._global(module, attr))

    def _stack_global(self, arg: Any) -> None:
        attr = self._pop()
        module = self._pop()
        self._push(self._global(module, attr))

    def _reduce(self, arg: Any) -> None:
        args = self._pop()
        func = self._pop()
        self._push(self._call(func, args))

    def _build_op(self, arg: Any) -> None:
        state = self._pop()
        self._build(self._top(), state)

    def _newobj(self, arg: Any) -> None:
        args = self._pop()
        cls = self._pop()
        self._push(self._instantiate(cls, args, "NEWOBJ"))

    def _newobj_ex(self, arg: Any) -> None:
        self._pop()  # kwargs
        args = self._pop()
        cls = self._pop()
        self._push(self._instantiate(cls, args, "NEWOBJ_EX"))

    def _obj(self, arg: Any) -> None:
        items = self._pop_mark()
        if not items:
            self._fail("corrupt pickle: OBJ without a class")
        self._push(self._instantiate(items[0], items[1:], "OBJ"))

    def _inst(self, arg: Any) -> None:
        module, _, attr = arg.partition(" ")
        items = self._pop_mark()
        self._push(self._instantiate(self._global(module, attr), items, "INST"))

    def _proto(self, arg: Any) -> None:
        if not (type(arg) is int and 0 <= arg <= 5):
            self._fail(f"unsupported pickle protocol {show(arg)}")


_EXT_MESSAGE = ("the pickle uses the extension registry (EXT opcodes), which could name any global; "
                "refusing it")


# --- after the pickle: check the object graph, read the storages, rebuild -------------------------

def _collect(root: Any, limits: ReadLimits) -> list[_TensorRef]:
    """Every tensor view in the result; refuses cycles, too deep nesting, unfinished arrays."""
    tensors: list[_TensorRef] = []
    done: set[int] = set()
    active: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if depth > limits.max_depth:
            raise CheckpointLimitError(None, f"the data is nested more than {limits.max_depth} levels deep")
        if isinstance(obj, (dict, list, tuple, set, frozenset, Placeholder)):
            ident = id(obj)
            if ident in done:
                return
            if ident in active:
                raise CheckpointReadError(None, "the data contains a reference cycle")
            active.add(ident)
            if isinstance(obj, dict):
                children: Any = obj.values()
            elif isinstance(obj, Placeholder):
                children = (obj.args, obj.state)
            else:
                children = obj
            for child in children:
                visit(child, depth + 1)
            active.discard(ident)
            done.add(ident)
        elif isinstance(obj, _TensorRef):
            if id(obj) not in done:
                done.add(id(obj))
                tensors.append(obj)
        elif isinstance(obj, _StorageRef):
            raise CheckpointReadError(None, "a bare storage outside a tensor is not supported")
        elif isinstance(obj, _ArrayHolder) and obj.array is None:
            raise CheckpointReadError(None, "a numpy array without its data (no BUILD): refusing to "
                                      "hand out uninitialised memory")

    visit(root, 0)
    return tensors


def _rebuild(root: Any, arrays: dict[int, np.ndarray]) -> Any:
    """The result with tensor views replaced by arrays; shared objects stay shared (by id)."""
    made: dict[int, Any] = {}

    def convert(obj: Any) -> Any:
        if isinstance(obj, _TensorRef):
            return arrays[id(obj)]
        if isinstance(obj, _ArrayHolder):
            return obj.array
        if isinstance(obj, _DtypeHolder):
            return obj.dtype
        if isinstance(obj, _Global):
            return f"<global {obj.path}>"
        if not isinstance(obj, (dict, list, tuple, Placeholder)):
            return obj
        ident = id(obj)
        if ident in made:
            return made[ident]
        if isinstance(obj, dict):
            new: Any = type(obj)()
            made[ident] = new
            for key, value in obj.items():
                new[key] = convert(value)
        elif isinstance(obj, list):
            new = []
            made[ident] = new
            new.extend(convert(v) for v in obj)
        elif isinstance(obj, tuple):
            new = tuple(convert(v) for v in obj)
            made[ident] = new
        else:
            new = Placeholder(obj.class_path)
            made[ident] = new
            new.args = tuple(convert(v) for v in obj.args)
            new.state = convert(obj.state)
        return new

    return convert(root)


def _contiguous_strides(size: tuple) -> tuple:
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _is_contiguous(size: tuple, stride: tuple) -> bool:
    return all(n == 1 or s == c for n, s, c in zip(size, stride, _contiguous_strides(size)))


_CHUNK = 4 << 20


class _Archive:
    """The zip archive, its declared sizes checked before anything is read."""

    def __init__(self, path: Path, handle: Any, limits: ReadLimits):
        self.path, self.limits = path, limits
        self.size = os.fstat(handle.fileno()).st_size
        if self.size > limits.max_file_bytes:
            raise CheckpointLimitError(None, f"the file has {self.size} bytes, more than the limit "
                                       f"{limits.max_file_bytes}")
        self.zip = zipfile.ZipFile(handle)
        infos = self.zip.infolist()
        if len(infos) > limits.max_members:
            raise CheckpointLimitError(None, f"the archive has {len(infos)} members, more than the limit "
                                       f"{limits.max_members}")
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if info.filename in self.members:
                raise CheckpointReadError(None, f"the archive holds '{show(info.filename)}' twice")
            self.members[info.filename] = info
        pickles = [n for n in self.members if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointReadError(None, "expected exactly one '<top>/data.pkl' in the archive, found "
                                      f"{len(pickles) or 'none'}")
        self.top = pickles[0][: -len("/data.pkl")]

    def info(self, name: str, what: str) -> zipfile.ZipInfo:
        info = self.members.get(name)
        if info is None:
            raise CheckpointReadError(None, f"{what} '{show(name)}' is missing from the archive "
                                      "(truncated or corrupt file?)")
        if info.flag_bits & 0x1:
            raise CheckpointReadError(None, f"'{show(name)}' is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointReadError(None, f"'{show(name)}' uses compression method {info.compress_type}; "
                                      "only stored and deflated members are read")
        if info.header_offset < 0 or info.header_offset + info.compress_size > self.size:
            raise CheckpointReadError(None, f"'{show(name)}' claims {info.compress_size} bytes at offset "
                                      f"{info.header_offset}, past the end of the file ({self.size} bytes)")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise CheckpointReadError(None, f"stored member '{show(name)}' has compressed size "
                                      f"{info.compress_size} != size {info.file_size}")
        if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > 1100 * info.compress_size + 1024:
            raise CheckpointReadError(None, f"deflated member '{show(name)}' claims {info.file_size} bytes "
                                      f"from {info.compress_size}, more than deflate can expand to")
        return info

    def read_small(self, name: str, what: str, limit: int) -> bytes:
        info = self.info(name, what)
        if info.file_size > limit:
            raise CheckpointLimitError(None, f"{what} '{show(name)}' has {info.file_size} bytes, more than "
                                       f"the limit {limit}")
        with _zip_errors(f"'{show(name)}'"), self.zip.open(info) as member:
            data = member.read(limit + 1)
        if len(data) != info.file_size:
            raise CheckpointReadError(None, f"{what} '{show(name)}' holds {len(data)} bytes, its header "
                                      f"says {info.file_size}")
        return data

    def read_into(self, info: zipfile.ZipInfo, out: np.ndarray) -> None:
        """Fill `out` with the first out.nbytes bytes of a member, reading nothing more."""
        view = memoryview(out.reshape(-1).view(np.uint8))
        need, done = view.nbytes, 0
        with _zip_errors(f"'{show(info.filename)}'"), self.zip.open(info) as member:
            while done < need:
                chunk = member.read(min(_CHUNK, need - done))
                if not chunk:
                    raise CheckpointReadError(None, f"storage '{show(info.filename)}' ends after {done} "
                                              f"bytes, {need} needed (truncated file?)")
                view[done:done + len(chunk)] = chunk
                done += len(chunk)
            if need == info.file_size:
                member.read(1)  # at the end: lets zipfile compare the CRC of the whole member


def _read_tensors(archive: _Archive, tensors: list[_TensorRef], byteorder: str,
                  limits: ReadLimits) -> dict[int, np.ndarray]:
    # Views by storage; identical views share one array.
    by_storage: dict[str, list[_TensorRef]] = {}
    for ref in tensors:
        by_storage.setdefault(ref.storage.key, []).append(ref)
    plans = []
    total = 0
    for key, refs in by_storage.items():
        storage = refs[0].storage
        need = max(ref.extent for ref in refs)
        name = f"{archive.top}/data/{key}"
        info = archive.info(name, "storage")
        need_bytes = need * storage.dtype.itemsize
        if info.file_size < need_bytes:
            raise CheckpointReadError(None, f"storage '{show(name)}' has {info.file_size} bytes, its tensors "
                                      f"need {need_bytes}")
        total += need_bytes
        plans.append((storage, refs, need, info))
    if total > limits.max_storage_bytes:
        raise CheckpointLimitError(None, f"the tensors need {total} bytes of storage, more than the limit "
                                   f"{limits.max_storage_bytes}")
    copy_budget = total + limits.copy_slack_bytes
    arrays: dict[int, np.ndarray] = {}
    for storage, refs, need, info in plans:
        raw_dtype = np.dtype(np.uint8) if storage.dtype == np.bool_ else storage.dtype
        data = np.empty(need, dtype=raw_dtype)
        archive.read_into(info, data)
        if byteorder == "big" and raw_dtype.itemsize > 1:
            data.byteswap(inplace=True)
        if storage.dtype == np.bool_:
            data = data != 0
        views: dict[tuple, np.ndarray] = {}
        distinct = {(r.offset, r.size, r.stride) for r in refs}
        for ref in refs:
            signature = (ref.offset, ref.size, ref.stride)
            if signature not in views:
                if len(distinct) == 1 and ref.offset == 0 and ref.numel == need and \
                        _is_contiguous(ref.size, ref.stride):
                    views[signature] = data.reshape(ref.size)  # the storage array itself, no copy
                else:
                    copy_budget -= ref.numel * data.dtype.itemsize
                    if copy_budget < 0:
                        raise CheckpointLimitError(
                            None, "tensor views of shared storages add up to more bytes than the storages "
                            f"read plus {limits.copy_slack_bytes} (stride-0 or overlapping views?)")
                    if _is_contiguous(ref.size, ref.stride):
                        views[signature] = data[ref.offset:ref.offset + ref.numel].reshape(ref.size).copy()
                    elif ref.numel == 0:
                        views[signature] = np.zeros(ref.size, dtype=data.dtype)
                    else:  # offset + sum((n-1)*s) < need was checked: every element is inside `data`
                        itemsize = data.dtype.itemsize
                        view = np.lib.stride_tricks.as_strided(
                            data[ref.offset:], shape=ref.size, strides=tuple(s * itemsize for s in ref.stride),
                            writeable=False)
                        views[signature] = np.array(view, order="C")
            arrays[id(ref)] = views[signature]
    return arrays


def _as_read_error(err: CheckpointError, source: str) -> CheckpointError:
    if err.path is None:
        return type(err)(source, err.reason, err.unexpected)
    return err


# What zipfile (and zlib under it) raise on a damaged archive; caught only around zipfile calls.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError, ValueError,
               OverflowError, NotImplementedError, RuntimeError, KeyError, IndexError, TypeError,
               UnicodeDecodeError, struct.error)


@contextlib.contextmanager
def _zip_errors(what: str):
    try:
        yield
    except CheckpointError:
        raise
    except (RecursionError, MemoryError):
        raise
    except _ZIP_ERRORS as err:
        raise CheckpointReadError(None, f"corrupt or truncated zip archive while reading {what} "
                                  f"({type(err).__name__}: {show(str(err), 200)})") from err


def read_torch_file(path: str | os.PathLike, limits: ReadLimits = DEFAULT_LIMITS) -> Any:
    """Load a `torch.save` zip file as plain Python/numpy data. Never imports torch, never runs code
    from the file; any problem is a `CheckpointError` whose message starts with the path."""
    path = Path(path)
    source = str(path)
    try:
        return _read(path, limits)
    except CheckpointError as err:
        raise _as_read_error(err, source) from None
    except OSError as err:  # opening or reading the file itself (permissions, I/O)
        raise CheckpointReadError(source, f"cannot read the file ({show(err.strerror or str(err), 200)})") from err
    except Exception as err:  # noqa: BLE001 - the promise is: only CheckpointError leaves the reader
        raise CheckpointReadError(source, f"unexpected {type(err).__name__} while reading "
                                  f"({show(str(err), 200)})", unexpected=True) from err


def _read(path: Path, limits: ReadLimits) -> Any:
    if not path.is_file():
        raise CheckpointReadError(None, "no such file")
    with open(path, "rb") as handle:
        head = handle.read(4)
        if head[:2] != b"PK":
            hint = (" It looks like the legacy (pre-1.6, non-zip) torch format: re-save it with a current "
                    "torch.save." if head[:1] == b"\x80" else " The file is truncated or not a torch.save file.")
            raise CheckpointReadError(None, f"not a zip archive.{hint}")
        handle.seek(0)
        with _zip_errors("its directory"):
            archive = _Archive(path, handle, limits)
        byteorder = "little"
        name = f"{archive.top}/byteorder"
        if name in archive.members:
            record = archive.read_small(name, "byte order record", 16)
            if record not in (b"little", b"big"):
                raise CheckpointReadError(None, f"byte order record {show(record)} is neither 'little' nor "
                                          "'big'")
            byteorder = record.decode()
        data = archive.read_small(f"{archive.top}/data.pkl", "pickle", limits.max_pickle_bytes)
        machine = _Machine(data, limits)
        root = machine.run()
        del data, machine
        tensors = _collect(root, limits)
        arrays = _read_tensors(archive, tensors, byteorder, limits)
        return _rebuild(root, arrays)
