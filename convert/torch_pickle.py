"""Read `torch.save` zip files without PyTorch and without running anything from the file.

A `.pth` file is a zip archive holding a pickle (`<top>/data.pkl`) and one raw byte file per tensor
storage (`<top>/data/<key>`). Unpickling normally imports and calls whatever globals the pickle
names, which is how a malicious checkpoint runs code. This reader's unpickler resolves only an
explicit allowlist of globals to local, side-effect-free rebuild functions:

- tensors (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`) -> numpy arrays, built from the
  storage bytes whatever device the storage was saved from (`cuda:0` included);
- `collections.OrderedDict`, numpy arrays and dtypes (the pickled `RecorderMeter` holds some), and
  `_codecs.encode` as protocol 2 uses it for bytes;
- classes defined in the saving script's `__main__` (the original's `RecorderMeter`) become inert
  `Placeholder` objects that keep the pickled state as plain data.

Any other global (`os.system`, `builtins.eval`, `subprocess.Popen`, ...) raises
`UnsafeCheckpointError` naming it and the file; nothing it names is imported or called.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np


class CheckpointReadError(ValueError):
    """A file that is not a readable `torch.save` zip archive."""


class UnsafeCheckpointError(CheckpointReadError):
    """A pickle that names a global outside the allowlist (one that could run code)."""


class Placeholder:
    """Stand-in for an object of a class the reader does not trust (e.g. `__main__.RecorderMeter`)."""

    def __init__(self, module: str, name: str, args: tuple = ()):
        self.class_path = f"{module}.{name}"
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:  # pickle's BUILD
        self.state = state

    def __repr__(self) -> str:
        return f"Placeholder({self.class_path})"

    def summary(self) -> dict[str, Any]:
        """The numbers it held, as JSON-friendly metadata."""
        return {"class": self.class_path, "state": to_plain(self.state)}


def to_plain(value: Any, max_items: int = 10_000) -> Any:
    """Convert a read value to JSON-friendly data (arrays -> lists when small, else a summary)."""
    if isinstance(value, np.ndarray):
        if value.size <= max_items and value.dtype.kind in "biuf":
            return value.astype(np.float64 if value.dtype.kind == "f" else np.int64).tolist()
        return {"array_shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): to_plain(v, max_items) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, max_items) for v in value]
    if isinstance(value, Placeholder):
        return value.summary()
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": len(value)}
    return value


_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "ComplexFloatStorage": np.complex64, "ComplexDoubleStorage": np.complex128,
}


class _StorageType:
    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *unused: Any) -> np.ndarray:
    itemsize = storage.dtype.itemsize
    if len(size) != len(stride):
        raise CheckpointReadError(f"tensor with size {size} and stride {stride} of different ranks")
    extent = offset + (sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0)
    if extent > storage.size:
        raise CheckpointReadError(f"tensor (offset {offset}, size {size}, stride {stride}) reads past "
                                  f"its storage of {storage.size} elements")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride), writeable=False)
    return np.array(view)  # own, contiguous memory


def _rebuild_parameter(data: np.ndarray, *unused: Any) -> np.ndarray:
    return data


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1")


def _ndarray_reconstruct(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise UnsafeCheckpointError(f"numpy array reconstruction of {cls!r} is not allowed")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


def _numpy_scalar(dtype: Any, data: bytes | None = None) -> Any:
    """numpy's pickled scalars (`numpy.core.multiarray.scalar(dtype, bytes)`), e.g. an np.float32."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafeCheckpointError(f"numpy scalar of dtype {dtype!r} is not allowed")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _make_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(spec, str):
        raise UnsafeCheckpointError(f"numpy dtype from {spec!r} is not allowed")
    dtype = np.dtype(spec)
    if dtype.hasobject:  # object arrays would hold arbitrary pickled objects
        raise UnsafeCheckpointError(f"numpy dtype {spec!r} (Python objects) is not allowed")
    return dtype


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _make_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _ndarray_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _ndarray_reconstruct,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, top: str, source: str, byteorder: str):
        super().__init__(io.BytesIO(data))
        self._archive, self._top, self._source, self._byteorder = archive, top, source, byteorder
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "__main__":
            return _placeholder_class(module, name)
        raise UnsafeCheckpointError(
            f"{self._source}: the pickle references the global '{module}.{name}', which is not on the "
            "allowlist of tensor/container types; refusing to load it (nothing was executed)")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointReadError(f"{self._source}: unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointReadError(f"{self._source}: storage of unknown type {storage_type!r}")
        if key not in self._storages:
            name = f"{self._top}/data/{key}"
            try:
                raw = self._archive.read(name)
            except KeyError as err:
                raise CheckpointReadError(f"{self._source}: storage '{name}' is missing from the "
                                          "archive (truncated or corrupt file?)") from err
            dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
            if len(raw) < numel * dtype.itemsize:
                raise CheckpointReadError(f"{self._source}: storage '{name}' has {len(raw)} bytes, "
                                          f"expected {numel * dtype.itemsize}")
            array = np.frombuffer(raw, dtype=dtype, count=numel)
            self._storages[key] = array.astype(storage_type.dtype, copy=False)
        return self._storages[key]


def _placeholder_class(module: str, name: str) -> type:
    """A fresh subclass of Placeholder standing for `module.name`; pickle may call or `__new__` it."""

    def new(cls, *args, **kwargs):
        obj = object.__new__(cls)
        Placeholder.__init__(obj, module, name, args)
        return obj

    return type(name, (Placeholder,), {"__new__": new, "__init__": lambda self, *a, **k: None,
                                       "__module__": "pthnet_jax.convert.torch_pickle.untrusted"})


def read_torch_file(path: str | os.PathLike) -> Any:
    """Load a `torch.save` zip file as plain Python/numpy data. Never imports torch."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise CheckpointReadError(f"{source}: no such file")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            head = handle.read(2)
        hint = (" It looks like the legacy (pre-1.6, non-zip) torch format: re-save it with a current "
                "torch.save." if head[:1] == b"\x80" else " The file is truncated or not a torch.save file.")
        raise CheckpointReadError(f"{source}: not a zip archive.{hint}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise CheckpointReadError(f"{source}: expected exactly one '<top>/data.pkl' in the "
                                          f"archive, found {pickles or 'none'}")
            top = pickles[0].split("/")[0]
            byteorder = "little"
            if f"{top}/byteorder" in names:
                byteorder = archive.read(f"{top}/byteorder").decode().strip() or "little"
            data = archive.read(pickles[0])
            return _RestrictedUnpickler(data, archive, top, source, byteorder).load()
    except CheckpointReadError as err:
        if str(err).startswith(source):
            raise
        raise type(err)(f"{source}: {err}") from err  # errors from rebuild helpers: name the file
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, zlib.error) as err:
        raise CheckpointReadError(f"{source}: corrupt or truncated torch.save archive ({err})") from err
