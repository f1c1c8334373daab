"""Write the `torch.save` zip layout without PyTorch.

What torch 2.13 writes, and so what this writes: a zip archive of stored (uncompressed) members under
one top folder, `data.pkl` (a protocol 2 pickle of the object, each tensor as
`torch._utils._rebuild_tensor_v2(<persistent id ('storage', torch.FloatStorage, key, 'cpu', numel)>,
offset, size, stride, requires_grad, OrderedDict())`), `.format_version`, `.storage_alignment`,
`byteorder`, one `data/<key>` member per storage holding its raw little-endian bytes, and `version`.
Each member's data starts at a multiple of 64 bytes (a padding field in the local header, as torch's
writer does), so `torch.load(mmap=True)` works too. The result loads with
`torch.load(weights_only=True)`; the zip has fixed timestamps, so the same content gives the same
bytes.
"""
from __future__ import annotations

import collections
import os
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from pthnet_jax.fsutil import atomic_path

_ALIGNMENT = 64
_TOP = "archive"
_STORAGE_NAMES = {
    np.dtype(np.float64): "DoubleStorage", np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage", np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage",
    np.dtype(np.complex64): "ComplexFloatStorage", np.dtype(np.complex128): "ComplexDoubleStorage",
}


class _Pickler:
    """Emits protocol 2 opcodes for the few types a checkpoint holds; tensors become storage refs."""

    def __init__(self, location: str = "cpu"):
        self.location = location
        self.out: list[bytes] = [b"\x80\x02"]
        self.storages: list[np.ndarray] = []
        self._storage_of: dict[int, int] = {}

    def _global(self, module: str, name: str) -> None:
        self.out.append(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def _str(self, text: str) -> None:
        data = text.encode("utf-8")
        self.out.append(b"X" + struct.pack("<I", len(data)) + data)

    def _int(self, value: int) -> None:
        if 0 <= value < 256:
            self.out.append(b"K" + bytes([value]))
        elif 0 <= value < 65536:
            self.out.append(b"M" + struct.pack("<H", value))
        elif -(1 << 31) <= value < (1 << 31):
            self.out.append(b"J" + struct.pack("<i", value))
        else:
            data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            if len(data) > 255:
                raise ValueError(f"integer {value} too large to write")
            self.out.append(b"\x8a" + bytes([len(data)]) + data)

    def _tuple(self, items: Any) -> None:
        if not items:
            self.out.append(b")")
            return
        self.out.append(b"(")
        for item in items:
            self.save(item)
        self.out.append(b"t")

    def _tensor(self, array: np.ndarray) -> None:
        dtype = array.dtype.newbyteorder("=") if array.dtype.byteorder == ">" else array.dtype
        if dtype not in _STORAGE_NAMES:
            raise ValueError(f"cannot write a tensor of dtype {array.dtype}")
        key = self._storage_of.get(id(array))
        if key is None:
            data = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype)
            key = len(self.storages)
            self.storages.append(data)
            self._storage_of[id(array)] = key
        size = tuple(int(n) for n in array.shape)
        stride, step = [], 1
        for n in reversed(size):
            stride.append(step)
            step *= n
        self._global("torch._utils", "_rebuild_tensor_v2")
        self.out.append(b"(")  # the arguments
        self.out.append(b"(")  # the persistent id
        self._str("storage")
        self._global("torch", _STORAGE_NAMES[dtype])
        self._str(str(key))
        self._str(self.location)
        self._int(int(array.size))
        self.out.append(b"tQ")  # TUPLE, BINPERSID
        self._int(0)
        self._tuple(size)
        self._tuple(tuple(reversed(stride)))
        self.out.append(b"\x89")  # requires_grad False
        self._global("collections", "OrderedDict")
        self.out.append(b")R")  # backward hooks: OrderedDict()
        self.out.append(b"tR")

    def save(self, obj: Any) -> None:
        if obj is None:
            self.out.append(b"N")
        elif obj is True or obj is False or isinstance(obj, np.bool_):
            self.out.append(b"\x88" if bool(obj) else b"\x89")
        elif isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
            self._int(int(obj))
        elif isinstance(obj, (float, np.floating)):
            self.out.append(b"G" + struct.pack(">d", float(obj)))
        elif isinstance(obj, str):
            self._str(obj)
        elif isinstance(obj, np.ndarray):
            self._tensor(obj)
        elif isinstance(obj, dict):
            if isinstance(obj, collections.OrderedDict):
                self._global("collections", "OrderedDict")
                self.out.append(b")R")
            else:
                self.out.append(b"}")
            if obj:
                self.out.append(b"(")
                for key, value in obj.items():
                    self.save(key)
                    self.save(value)
                self.out.append(b"u")
        elif isinstance(obj, list):
            self.out.append(b"]")
            if obj:
                self.out.append(b"(")
                for item in obj:
                    self.save(item)
                self.out.append(b"e")
        elif isinstance(obj, tuple):
            self._tuple(obj)
        else:
            raise TypeError(f"cannot write a {type(obj).__name__} into a .pth file")

    def data(self) -> bytes:
        return b"".join(self.out) + b"."


def _write_member(archive: zipfile.ZipFile, name: str, data: Any) -> None:
    view = memoryview(data)
    info = zipfile.ZipInfo(f"{_TOP}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = view.nbytes
    zip64 = view.nbytes * 1.05 > zipfile.ZIP64_LIMIT
    header = 30 + len(info.filename.encode("utf-8")) + (20 if zip64 else 0)
    pad = -(archive.fp.tell() + header + 4) % _ALIGNMENT
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    with archive.open(info, "w", force_zip64=zip64) as member:
        step = 64 << 20
        for start in range(0, view.nbytes, step):
            member.write(view[start:start + step])


def write_torch_bytes(handle: Any, obj: Any, location: str = "cpu") -> None:
    """Write `obj` (dicts, lists, tuples, numbers, strings, numpy arrays as tensors) to a binary file.

    `location` tags every storage (`'cuda:0'` as a GPU run's `torch.save` does)."""
    pickler = _Pickler(location)
    pickler.save(obj)
    with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        _write_member(archive, "data.pkl", pickler.data())
        _write_member(archive, ".format_version", b"1")
        _write_member(archive, ".storage_alignment", str(_ALIGNMENT).encode())
        _write_member(archive, "byteorder", b"little")
        for key, array in enumerate(pickler.storages):
            _write_member(archive, f"data/{key}", array.reshape(-1).view(np.uint8))
        _write_member(archive, "version", b"3\n")


def write_torch_file(path: str | os.PathLike, obj: Any, location: str = "cpu") -> None:
    """`torch.save(obj, path)` without torch, written atomically (a temporary name, then a rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        write_torch_bytes(handle, obj, location)
