"""Reliability (issue 14): named errors for every user-caused failure, and workdirs that cannot be
silently corrupted. The kill -9 / disk-full tests are in test_faults.py (slow)."""
import ast
import concurrent.futures
import errno
import json
import os
import shutil
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest

from pthnet_jax import reporting
from pthnet_jax.checkpoint import read_info
from pthnet_jax.commands.train import main as train_main
from pthnet_jax.config_check import ConfigError, config_problems, validate_config
from pthnet_jax.data.lists import NpyFormatError, load_features, parse_npy_header, read_npy
from pthnet_jax.data.source import DatasetError, open_split
from pthnet_jax.train import TrainingError, train_and_evaluate
from pthnet_jax.workdir import WorkdirError, WorkdirLock

from train_helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]
TIMING = ("train_clips_per_s", "epoch_seconds", "eval_seconds", "save_seconds")


def _strip(record):
    return {k: v for k, v in record.items() if k not in TIMING}


# ---- .npy headers without ast, from many threads -------------------------------------------------

def test_npy_reader_matches_numpy_and_refuses_damage(tmp_path):
    path = tmp_path / "a.npy"
    for array in (np.arange(48, dtype=np.float32).reshape(3, 16), np.zeros((0, 16)), np.arange(5, dtype=">f8"),
                  np.asfortranarray(np.arange(12.0).reshape(3, 4)), np.ones((2, 2), np.int16)):
        np.save(path, array)
        loaded = read_npy(path)
        assert loaded.dtype == array.dtype and loaded.shape == array.shape
        np.testing.assert_array_equal(loaded, array)
        data = path.read_bytes()
        path.write_bytes(data[:-1])
        with pytest.raises(NpyFormatError):
            read_npy(path)
        path.write_bytes(data + b"\0")
        with pytest.raises(NpyFormatError, match="more"):
            read_npy(path)
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(NpyFormatError, match="not a plain numeric"):
        read_npy(path)
    path.write_bytes(b"not an npy file at all")
    with pytest.raises(NpyFormatError, match="magic"):
        read_npy(path)
    for header in ("{'descr': '<f4', 'shape': (3,), }", "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), "
                   "'x': __import__('os')}", "{'descr': '<f4', 'fortran_order': False, 'shape': (-3,), }",
                   "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (3,), }"):
        with pytest.raises(NpyFormatError):
            parse_npy_header(header)
    assert parse_npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 16), }      \n")[2] == (3, 16)


def test_feature_import_never_uses_ast_and_survives_many_threads(tmp_path, monkeypatch):
    """CPython 3.11's AST constructor is not thread-safe (python/cpython#106905); np.load parses
    .npy headers with ast.literal_eval, so the importer's thread pool could fail at random."""
    from pthnet_jax.data.lists import Clip

    def no_ast(*args, **kwargs):
        raise AssertionError("ast.literal_eval called while loading features")

    monkeypatch.setattr(ast, "literal_eval", no_ast)
    rng = np.random.default_rng(0)
    clips = []
    for i in range(64):
        windows = int(rng.integers(1, 9))
        np.save(tmp_path / f"c{i}.npy", rng.normal(size=(windows, 8)).astype(np.float32))
        clips.append((Clip(i, f"c{i}.npy", 0, {"H": f"c{i}.npy"}, {"H": windows}), None))
    expected = {i: np.fromfile(tmp_path / f"c{i}.npy", np.uint8) for i in range(64)}
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda c: load_features(tmp_path, c[0], "H", tmp_path / "list.txt", 8),
                                [c for _ in range(20) for c in clips]))
    assert len(results) == 64 * 20
    for (clip, _), array in zip(clips * 20, results):
        assert array.shape == (clip.num_windows["H"], 8) and array.dtype == np.float32
        assert expected[clip.list_index][-array.nbytes:].tobytes() == array.tobytes()


# ---- config validation ---------------------------------------------------------------------------

