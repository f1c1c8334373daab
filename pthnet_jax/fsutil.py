"""Writing files so that a crash or a kill never leaves a half-written result.

Every file the package writes goes through `atomic_path` (write to a hidden temporary name in the
same directory, then `os.replace`), and every directory it produces through `staged_dir` (build it
under a hidden staging name, then swap it in). Staging names carry the writer's process id, so
leftovers of a killed writer can be recognised and removed by the next one (`remove_stale_staging`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

_STAGING = "staging"
_RETIRED = "retired"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's live process
        return True
    return True


def _hidden(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def remove_path(path: Path) -> None:
    """Remove a file, a symlink or a directory tree; a missing path is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale_staging(path: str | os.PathLike) -> list[Path]:
    """Remove staging and retired leftovers of `path` whose writer process is gone; return them."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    prefix = f".{path.name}."
    for candidate in path.parent.iterdir():
        name = candidate.name
        if not name.startswith(prefix):
            continue
        kind, _, pid = name[len(prefix):].rpartition("-")
        if kind not in (_STAGING, _RETIRED, "tmp") or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        remove_path(candidate)
        removed.append(candidate)
    return removed


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove `atomic_path` temporaries (`.NAME.tmp-PID[.SUFFIX]`) in `directory` whose writer is gone."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for candidate in directory.iterdir():
        name = candidate.name
        if not name.startswith(".") or ".tmp-" not in name or not candidate.is_file():
            continue
        pid = name.rpartition(".tmp-")[2].split(".")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` when the block succeeds.

    The temporary name keeps the suffix, so writers that pick a format by extension (matplotlib,
    numpy) still work. On an exception the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write text or bytes to `path` atomically."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)


def atomic_write_json(path: str | os.PathLike, value: Any, indent: int | None = 2) -> None:
    atomic_write(path, json.dumps(value, indent=indent))


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield an empty staging directory beside `path`; swap it in when the block succeeds.

    An existing `path` is moved aside only once the new content is complete and removed after the
    swap, so a failure at any point leaves either the old or the new directory in place, never a
    mix. With `replace=False` an existing `path` is an error (raised before any work). Leftovers of
    killed writers of the same `path` are removed first.
    """
    path = Path(path).absolute()
    if not replace and (path.exists() or path.is_symlink()):
        raise FileExistsError(f"{path}: already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path)
    staging, retired = _hidden(path, _STAGING), _hidden(path, _RETIRED)
    remove_path(staging)
    staging.mkdir()
    try:
        yield staging
        if not staging.exists():  # a writer that must create the directory itself removed it
            raise FileNotFoundError(f"{staging}: the writer produced nothing")
        swap_in(staging, path, retired)
    finally:
        remove_path(staging)


def swap_in(staging: Path, path: Path, retired: Path | None = None) -> None:
    """Put the complete directory `staging` at `path`, replacing what was there."""
    retired = retired or _hidden(path, _RETIRED)
    if path.exists() or path.is_symlink():
        os.replace(path, retired)
        os.replace(staging, path)
        remove_path(retired)
    else:
        os.replace(staging, path)
