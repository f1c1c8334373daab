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

The parts: `read_limits` (ReadLimits, Placeholder, to_plain), `pickle_tokens` (the allowlist and the
inert values the machine builds), `pickle_stack` + `pickle_machine` (the stack machine), `torch_zip`
(the archive), `torch_tensors` (views checked, storages read, result rebuilt). This module is the
entry point and keeps the public names.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pthnet_jax.convert import pickle_tokens as _tokens
from pthnet_jax.convert.errors import (CheckpointError, CheckpointLimitError, CheckpointReadError,
                                       UnsafeCheckpointError, show)
from pthnet_jax.convert.pickle_machine import _Machine
from pthnet_jax.convert.read_limits import DEFAULT_LIMITS, Placeholder, ReadLimits, to_plain
from pthnet_jax.convert.torch_tensors import _collect, _read_tensors, _rebuild
from pthnet_jax.convert.torch_zip import _Archive, _zip_errors

__all__ = ["CheckpointError", "CheckpointLimitError", "CheckpointReadError", "DEFAULT_LIMITS",
           "Placeholder", "ReadLimits", "UnsafeCheckpointError", "read_torch_file", "to_plain"]
# The allowlist of globals, under its old name here (the tests check that no file can change it).
_ALLOWED = _tokens._ALLOWED


def _as_read_error(err: CheckpointError, source: str) -> CheckpointError:
    if err.path is None:
        return type(err)(source, err.reason, err.unexpected)
    return err


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
