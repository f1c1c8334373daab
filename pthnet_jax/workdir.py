"""A training workdir that knows what it is: one run at a time, and the same run when resumed.

- `WorkdirLock`: an exclusive `flock` on `WORKDIR/.lock`, held by process 0 for the whole run. The
  kernel drops it when the process dies (even on kill -9), so a lock left by a killed run is taken
  over silently; a live holder is named (pid, host, start time) in the refusal.
- `run_identity` / `identity_differences`: the resolved config and a fingerprint of the dataset are
  saved with every checkpoint; a resume compares them with the new ones and refuses a mismatch
  (listing the differences) unless `train.allow_resume_change` is set.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np

from pthnet_jax.epochs import TrainingError

LOCK_FILE = ".lock"

# Config fields added after workdirs were written, with the value an older saved config means.
ADDED_FIELDS = {"family": "pthnet", "train.model_state_sync": "", "train.runs_vmap_width": -1}
# Fields that may change between the runs of one workdir without changing what was trained so far.
RESUMABLE_CHANGES = ("data.data_dir", "train.epochs", "train.keep_checkpoints", "train.profile_steps",
                     "eval.batch_size", "train.allow_resume_change", "train.parallel_runs",
                     "train.runs_placement", "train.runs_vmap_width")


class WorkdirError(TrainingError):
    """A workdir that cannot be used: in use, not a directory, from another run, not writable."""


class WorkdirLock:
    """`with WorkdirLock(workdir, enabled=...)`: refuse a second run on the same workdir."""

    def __init__(self, workdir: Path, enabled: bool = True):
        self.path = Path(workdir) / LOCK_FILE
        self.enabled = enabled
        self._fd: int | None = None
        self.previous: dict[str, Any] | None = None  # holder of a lock taken over from a dead run

    def acquire(self) -> "WorkdirLock":
        if not self.enabled:
            return self
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise WorkdirError(f"{self.path}: cannot create the workdir lock file ({err.strerror})") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = (f"process {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')})"
                       if holder else "another process")
                raise WorkdirError(f"{self.path.parent} is in use by {who}: two runs must not share a "
                                   "workdir; wait for it to end, stop it, or choose another --workdir") from err
            raise WorkdirError(f"{self.path}: cannot lock the workdir ({err.strerror})") from err
        self.previous = _read_holder(fd) or None
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
        except OSError:
            pass  # the lock is what matters; the holder's name is only for the message
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def workdir_lock(workdir: Path):
    """Process 0 holds the workdir's lock; every process learns whether it got it."""
    import jax

    lock = WorkdirLock(workdir, enabled=jax.process_index() == 0)
    refusal = None
    try:
        lock.acquire()
    except WorkdirError as err:
        refusal = err
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        refused = bool(multihost_utils.broadcast_one_to_all(np.int32(refusal is not None)))
        if refused and refusal is None:
            lock.release()
            raise WorkdirError(f"{workdir} is in use by another run (process 0 could not lock it)")
    if refusal is not None:
        raise refusal
    try:
        yield lock
    finally:
        lock.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
        value = json.loads(text) if text.strip() else {}
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def check_workdir_path(workdir: Path) -> None:
    """The workdir is a directory or can be made one; a WorkdirError naming it otherwise."""
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir {workdir} exists and is not a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WorkdirError(f"cannot create the workdir {workdir}: {err.strerror or err}") from err
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise WorkdirError(f"the workdir {workdir} is not writable")


# ---- the run's identity ----------------------------------------------------------------------------

def dataset_fingerprint(splits: dict[str, Any]) -> dict[str, Any]:
    """What identifies the data a run trains and selects on: per split its clip count and a hash
    of its clip ids, labels and (feature datasets) window counts, plus the dataset's benchmark,
    variant, feature width and classes. Splits of any family: `clip_ids`, `labels`, `class_names`,
    `dataset_info`, and optionally `feature_dim` and `num_windows`."""
    first = next(iter(splits.values()))
    info = first.dataset_info
    result: dict[str, Any] = {"benchmark": info.get("benchmark"), "variant": info.get("variant")}
    if getattr(first, "feature_dim", None) is not None:  # feature datasets (PTH-Net's)
        result["feature_dim"] = int(first.feature_dim)
    result["class_names"] = list(first.class_names)
    for name, split in splits.items():
        digest = hashlib.sha256()
        digest.update("\n".join(str(c) for c in split.clip_ids).encode())
        digest.update(np.asarray(split.labels, np.int64).tobytes())
        sizes = getattr(split, "num_windows", None) or {}  # per clip and level (PTH-Net's features)
        for level in sorted(sizes):
            digest.update(np.asarray(sizes[level], np.int64).tobytes())
        result[f"split:{name}"] = {"clips": int(split.num_clips), "sha256": digest.hexdigest()[:16]}
    return result


def run_identity(config, fingerprint: dict[str, Any]) -> dict[str, Any]:
    return {"config": json.loads(config.to_json_best_effort()), "dataset": fingerprint}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    if isinstance(value, tuple):
        value = list(value)
    return {prefix[:-1]: value}


def identity_differences(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between the identity saved in a workdir and the new one."""
    differences = []
    old_config, new_config = _flatten(saved.get("config", {})), _flatten(new.get("config", {}))
    old_config, new_config = {**ADDED_FIELDS, **old_config}, {**ADDED_FIELDS, **new_config}
    for key in sorted(set(old_config) | set(new_config)):
        if key in RESUMABLE_CHANGES:
            continue
        before, after = old_config.get(key, "<absent>"), new_config.get(key, "<absent>")
        if before != after:
            differences.append(f"config.{key}: {before!r} in the workdir, {after!r} now")
    old_data, new_data = saved.get("dataset", {}), new.get("dataset", {})
    for key in sorted(set(old_data) | set(new_data)):
        before, after = old_data.get(key, "<absent>"), new_data.get(key, "<absent>")
        if before != after:
            differences.append(f"dataset {key}: {before!r} in the workdir, {after!r} now")
    return differences
