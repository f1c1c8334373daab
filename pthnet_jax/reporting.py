"""What a run shows and leaves beside its checkpoints: config and environment, progress bars,
TensorBoard scalars, `history.json`, the training-curve plot and the final summary."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from pthnet_jax.run_checkpoints import BEST
from pthnet_jax.fsutil import atomic_write, atomic_write_json, save_figure


def enable_compilation_cache() -> list[Path]:
    """Persist compiled XLA programs (the first compile of the training step takes a while on CPU).

    JAX writes a cache entry in place (no temporary name), so a process killed while writing one
    leaves a truncated entry that every later run would fail to read, warn about and recompile,
    without ever replacing it (JAX skips a key whose file exists). Unreadable entries are removed
    here first, so the next compile writes them anew; returns the removed files.
    """
    cache = os.environ.get("PTHNET_COMPILATION_CACHE", str(Path.home() / ".cache" / "pthnet-jax" / "xla"))
    removed: list[Path] = []
    if cache and cache != "0":
        removed = remove_damaged_cache_entries(Path(cache))
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
    return removed


_VERIFIED = ".pthnet-verified.json"


def remove_damaged_cache_entries(cache: Path) -> list[Path]:
    """Delete `*-cache` entries of JAX's persistent compilation cache that do not decompress.

    Entries are `<key>-cache` files holding the compressed (compile time, executable); the check
    decompresses each entry once and remembers (name, size, mtime) of the good ones in
    `.pthnet-verified.json`, so a warm cache costs a `stat` per entry afterwards.
    """
    try:
        from jax._src.compilation_cache import decompress_executable
    except ImportError:  # another JAX layout: leave the cache alone
        return []
    if not cache.is_dir():
        return []
    import json

    verified_file = cache / _VERIFIED
    try:
        verified = json.loads(verified_file.read_text())
        if not isinstance(verified, dict):
            verified = {}
    except (OSError, ValueError):
        verified = {}
    removed, good, changed = [], {}, False
    for entry in sorted(cache.glob("*-cache")):
        try:
            stat = entry.stat()
            mark = [stat.st_size, stat.st_mtime_ns]
            if verified.get(entry.name) == mark:
                good[entry.name] = mark
                continue
            changed = True
            data = entry.read_bytes()
            if len(decompress_executable(data)) <= 8:  # 8 bytes of compile time, then the executable
                raise ValueError("empty entry")
            good[entry.name] = mark
        except OSError:
            continue  # vanished or unreadable by us: not ours to judge
        except Exception:  # noqa: BLE001 - zlib.error / zstd errors: a truncated or damaged entry
            try:
                entry.unlink()
                entry.with_name(entry.name.removesuffix("-cache") + "-atime").unlink(missing_ok=True)
                removed.append(entry)
            except OSError:
                pass
    if changed or len(good) != len(verified):
        try:
            atomic_write(verified_file, json.dumps(good))
        except OSError:
            pass
    return removed


def save_run_files(workdir: Path, config) -> None:
    """The resolved config and the environment, beside the checkpoints."""
    if jax.process_index() != 0:
        return
    atomic_write(workdir / "config.json", config.to_json_best_effort(indent=2, sort_keys=True))
    import flax
    import optax

    versions = {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
                "optax": optax.__version__, "orbax-checkpoint": getattr(ocp, "__version__", "?"),
                "numpy": np.__version__}
    environment = {"versions": versions, "platform": platform.platform(),
                   "devices": [str(d) for d in jax.devices()], "process_count": jax.process_count(),
                   "local_device_count": jax.local_device_count()}
    atomic_write_json(workdir / "environment.json", environment)


class StepTrace:
    """A `jax.profiler` trace of the first `num_steps` training steps run inside the block.

    `advance(n)` is called as steps finish (their metrics were read); the trace stops once enough
    steps ran, or when the block ends. `record` then says where it went and how long the steps took.
    """

    def __init__(self, directory: Path, num_steps: int, enabled: bool):
        self.directory, self.num_steps = directory, num_steps
        self.enabled = enabled and num_steps > 0
        self.done, self.started, self.record = 0, None, None

    def __enter__(self) -> "StepTrace":
        if self.enabled:
            jax.profiler.start_trace(str(self.directory))
            self.started = time.perf_counter()
        return self

    def advance(self, num_steps: int) -> None:
        if self.started is None:
            return
        self.done += num_steps
        if self.done >= self.num_steps:
            self._stop()

    def _stop(self) -> None:
        jax.profiler.stop_trace()
        self.record = {"dir": str(self.directory), "steps": int(self.done),
                       "seconds": time.perf_counter() - self.started}
        self.started = None

    def __exit__(self, *exc) -> None:
        if self.started is not None:
            self._stop()


class EpochProgress:
    """A tqdm bar per epoch with loss, accuracy, clips/s and ETA."""

    def __init__(self, epoch: int, epochs: int, steps: int, first: int, global_batch: int, enabled: bool,
                 resume: dict | None = None, terms: tuple[str, ...] = ("total", "ce")):
        """`resume`: the `snapshot()` of this epoch's steps before `first` (a run resumed mid-epoch),
        so the epoch's record covers all of its steps. `terms`: the family's loss terms; the total
        and the cross-entropy ("ce", when the family has one) are recorded."""
        from tqdm.auto import tqdm

        self.bar = tqdm(total=steps, initial=first, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                        disable=not enabled, dynamic_ncols=True, leave=True)
        self.totals = {"total": 0.0, **({"ce": 0.0} if "ce" in terms else {}), "correct": 0.0, "count": 0.0}
        self.earlier_seconds = 0.0
        if resume:
            self.totals.update({k: float(v) for k, v in resume["totals"].items() if k in self.totals})
            self.earlier_seconds = float(resume.get("seconds", 0.0))
        self.started = time.perf_counter()

    def snapshot(self) -> dict[str, Any]:
        """The running sums so far (saved with a mid-epoch checkpoint)."""
        return {"totals": dict(self.totals),
                "seconds": self.earlier_seconds + time.perf_counter() - self.started}

    def update(self, metrics: dict[str, np.ndarray]) -> None:
        for key in self.totals:
            self.totals[key] += float(np.sum(metrics[key]))
        count = max(self.totals["count"], 1.0)
        elapsed = self.earlier_seconds + time.perf_counter() - self.started
        self.bar.set_postfix(loss=f"{self.totals['total'] / count:.4f}",
                             acc=f"{100 * self.totals['correct'] / count:.2f}",
                             clips_s=f"{self.totals['count'] / max(elapsed, 1e-9):.0f}", refresh=False)
        self.bar.update(len(np.atleast_1d(metrics["count"])))

    def close(self) -> dict[str, float]:
        self.bar.close()
        count = max(self.totals["count"], 1.0)
        elapsed = self.earlier_seconds + time.perf_counter() - self.started
        ce = {"train_ce": self.totals["ce"] / count} if "ce" in self.totals else {}
        return {"train_loss": self.totals["total"] / count, **ce,
                "train_accuracy": 100 * self.totals["correct"] / count,
                "train_clips_per_s": self.totals["count"] / max(elapsed, 1e-9), "epoch_seconds": elapsed}


class Logger:
    """TensorBoard scalars under workdir/tensorboard, a metrics log and the training-curve PNG.

    The events and `history.json` are written every epoch. Drawing the curves costs ~0.25 s on CPU
    (a short run's epoch can take a few seconds), so they are redrawn at most every `curves_every_s`
    seconds, and always at the run's end (`finish`) or when the logger closes (an interruption).
    """

    def __init__(self, workdir: Path, enabled: bool, curves_every_s: float = 30.0):
        self.workdir, self.enabled = workdir, enabled
        self.curves_every_s = float(curves_every_s)
        self._curves_drawn_at: float | None = None
        self._curves_pending: list[dict[str, Any]] | None = None
        self.writer = None
        if enabled:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(workdir / "tensorboard"))

    def _events(self, record: dict[str, Any]) -> None:
        step = record["step"]
        for key in (k for k in ("train_loss", "train_ce", "train_accuracy", "train_clips_per_s", "lr") if k in record):
            self.writer.add_scalar(f"train/{key.removeprefix('train_')}", record[key], step)
        for split in ("test", "val"):
            for metric, value in record.get(split, {}).items():
                self.writer.add_scalar(f"{split}/{metric}", value, step)
        self.writer.flush()

    def sync(self, history: list[dict[str, Any]]) -> list[int]:
        """Bring `history.json`, the TensorBoard events and the curves up to `history` (the one saved
        in the checkpoint) after a kill left them behind; returns the epochs that were missing.

        The events of an epoch are written before its `history.json`, so an epoch absent from the
        file may lack its events: they are written (again) for those epochs.
        """
        if not self.enabled:
            return []
        path = self.workdir / "history.json"
        try:
            import json

            on_disk = json.loads(path.read_text())
            on_disk = on_disk if isinstance(on_disk, list) else []
        except (OSError, ValueError):
            on_disk = []
        logged = {r.get("epoch"): r for r in on_disk if isinstance(r, dict)}
        # An epoch's save time is measured after its checkpoint is written, so only history.json has
        # it for the latest epoch: compare without it, and keep it.
        merged = [logged[r["epoch"]] if _same_record(logged.get(r["epoch"]), r) else r for r in history]
        if merged == on_disk:
            if history and _older(self.workdir / "training_curves.png", path):  # killed before redrawing
                self._draw_curves(history)
            return []
        missing = [r["epoch"] for r in history if not _same_record(logged.get(r["epoch"]), r)]
        for record in history:
            if record["epoch"] in missing:
                self._events(record)
        history = merged
        atomic_write_json(path, history, indent=1)
        if history:
            self._draw_curves(history)
        elif (self.workdir / "training_curves.png").exists():
            (self.workdir / "training_curves.png").unlink()
        return missing

    def epoch(self, record: dict[str, Any], run) -> None:
        if not self.enabled:
            return
        self._events(record)
        line = " | ".join([f"epoch {record['epoch']}", f"loss {record['train_loss']:.4f}",
                           f"train acc {record['train_accuracy']:.2f}"] +
                          [f"{split} {_headline(record[split])}" for split in ("val", "test") if split in record])
        print(line, flush=True)
        atomic_write_json(self.workdir / "history.json", run.history, indent=1)
        if self._curves_drawn_at is None or time.monotonic() - self._curves_drawn_at >= self.curves_every_s:
            self._draw_curves(run.history)
        else:
            self._curves_pending = list(run.history)

    def _draw_curves(self, history: list[dict[str, Any]]) -> None:
        plot_curves(history, self.workdir / "training_curves.png")
        self._curves_drawn_at, self._curves_pending = time.monotonic(), None

    def finish(self) -> None:
        """Draw the curves an epoch left pending (the end of a run)."""
        if self._curves_pending:
            self._draw_curves(self._curves_pending)

    def close(self) -> None:
        try:  # an interruption or an error: the curves are a courtesy, never a second failure
            self.finish()
        except Exception:  # noqa: BLE001 - e.g. the full disk that stopped the run; `sync` redraws
            pass
        if self.writer is not None:
            self.writer.close()


def _older(path: Path, than: Path) -> bool:
    """`path` is missing or was last written before `than`."""
    try:
        return path.stat().st_mtime_ns < than.stat().st_mtime_ns
    except FileNotFoundError:
        return True


def _same_record(a: Any, b: dict[str, Any]) -> bool:
    if not isinstance(a, dict):
        return False
    return {k: v for k, v in a.items() if k != "save_seconds"} == {k: v for k, v in b.items() if k != "save_seconds"}


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss (CE + KL)")
    if all("train_ce" in r for r in history):
        ax_loss.plot(epochs, [r["train_ce"] for r in history], "s--", label="train CE(H)")
    ax_loss.set_xlabel("epoch"), ax_loss.set_ylabel("loss"), ax_loss.legend(), ax_loss.grid(alpha=0.3)
    ax_acc.plot(epochs, [r["train_accuracy"] for r in history], "o-", label="train accuracy")
    for split in ("val", "test"):
        rows = [(r["epoch"], r[split]) for r in history if split in r]
        if rows:
            for name, style in zip(reversed(_shown(rows[-1][1])), ("s-", "^--")):  # PTH-Net: WAR, UAR
                ax_acc.plot([e for e, _ in rows], [m[name] for _, m in rows], style, label=f"{split} {name}")
    ax_acc.set_xlabel("epoch"), ax_acc.set_ylabel("%"), ax_acc.legend(), ax_acc.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def final_summary(workdir: Path, run, num_params: int, select_on: str, clock=None) -> dict[str, Any]:
    """summary.json, the best epoch's line and where the run's time went (a `timing.RunClock`)."""
    summary = {"epochs": run.epoch, "num_params": num_params, "model_selection": select_on,
               "best": run.best, "last": run.history[-1] if run.history else None,
               "best_checkpoint": str(workdir / BEST), "curves": str(workdir / "training_curves.png")}
    if clock is not None:
        summary["time"] = clock.record()
    if jax.process_index() == 0:
        atomic_write_json(workdir / "summary.json", summary)
        best = run.best
        if best:
            metrics = best["metrics"].get(select_on, {})
            print(f"best epoch {best['epoch']} by {best['split']} {best['metric']}: {_headline(metrics)} "
                  f"(selected on the {select_on} split) -> {workdir / BEST}")
        if clock is not None:
            print(clock.line())
    return summary


def _shown(metrics: dict[str, float]) -> list[str]:
    """The two metrics a line shows: the family's first two (PTH-Net: UAR, WAR)."""
    return list(metrics)[:2]


def _headline(metrics: dict[str, float]) -> str:
    return " ".join(f"{name} {metrics[name]:.2f}" for name in _shown(metrics))
