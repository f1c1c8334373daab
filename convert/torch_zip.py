"""The `torch.save` zip archive: its declared sizes checked against `ReadLimits` and against the bytes
the file really holds before anything is read; members read with bounds; zipfile's errors on a
damaged archive turned into `CheckpointReadError`.
"""
from __future__ import annotations

import contextlib
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pthnet_jax.convert.errors import CheckpointError, CheckpointLimitError, CheckpointReadError, show
from pthnet_jax.convert.read_limits import ReadLimits


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
