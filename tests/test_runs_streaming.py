"""Many runs in one program for a streaming family (LSTPNet: clips decoded on the host): K runs
whose host batches are stacked on a run axis == the same runs trained alone by `pthnet train`'s
streaming runner; a stopped program resumes every run to the uninterrupted program's files."""
import dataclasses
import json
import os
import signal

import jax
import numpy as np
import pytest

from pthnet_jax import run_stream, train
from pthnet_jax.checkpoint import load_checkpoint
from pthnet_jax.families.lstpnet.clip_import import import_clips
from pthnet_jax.families.lstpnet.clip_synth import write_synth_clips
from pthnet_jax.runs import RunSpec, train_runs

TIMING = ("train_clips_per_s", "epoch_seconds", "eval_seconds", "save_seconds")
SUBSET_TRAIN, SUBSET_TEST = [0, 2, 3, 5, 8, 9], [1, 2, 4, 5]


@pytest.fixture(scope="module")
def clip_sets(tmp_path_factory):
    """Two tiny clip datasets: 10 training clips (3 steps of 4) and 7 (2 steps)."""
    out = []
    for name, clips, tests, seed in (("a", 10, 6, 0), ("b", 7, 5, 1)):
        base = tmp_path_factory.mktemp(f"stream_runs_{name}")
        lists = write_synth_clips(base / "clips", clips=clips, test_clips=tests, width=16, height=12, seed=seed)
        out.append(import_clips(lists["train"], lists["test"], base / "clips", base / "data", benchmark="DFEW",
                                quiet=True))
    return out


def _config(data_dir, seed=0):
    from pthnet_jax.configs import lstpnet_tiny

    config = lstpnet_tiny.get_config()
    config.data.data_dir = str(data_dir)
    config.train.update(epochs=2, global_batch=4, seed=seed)
    config.optim.milestones = (1,)  # the second epoch at another learning rate: the traced schedule
    # A small step: this tiny model on these clips amplifies float rounding at the recipe's 0.01 (a run
    # alone whose weights move by 1e-7 differs by 0.4 after three steps), and a run's step inside the
    # K-run program rounds differently from its program alone (lax.map: ~4e-6 in the first epoch's
    # loss at 0.01; up to 3e-4 in a loss at 1e-4). At 1e-4 rounding stays small, and a wrong batch or
    # a padding step that moved anything (momentum: ~1e-4 per step, BatchNorm statistics) still shows.
    config.optim.lr = 1e-4
    return config


def _specs(base, clip_sets):
    a, b = clip_sets
    # Seeds 0 and 1, sizes of 3, 2 and 2 steps per epoch, a clip subset of one dataset.
    return [RunSpec("a_s0", base / "a_s0", str(a), seed=0),
            RunSpec("a_subset_s1", base / "a_subset_s1", str(a), seed=1, train_clips=SUBSET_TRAIN,
                    test_clips=SUBSET_TEST),
            RunSpec("b_s0", base / "b_s0", str(b), seed=0)]


def _final(workdir):
    last = sorted((workdir / "checkpoints").iterdir(), key=lambda p: int(p.name))[-1]
    _, variables, info, _ = load_checkpoint(last)
    return variables, info["provenance"]


def _history(workdir):
    return [{k: v for k, v in r.items() if k not in TIMING}
            for r in json.loads((workdir / "history.json").read_text())]


@pytest.fixture(scope="module")
def together(clip_sets, tmp_path_factory):
    specs = _specs(tmp_path_factory.mktemp("together"), clip_sets)
    return specs, train_runs(_config(clip_sets[0]), specs, parallel_runs=3)


def _alone(spec, workdir):
    """`pthnet train`'s trainer (one run, its own streaming runner); a clip subset replaces the run's
    clips as `RunSpec` names them (the trainer alone has no option for it)."""
    original = train._open_data

    def subset(config, task):
        data = original(config, task)
        if spec.train_clips is None:
            return data
        return dataclasses.replace(data, train_ids=np.asarray(SUBSET_TRAIN),
                                   eval_sets={"test": (data.eval_sets["test"][0], np.asarray(SUBSET_TEST))})

    train._open_data = subset
    try:
        return train.train_and_evaluate(_config(spec.data_dir, spec.seed), workdir)
    finally:
        train._open_data = original