@pytest.mark.parametrize("key,value,expected", [
    ("train.global_batch", 0, "config.train.global_batch must be an integer >= 1"),
    ("train.eval_every", 0, "config.train.eval_every must be an integer >= 1"),
    ("train.epochs", -1, "config.train.epochs must be an integer >= 1"),
    ("data.mode", "bogus", "config.data.mode must be one of 'auto', 'resident', 'streaming'"),
    ("train.select_metric", "war", "config.train.select_metric must be one of 'UAR', 'WAR'"),
    ("train.select_on", "train", "config.train.select_on must be one of 'test', 'val'"),
    ("optim.milestones", "(a,b)", "config.optim.milestones must be a sequence"),
    ("optim.milestones", (2, 1), "strictly increasing"),
    ("optim.milestones", (1, 5), "within 1..config.train.epochs=2"),
    ("optim.lr", float("nan"), "config.optim.lr must be a finite number"),
    ("optim.lr", -0.1, "config.optim.lr must be a finite number in (0.0"),
    ("optim.momentum", 1.0, "config.optim.momentum"),
    ("train.val_fraction", 1.0, "config.train.val_fraction"),
    ("train.keep_checkpoints", 0, "config.train.keep_checkpoints"),
    ("model_dtype", "float16", "config.model_dtype"),
    ("model.n_embd", 40, "n_embd=40 must be divisible by 16"),
    ("model.n_embd", 0, "config.model.n_embd must be an integer >= 1"),
    ("model.path_pdrop", 1.5, "config.model.path_pdrop"),
    ("train.steps_per_dispatch", -1, "config.train.steps_per_dispatch"),
    ("train.allow_resume_change", 1, "config.train.allow_resume_change must be True or False"),
])
def test_config_values_out_of_range_are_named(tmp_path, key, value, expected):
    import ml_collections

    values = tiny_config(tmp_path).to_dict()
    section, _, field = key.rpartition(".")
    (values[section] if section else values)[field] = value  # any type: as a config file could say
    config = ml_collections.ConfigDict(values)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        validate_config(config)
    # Before any work: no workdir was created.
    with pytest.raises(ConfigError):
        train_and_evaluate(config, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_every_shipped_config_is_valid():
    import importlib

    for path in sorted((REPO / "configs").glob("*.py")):
        if path.stem in ("__init__",):
            continue
        module = importlib.import_module(f"pthnet_jax.configs.{path.stem}")
        if hasattr(module, "get_config"):
            assert config_problems(module.get_config()) == [], path.name


def test_cli_prints_config_errors_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n    pass\n")
    code = train_main(["--config", str(bad), "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 2 and "invalid syntax" in err and "Traceback" not in err
    code = train_main(["--config", str(REPO / "configs" / "tiny.py"), "--workdir", str(tmp_path / "w"),
                       "--data", str(tmp_path), "--config.train.global_batch=0", "--config.train.eval_every=0",
                       "--config.optim.milestones=(a,b)", "--config.train.select_metric=war"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for key in ("train.global_batch", "train.eval_every", "optim.milestones", "train.select_metric"):
        assert f"config.{key}" in err


# ---- compilation cache ---------------------------------------------------------------------------

def test_truncated_compilation_cache_entries_are_removed(tmp_path, monkeypatch):
    cache = tmp_path / "xla"
    cache.mkdir()
    good = zlib.compress(b"\0" * 8 + b"executable bytes" * 100)
    (cache / "jit_good-abc-cache").write_bytes(good)
    (cache / "jit_cut-def-cache").write_bytes(good[: len(good) // 2])
    (cache / "jit_junk-0-cache").write_bytes(b"junk")
    monkeypatch.setenv("PTHNET_COMPILATION_CACHE", str(cache))
    previous = jax.config.jax_compilation_cache_dir
    try:
        removed = reporting.enable_compilation_cache()
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
    assert sorted(p.name for p in removed) == ["jit_cut-def-cache", "jit_junk-0-cache"]
    assert sorted(p.name for p in cache.glob("*-cache")) == ["jit_good-abc-cache"]
    assert "jit_good-abc-cache" in json.loads((cache / ".pthnet-verified.json").read_text())
    # A verified entry is not read again; one that changed is.
    (cache / "jit_good-abc-cache").write_bytes(good[:10])
    assert [p.name for p in reporting.remove_damaged_cache_entries(cache)] == ["jit_good-abc-cache"]


# ---- damaged datasets ----------------------------------------------------------------------------

def test_damaged_dataset_files_are_named(tiny_datasets, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_datasets[0], data)
    shard = sorted(data.glob("*train.array_record*"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(DatasetError, match="truncated or damaged"):
        open_split(data, "train")
    with pytest.raises(TrainingError, match=str(data)):
        train_and_evaluate(tiny_config(data), tmp_path / "w")

    data2 = tmp_path / "data2"
    shutil.copytree(tiny_datasets[0], data2)
    (data2 / "pthnet_index-test.npz").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(DatasetError, match="pthnet_index-test.npz: damaged index"):
        open_split(data2, "test")


# ---- the workdir: lock, identity, bookkeeping ------------------------------------------------------

@pytest.fixture(scope="module")
def done_run(tiny_datasets, tmp_path_factory):
    """A finished 2-epoch tiny run (keep 1 checkpoint: the best epoch's step is kept beside it)."""
    workdir = tmp_path_factory.mktemp("reliability") / "run"
    config = tiny_config(tiny_datasets[0], **{"train.epochs": 2, "train.keep_checkpoints": 1})
    summary = train_and_evaluate(config, workdir)
    return workdir, config, summary


def _copy(run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(run, workdir)
    return workdir


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_finished_run_keeps_the_best_step_and_best_matches_it(done_run):
    workdir, _, summary = done_run
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 10 and summary["best"]["step"] in steps and len(steps) <= 2
    assert read_info(workdir / "best")["provenance"]["step"] == summary["best"]["step"]
    history = json.loads((workdir / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_second_run_on_a_locked_workdir_is_refused(done_run, tmp_path):
    workdir = _copy(done_run[0], tmp_path)
    with WorkdirLock(workdir):
        with pytest.raises(WorkdirError, match=f"in use by process {os.getpid()}"):
            train_and_evaluate(done_run[1], workdir)
    # A lock file left by a killed run (its holder is gone, so the kernel dropped the lock): taken over.
    (workdir / ".lock").write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": "then"}))
    assert train_and_evaluate(done_run[1], workdir)["epochs"] == 2


@pytest.mark.slow  # uses the trained run (done_run): outside the quick check
def test_workdir_that_is_a_file_is_refused(done_run, tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(WorkdirError, match="exists and is not a directory"):
        train_and_evaluate(done_run[1], path)


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_resume_with_another_config_or_dataset_is_refused(done_run, tiny_datasets, tmp_path):
    workdir = _copy(done_run[0], tmp_path)
    config = done_run[1]
    before = (workdir / "config.json").read_text()
    events = sorted(p.name for p in (workdir / "tensorboard").iterdir())
    changed = tiny_config(config.data.data_dir, **{"train.epochs": 2, "optim.lr": 0.01, "model.n_embd": 48})
    with pytest.raises(WorkdirError) as refused:
        train_and_evaluate(changed, workdir)
    message = str(refused.value)
    assert "config.optim.lr: 0.005 in the workdir, 0.01 now" in message
    assert "config.model.n_embd: 32 in the workdir, 48 now" in message
    assert "allow_resume_change" in message
    assert (workdir / "config.json").read_text() == before  # nothing overwritten, nothing added
    assert sorted(p.name for p in (workdir / "tensorboard").iterdir()) == events
    other_data = tiny_config(tiny_datasets[1], **{"train.epochs": 2, "train.keep_checkpoints": 1})
    with pytest.raises(WorkdirError, match="dataset split:train"):
        train_and_evaluate(other_data, workdir)
    # Knowingly: accepted, and said.
    allowed = tiny_config(config.data.data_dir, **{"train.epochs": 2, "optim.lr": 0.01,
                                                   "train.allow_resume_change": True})
    assert train_and_evaluate(allowed, workdir)["epochs"] == 2
    assert json.loads((workdir / "config.json").read_text())["optim"]["lr"] == 0.01


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_bookkeeping_left_stale_by_a_kill_is_rebuilt_from_the_checkpoints(done_run, tmp_path):
    """A kill after an epoch's checkpoint but before best/, history.json and the summary."""
    from pthnet_jax.checkpoint import load_checkpoint

    workdir = _copy(done_run[0], tmp_path)
    expected_history = json.loads((workdir / "history.json").read_text())
    best_step = done_run[2]["best"]["step"]
    shutil.rmtree(workdir / "best")
    (workdir / "history.json").write_text(json.dumps(expected_history[:1]))
    (workdir / "summary.json").unlink()
    summary = train_and_evaluate(done_run[1], workdir)
    assert read_info(workdir / "best")["provenance"]["step"] == best_step
    _, best, _, _ = load_checkpoint(workdir / "best")
    _, saved, _, _ = load_checkpoint(workdir / "checkpoints" / str(best_step))
    jax.tree.map(np.testing.assert_array_equal, best, saved)
    assert [_strip(r) for r in json.loads((workdir / "history.json").read_text())] == \
        [_strip(r) for r in expected_history]
    assert summary["best"] == done_run[2]["best"] and (workdir / "summary.json").is_file()
    # best/ of another epoch (stale): replaced by the best epoch's.
    other = next(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit() and int(p.name) != best_step) \
        if len([p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]) > 1 else None
    info_file = workdir / "best" / "pthnet" / "metadata"
    info = json.loads(info_file.read_text())
    info["provenance"]["step"] = other if other is not None else best_step + 1
    info_file.write_text(json.dumps(info))
    train_and_evaluate(done_run[1], workdir)
    assert read_info(workdir / "best")["provenance"]["step"] == best_step


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_disk_full_while_saving_is_a_named_error_and_the_rerun_resumes(done_run, tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    workdir = _copy(done_run[0], tmp_path)
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    original = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        (Path(self.directory) / f"{step}.orbax-checkpoint-tmp-1").mkdir()  # what a failed save leaves
        raise ValueError(f"Error writing {self.directory}/{step}: [OSError {errno.ENOSPC}] No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    longer = tiny_config(done_run[1].data.data_dir, **{"train.epochs": 3, "train.keep_checkpoints": 1,
                                                       "optim.milestones": (1,)})
    with pytest.raises(TrainingError, match="No space left on device") as failed:
        train_and_evaluate(longer, workdir)
    assert str(workdir / "checkpoints" / "15") in str(failed.value) and "intact" in str(failed.value)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before  # nothing half-written
    monkeypatch.setattr(ocp.CheckpointManager, "save", original)
    assert train_and_evaluate(longer, workdir)["epochs"] == 3
    assert [r["epoch"] for r in json.loads((workdir / "history.json").read_text())] == [1, 2, 3]


@pytest.mark.slow  # uses the trained run (done_run): outside the quick check
def test_a_run_in_another_process_holds_the_workdir(done_run, tmp_path):
    """Two `pthnet train` processes on one workdir: the second is refused, naming the first."""
    import subprocess
    import sys
    import time

    workdir = _copy(done_run[0], tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", textwrap_dedent(f"""
        import time
        from pthnet_jax.workdir import WorkdirLock
        with WorkdirLock(__import__('pathlib').Path({str(workdir)!r})):
            print('locked', flush=True)
            time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirError, match=f"in use by process {holder.pid}"):
            train_and_evaluate(done_run[1], workdir)
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert train_and_evaluate(done_run[1], workdir)["epochs"] == 2  # its lock died with it


def textwrap_dedent(text):
    import textwrap

    return textwrap.dedent(text)


# ---- the train state in a step directory ---------------------------------------------------------

def _tiny_state(seed):
    """(model config, a train state of the tiny model with random params and a non-zero momentum at
    step 7, its shapes as the restore target)."""
    from pthnet_jax import steps
    from pthnet_jax.configs import tiny
    from pthnet_jax.optim import make_optimizer
    from pthnet_jax.train import model_config_from

    from train_helpers import random_params

    model_cfg = model_config_from(tiny.get_config(), 7)
    optimizer = make_optimizer(lr=0.1, momentum=0.9, weight_decay=1e-4, milestones=(2,), gamma=0.1,
                               steps_per_epoch=5)
    state = steps.create_train_state(random_params(model_cfg, seed), optimizer.transform)
    rng = np.random.default_rng(seed + 1)
    opt_state = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype) if x.ndim else x,
                             state.opt_state)
    state = state.replace(step=np.int32(7), opt_state=opt_state)
    return model_cfg, state, jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state)


def _assert_same_state(restored, expected):
    flat_r, tree_r = jax.tree.flatten(restored)
    flat_e, tree_e = jax.tree.flatten(expected)
    assert tree_r == tree_e
    for got, want in zip(flat_r, flat_e):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_step_directory_holds_each_array_once_and_restores_exactly(tmp_path):
    from pthnet_jax.run_checkpoints import RunState, TrainCheckpoints

    model_cfg, state, abstract = _tiny_state(0)
    run = RunState(epoch=1, history=[{"epoch": 1, "step": 7}])
    checkpoints = TrainCheckpoints(tmp_path / "run", keep=2)
    checkpoints.save(state, model_cfg, run)
    step_dir = tmp_path / "run" / "checkpoints" / "7"
    assert sorted(p.name for p in step_dir.iterdir() if p.is_dir()) == ["optimizer", "params", "pthnet"]
    restored, restored_run = checkpoints.restore(abstract)
    checkpoints.close()
    _assert_same_state(restored, state)
    assert restored_run.history == run.history and restored_run.epoch == 1


def test_step_directory_of_the_earlier_format_still_restores(tmp_path):
    """Step directories written before the `optimizer` item held the whole state in `train_state`."""
    import orbax.checkpoint as ocp

    from pthnet_jax.checkpoint import checkpoint_info
    from pthnet_jax.run_checkpoints import TrainCheckpoints

    model_cfg, state, abstract = _tiny_state(3)
    provenance = {"epoch": 1, "history": [{"epoch": 1, "step": 7}], "best": {}, "partial": {}}
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    with ocp.CheckpointManager(tmp_path / "run" / "checkpoints", options=options) as manager:
        manager.save(7, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params), train_state=ocp.args.StandardSave(state),
            pthnet=ocp.args.JsonSave(checkpoint_info(model_cfg, provenance))))
        manager.wait_until_finished()
    checkpoints = TrainCheckpoints(tmp_path / "run", keep=2)
    restored, run = checkpoints.restore(abstract)
    checkpoints.close()
    _assert_same_state(restored, state)
    assert run.epoch == 1 and run.history == provenance["history"]


def test_curves_are_redrawn_at_most_every_interval_and_always_at_the_end(tmp_path, monkeypatch):
    from pthnet_jax.run_checkpoints import RunState

    drawn = []

    def record_drawing(history, path, selected=None):
        drawn.append([r["epoch"] for r in history])
        path.write_bytes(b"png")

    monkeypatch.setattr(reporting, "plot_curves", record_drawing)
    record = {"train_loss": 1.0, "train_ce": 1.0, "train_accuracy": 50.0, "train_clips_per_s": 1.0, "lr": 0.1}
    run = RunState()
    logger = reporting.Logger(tmp_path, enabled=True, curves_every_s=3600)
    for epoch in (1, 2, 3):
        run.history.append({**record, "epoch": epoch, "step": epoch})
        logger.epoch(run.history[-1], run)
    assert drawn == [[1]]  # the first epoch draws; the next two fall inside the interval
    logger.close()
    assert drawn == [[1], [1, 2, 3]]  # closing draws what was pending

    # A kill after history.json but before the redraw: the resumed run's sync redraws.
    os.utime(tmp_path / "training_curves.png", ns=(1, 1))
    again = reporting.Logger(tmp_path, enabled=True)
    assert again.sync(run.history) == [] and drawn[-1] == [1, 2, 3] and len(drawn) == 3
    again.close()
    assert len(drawn) == 3  # nothing pending: nothing drawn twice

    # Drawing fails (a full disk): the run's end reports it; closing after an interruption does not.
    def full_disk(history, path, selected=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    for finish in (True, False):
        monkeypatch.setattr(reporting, "plot_curves", record_drawing)
        logger = reporting.Logger(tmp_path, enabled=True, curves_every_s=3600)
        logger.epoch(run.history[0], run)  # drawn
        monkeypatch.setattr(reporting, "plot_curves", full_disk)
        logger.epoch(run.history[1], run)  # pending
        if finish:
            with pytest.raises(OSError, match="No space"):
                logger.finish()
        logger.close()
