"""Fault injection (issue 14): kill -9 at chosen points of training, import and a checkpoint save,
then run again; a full disk on a small tmpfs. Every interrupted run must end exactly where an
uninterrupted one does (parameters, best/, history, summary), with nothing half-written left.

The file is also the worker: `python tests/test_faults.py train DATA WORKDIR FAULT` runs the tiny
3-epoch training with FAULT injected (a SIGKILL of itself at that point), `... import ROOT OUT`
an import killed after a few clips, `... save DST` a checkpoint save killed before its rename.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import FAST_ARCH  # noqa: E402

pytestmark = pytest.mark.slow

# tiny's learning-rate drop after epoch 1 (a resumed run must still apply it): the in-process runs'
# programs are then those of test_train.py's run with 2 steps per call and of the tiny runs' one-step
# call, compiled once per session into the tests' shared compilation cache (conftest.py).
OVERRIDES = {"train.epochs": 3, "train.steps_per_dispatch": 2, "train.keep_checkpoints": 1, "model.arch": FAST_ARCH}
TIMING = ("train_clips_per_s", "epoch_seconds", "eval_seconds", "save_seconds", "time")


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _inject(fault: str) -> None:
    """Arrange for this process to SIGKILL itself at `fault`."""
    if not fault:
        return
    if fault == "compile":  # while JAX writes a compiled program into its persistent cache
        import jax
        from jax._src import lru_cache

        from pthnet_jax import reporting

        enable = reporting.enable_compilation_cache

        def enable_and_cache_everything():
            removed = enable()
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            return removed

        reporting.enable_compilation_cache = enable_and_cache_everything

        def put(self, key, value):
            (self.path / f"{key}-cache").write_bytes(value[: len(value) // 2])
            _die()

        lru_cache.LRUCache.put = put
    elif fault == "save":  # an epoch's checkpoint written, not yet renamed into place
        from orbax.checkpoint._src.path import atomicity

        async def finalize(self, *args, **kwargs):
            _die()

        atomicity.AtomicRenameTemporaryPath.finalize = finalize
    elif fault == "bestswap":  # best/ being replaced: the old one moved aside, the new not yet in
        from pthnet_jax import fsutil

        def swap_in(staging, path, retired=None):
            if path.exists():
                os.replace(path, fsutil._hidden(path, "retired"))
            _die()

        fsutil.swap_in = swap_in
    elif fault == "bookkeep":  # checkpoint (and best/) saved, history/events/curves not yet
        from pthnet_jax import reporting

        reporting.Logger.epoch = lambda self, record, run: _die()
    elif fault.startswith("midepoch"):  # kill -9 mid-epoch (no SIGTERM: nothing saved)
        from pthnet_jax import reporting

        calls = {"n": 0}
        original = reporting.EpochProgress.update

        def update(self, metrics):
            original(self, metrics)
            calls["n"] += 1
            if calls["n"] == 2:
                _die()

        reporting.EpochProgress.update = update
    else:
        raise ValueError(fault)


def _train_worker(data_dir: str, workdir: str, fault: str) -> int:
    _inject(fault)
    from pthnet_jax.commands.train import main

    return main(["--config", str(Path(__file__).parents[1] / "configs" / "tiny.py"), "--data", data_dir,
                 "--workdir", workdir] + [f"--config.{k}={v}" for k, v in OVERRIDES.items()])


def _run(args, env=None, expect_killed=False, prefix=()):
    result = subprocess.run([*prefix, sys.executable, __file__, *map(str, args)], capture_output=True, text=True,
                            timeout=600, env={**os.environ, **(env or {})})
    if expect_killed:
        assert result.returncode == -signal.SIGKILL, (args, result.returncode, result.stderr[-3000:])
    else:
        assert result.returncode == 0, (args, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def _latest_params(workdir: Path):
    from pthnet_jax.checkpoint import load_checkpoint

    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    return steps[-1], load_checkpoint(workdir / "checkpoints" / str(steps[-1]))[1]


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in TIMING and k not in ("run",)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _assert_same_run(workdir: Path, reference: Path) -> None:
    import jax

    from pthnet_jax.checkpoint import load_checkpoint

    step, params = _latest_params(workdir)
    ref_step, ref_params = _latest_params(reference)
    assert step == ref_step == 15
    jax.tree.map(np.testing.assert_array_equal, params, ref_params)
    _, best, best_info, _ = load_checkpoint(workdir / "best")
    _, ref_best, ref_best_info, _ = load_checkpoint(reference / "best")
    jax.tree.map(np.testing.assert_array_equal, best, ref_best)
    assert best_info["provenance"]["step"] == ref_best_info["provenance"]["step"]
    for name in ("history.json", "summary.json"):
        ours = json.loads((workdir / name).read_text())
        theirs = json.loads((reference / name).read_text())
        if name == "summary.json":
            ours.pop("best_checkpoint"), theirs.pop("best_checkpoint"), ours.pop("curves"), theirs.pop("curves")
        assert _strip(ours) == _strip(theirs), name
    leftovers = [p.name for p in workdir.rglob("*") if ".orbax-checkpoint-tmp" in p.name or "staging" in p.name
                 or "retired" in p.name or ".tmp-" in p.name]
    assert leftovers == []


@pytest.fixture(scope="module")
def reference_run(tiny_datasets, tmp_path_factory):
    from pthnet_jax.train import train_and_evaluate
    from train_helpers import tiny_config

    workdir = tmp_path_factory.mktemp("faults") / "reference"
    train_and_evaluate(tiny_config(tiny_datasets[0], **OVERRIDES), workdir)
    return workdir


def test_kill_9_at_every_phase_then_resume_equals_an_uninterrupted_run(tiny_datasets, reference_run, tmp_path):
    from pthnet_jax.reporting import remove_damaged_cache_entries

    workdir, cache = tmp_path / "killed", tmp_path / "xla"
    # A cache of its own, holding what the session's has (reference_run compiled these programs):
    # the killed write is then that of a program compiled anew, and the other runs load the rest.
    shutil.copytree(os.environ["PTHNET_COMPILATION_CACHE"], cache)
    before = set(cache.glob("*-cache"))
    env = {"PTHNET_COMPILATION_CACHE": str(cache)}
    data = tiny_datasets[0]
    _run(["train", data, workdir, "compile"], env, expect_killed=True)
    assert set(cache.glob("*-cache")) - before, "the kill did not happen while writing the cache"
    _run(["train", data, workdir, "save"], env, expect_killed=True)
    assert not (workdir / "checkpoints" / "5").exists()
    assert list((workdir / "checkpoints").glob("5.orbax-checkpoint-tmp*"))
    _run(["train", data, workdir, "bestswap"], env, expect_killed=True)
    assert (workdir / "checkpoints" / "5").is_dir() and not (workdir / "best").exists()
    resumed = _run(["train", data, workdir, "bookkeep"], env, expect_killed=True)
    assert "rebuilt" in resumed.stdout and "best" in resumed.stdout
    assert [r["epoch"] for r in json.loads((workdir / "history.json").read_text())] == [1]
    _run(["train", data, workdir, "midepoch"], env, expect_killed=True)
    assert [r["epoch"] for r in json.loads((workdir / "history.json").read_text())] == [1, 2]
    _run(["train", data, workdir, ""], env)
    _assert_same_run(workdir, reference_run)
    assert remove_damaged_cache_entries(cache) == []  # the truncated entry was replaced by a whole one


def test_sigterm_mid_epoch_keeps_the_epochs_metrics_complete(tiny_datasets, reference_run, tmp_path, monkeypatch):
    from pthnet_jax import reporting
    from pthnet_jax.train import train_and_evaluate
    from train_helpers import tiny_config

    calls = {"n": 0}
    original = reporting.EpochProgress.update

    def update_then_signal(self, metrics):
        original(self, metrics)
        calls["n"] += 1
        if calls["n"] == 4:  # epoch 2's first call (epoch 1 has calls of 2, 2 and 1 steps)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(reporting.EpochProgress, "update", update_then_signal)
    config = tiny_config(tiny_datasets[0], **OVERRIDES)
    workdir = tmp_path / "sigterm"
    assert train_and_evaluate(config, workdir) == {"interrupted": True, "step": 9}
    monkeypatch.setattr(reporting.EpochProgress, "update", original)
    train_and_evaluate(config, workdir)
    _assert_same_run(workdir, reference_run)  # includes epoch 2's train_loss/accuracy over all 5 steps


def _import_worker(root: str, out: str, kill_after: int) -> None:
    from pthnet_jax.data import lists

    original, calls = lists.load_features, {"n": 0}

    def load_then_die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == kill_after:
            _die()
        return original(*args, **kwargs)

    lists.load_features = load_then_die
    from pthnet_jax.data import importer

    importer.load_features = load_then_die
    from train_helpers import DIM

    importer.import_features("FERv39k", root, out, feature_dim=DIM, quiet=True)


def test_kill_9_of_import_and_of_a_checkpoint_save_leaves_nothing_behind(tiny_datasets, tmp_path):
    from train_helpers import DIM

    root = next(p for p in Path(tiny_datasets[0]).parents if (p / "root").is_dir()) / "root"
    out = tmp_path / "imports" / "data"
    _run(["import", root, out, 30], expect_killed=True)
    assert not out.exists() and list(out.parent.iterdir())  # the killed import's staging is there
    from pthnet_jax.data.importer import import_features
    from pthnet_jax.data.source import open_split

    import_features("FERv39k", root, out, feature_dim=DIM, quiet=True)
    assert [p.name for p in out.parent.iterdir()] == ["data"]
    assert open_split(out, "train").num_clips == open_split(tiny_datasets[0], "train").num_clips

    destination = tmp_path / "saves" / "model"
    _run(["save", destination, 0], expect_killed=True)
    assert not destination.exists() and list(destination.parent.iterdir())
    _run(["save", destination, 1])
    assert [p.name for p in destination.parent.iterdir()] == ["model"]


def _save_worker(destination: str, finish: int) -> None:
    from pthnet_jax.checkpoint import save_checkpoint
    from pthnet_jax.models.pthnet import ModelConfig
    from train_helpers import random_params

    if not finish:
        _inject("save")
    config = ModelConfig(n_in=16, n_embd=32, mlp_dim=48, num_classes=7)
    save_checkpoint(destination, random_params(config), config, {"source": "test"})  # nothing to compile


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m none {probe}"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_full_disk_is_a_message_and_a_rerun_after_freeing_space_resumes(tiny_datasets, reference_run, tmp_path):
    """A real ENOSPC: the workdir on a small tmpfs (in a user+mount namespace), grown afterwards."""
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs here (unshare -rm); the simulated ENOSPC is in test_reliability.py")
    workdir, out, small_data = tmp_path / "small", tmp_path / "out", tmp_path / "small-data"
    workdir.mkdir(), out.mkdir(), small_data.mkdir()
    # A step checkpoint of the tiny run takes 264 KiB on a tmpfs, best/ 132 KiB and the rest 80 KiB:
    # epoch 1 fits, epoch 2's checkpoint does not (while step 5 is still kept).
    size = os.environ.get("PTHNET_TEST_FULL_DISK_SIZE", "600k")
    command = [sys.executable, __file__]
    root = next(p for p in Path(tiny_datasets[0]).parents if (p / "root").is_dir()) / "root"
    script = textwrap.dedent(f"""
        set -u
        mount -t tmpfs -o size=48k none {small_data} || exit 89
        {sys.executable} -m pthnet_jax.cli import-features --dataset FERv39k --root {root} --out {small_data}/data \
            --feature-dim 16 > {out}/import.out 2> {out}/import.err
        echo $? > {out}/import.rc
        ls -A {small_data} > {out}/import-left.txt
        mount -t tmpfs -o size={size} none {workdir} || exit 90
        {' '.join(command)} train {tiny_datasets[0]} {workdir} "" > {out}/first.out 2> {out}/first.err
        echo $? > {out}/first.rc
        ls -la {workdir} {workdir}/checkpoints > {out}/listing.txt 2>&1
        mount -o remount,size=64m {workdir} || exit 91
        {' '.join(command)} train {tiny_datasets[0]} {workdir} "" > {out}/second.out 2> {out}/second.err
        echo $? > {out}/second.rc
        cp -r {workdir} {out}/workdir
    """)
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    import_err = (out / "import.err").read_text()
    assert (out / "import.rc").read_text().strip() == "2", import_err[-3000:]
    assert "Traceback" not in import_err and "No space left on device" in import_err, import_err[-3000:]
    assert (out / "import-left.txt").read_text().split() == []  # nothing half-written left
    first_err = (out / "first.err").read_text()
    assert (out / "first.rc").read_text().strip() == "2", first_err[-3000:]
    assert "Traceback" not in first_err and "No space left on device" in first_err, first_err[-3000:]
    assert str(workdir) in first_err
    if f"{workdir}/checkpoints/10:" in first_err:  # the expected point: the earlier checkpoint is intact
        listing = (out / "listing.txt").read_text().split()
        assert "5" in listing and not any("orbax-checkpoint-tmp" in name for name in listing), listing
    second_err = (out / "second.err").read_text()
    assert (out / "second.rc").read_text().strip() == "0", second_err[-3000:]
    _assert_same_run(out / "workdir", reference_run)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "train":
        sys.exit(_train_worker(sys.argv[2], sys.argv[3], sys.argv[4]))
    elif mode == "import":
        _import_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "save":
        _save_worker(sys.argv[2], int(sys.argv[3]))