@pytest.mark.slow  # trains three tiny LSTPNets together, then each alone
def test_streaming_runs_in_one_program_equal_the_runs_alone(together, tmp_path):
    specs, summaries = together
    differences = []
    for spec, summary in zip(specs, summaries):
        alone = _alone(spec, tmp_path / spec.name)
        variables, info = _final(spec.workdir)
        alone_variables, alone_info = _final(tmp_path / spec.name)
        assert info["step"] == alone_info["step"] == 2 * (3 if spec.name == "a_s0" else 2)
        differences.append(max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                               for x, y in zip(jax.tree.leaves(variables["params"]),
                                               jax.tree.leaves(alone_variables["params"]))))
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-2, atol=2e-4),
                     variables["batch_stats"], alone_variables["batch_stats"])
        assert summary["best"]["epoch"] == alone["best"]["epoch"]
        mine, theirs = _history(spec.workdir), _history(tmp_path / spec.name)
        assert [r["epoch"] for r in mine] == [1, 2] and len(theirs) == 2
        for a, b in zip(mine, theirs):
            assert a.keys() == b.keys()
            for key in a:
                if isinstance(a[key], dict):  # test metrics: the same predictions
                    assert a[key] == pytest.approx(b[key], abs=1e-9), key
                else:  # running sums of the steps' losses: rounding, amplified (see _config)
                    assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-6), key
    print("largest parameter difference, together vs alone:", differences)
    assert max(differences) < 1e-3


@pytest.mark.slow  # the program of the test above (compiled once), stopped mid-round and resumed
def test_a_stopped_streaming_program_resumes_every_run_exactly(together, clip_sets, tmp_path, monkeypatch):
    specs, _ = together
    resumed = _specs(tmp_path, clip_sets)
    calls = {"n": 0}
    step = run_stream.RoundStreams.__call__

    def step_then_signal(self, replicated, position):
        calls["n"] += 1
        if calls["n"] == 5:  # round 2, step 2 of 3: run a_s0 mid-epoch, the others after their first step
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, replicated, position)

    monkeypatch.setattr(run_stream.RoundStreams, "__call__", step_then_signal)
    assert train_runs(_config(clip_sets[0]), resumed, parallel_runs=3) is None
    assert [_final(s.workdir)[1]["step"] for s in resumed] == [5, 3, 3]
    monkeypatch.setattr(run_stream.RoundStreams, "__call__", step)
    assert train_runs(_config(clip_sets[0]), resumed, parallel_runs=3) is not None
    for spec, reference in zip(resumed, specs):
        variables, info = _final(spec.workdir)
        reference_variables, reference_info = _final(reference.workdir)
        jax.tree.map(np.testing.assert_array_equal, variables, reference_variables)
        assert info["best"]["epoch"] == reference_info["best"]["epoch"]
        mine, theirs = _history(spec.workdir), _history(reference.workdir)
        assert [r["test"] for r in mine] == [r["test"] for r in theirs]
        for a, b in zip(mine, theirs):  # a resumed epoch's running sums add up in another order
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        best, reference_best = load_checkpoint(spec.workdir / "best"), load_checkpoint(reference.workdir / "best")
        jax.tree.map(np.testing.assert_array_equal, best[1], reference_best[1])


def test_runs_of_one_program_need_one_data_mode_and_one_set_of_input_options(clip_sets, tmp_path):
    import contextlib

    from pthnet_jax import runs, timing

    config = _config(clip_sets[0])
    first, second = _specs(tmp_path, clip_sets)[:2]
    with contextlib.ExitStack() as stack:
        opened = [runs._open_run(config, s, stack, timing.RunClock(), {}) for s in (first, second)]
        runs._check_one_program(opened)  # two LSTPNet runs: both streaming, one clip reader
        assert run_stream.is_streaming(opened)
        opened[1].config.data.num_threads = 3
        with pytest.raises(train.TrainingError, match="runs a_s0 and a_subset_s1 cannot train in one program: "
                                                      "their input options differ"):
            runs._check_one_program(opened)
