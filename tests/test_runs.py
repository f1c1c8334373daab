"""Many runs in one program (`pthnet_jax.runs`): K runs vmapped == the same runs trained alone;
the run axis' plans, stores and schedule; a killed multi-run program resumes every run exactly."""
import json

import numpy as np
import pytest

from pthnet_jax import run_stack
from pthnet_jax.checkpoint import load_checkpoint
from pthnet_jax.runs import RunSpec, train_runs
from pthnet_jax.train import train_and_evaluate

from train_helpers import FAST_ARCH_FLAG, make_dataset, tiny_config

TIMING = ("train_clips_per_s", "epoch_seconds", "eval_seconds", "save_seconds")


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    """A second, smaller dataset (28 train clips: 4 steps per epoch against 5)."""
    return make_dataset(tmp_path_factory.mktemp("small-data"), clips=28, test_clips=9)[0]


def _specs(base, tiny_datasets, small_dataset):
    forward, backward = tiny_datasets
    # Two seeds and two sizes (5 and 4 steps per epoch); alone, the runs of one seed and size share a
    # compiled program (the seed is static there), so the comparison compiles two programs, not three.
    return [RunSpec("fwd_s0", base / "fwd_s0", str(forward), seed=0),
            RunSpec("small_s1", base / "small_s1", str(small_dataset), seed=1),
            RunSpec("rv_s0", base / "rv_s0", str(backward), seed=0)]


def _final(workdir):
    last = sorted((workdir / "checkpoints").iterdir(), key=lambda p: int(p.name))[-1]
    _, variables, info, _ = load_checkpoint(last)
    return variables["params"], info["provenance"]


def _history(workdir):
    return [{k: v for k, v in r.items() if k not in TIMING}
            for r in json.loads((workdir / "history.json").read_text())]


def _largest_difference(a, b):
    import jax

    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def together(tiny_datasets, small_dataset, tmp_path_factory):
    """The three runs trained in one program."""
    config = tiny_config(tiny_datasets[0], **{"train.epochs": 2})
    specs = _specs(tmp_path_factory.mktemp("together"), tiny_datasets, small_dataset)
    return specs, train_runs(config, specs, parallel_runs=3)


@pytest.fixture(scope="module")
def alone_runs(tiny_datasets, small_dataset, tmp_path_factory):
    alone = []
    for spec in _specs(tmp_path_factory.mktemp("alone"), tiny_datasets, small_dataset):
        run_cfg = tiny_config(spec.data_dir, **{"train.epochs": 2, "train.seed": spec.seed})
        alone.append((spec, train_and_evaluate(run_cfg, spec.workdir)))
    return alone


@pytest.fixture(scope="module")
def together_vmapped(tiny_datasets, small_dataset, tmp_path_factory):
    """The three runs in one program, batched by one vmap (the accelerators' default)."""
    config = tiny_config(tiny_datasets[0], **{"train.epochs": 2, "train.runs_vmap_width": 0})
    specs = _specs(tmp_path_factory.mktemp("vmapped"), tiny_datasets, small_dataset)
    return specs, train_runs(config, specs, parallel_runs=3)


@pytest.mark.slow  # trains a model
@pytest.mark.parametrize("width", ["auto: one run after another (CPU)", "0: one vmap"])
def test_three_runs_in_one_program_equal_the_runs_alone(width, request, alone_runs):
    specs, summaries = request.getfixturevalue("together" if width.startswith("auto") else "together_vmapped")
    alone = alone_runs
    differences = []
    for spec, summary, (alone_spec, alone_summary) in zip(specs, summaries, alone):
        params, info = _final(spec.workdir)
        alone_params, alone_info = _final(alone_spec.workdir)
        differences.append(_largest_difference(params, alone_params))
        assert info["step"] == alone_info["step"]
        assert summary["best"]["epoch"] == alone_summary["best"]["epoch"]
        together_h, alone_h = _history(spec.workdir), _history(alone_spec.workdir)
        assert [r["epoch"] for r in together_h] == [1, 2]
        for a, b in zip(together_h, alone_h):
            assert a.keys() == b.keys()
            for key in a:
                if isinstance(a[key], dict):
                    assert a[key] == pytest.approx(b[key], abs=1e-9), key
                else:
                    assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    print(f"largest parameter difference, together ({width}) vs alone:", differences)
    if width.startswith("auto"):  # the compiled body is each run's own step: the same bits
        assert max(differences) == 0.0
    assert max(differences) < 1e-5


def test_round_plan_pads_in_front_so_every_run_ends_its_epoch_together():
    plan_a = (np.arange(10, dtype=np.int32).reshape(5, 2), np.ones((5, 2), bool))
    plan_b = (np.arange(6, dtype=np.int32).reshape(3, 2) + 100, np.ones((3, 2), bool))
    indices, valid, starts = run_stack.round_plan([plan_a, plan_b, None], [1, 0, 0])
    assert indices.shape == (3, 4, 2) and starts == [0, 1, 4]
    np.testing.assert_array_equal(indices[0], plan_a[0][1:])
    assert not valid[1, 0].any() and valid[1, 1:].all()
    np.testing.assert_array_equal(indices[1, 1:], plan_b[0])
    assert not valid[2].any()


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_traced_schedule_equals_the_optimizer_of_a_run_alone(name):
    """SGD (PTH-Net, LSTPNet) and Adam (HTNet): the traced optimiser of the run axis updates as the
    run's own optimiser does alone, bit for bit, across the milestones."""
    import jax
    import jax.numpy as jnp

    from pthnet_jax.optim import make_optimizer

    params = {"w": jnp.linspace(-1.0, 1.0, 7)}
    grads = {"w": jnp.linspace(0.3, -0.2, 7)}
    extra = dict(name=name, b1=0.8, b2=0.99, eps=1e-7)
    for spe in (3, 5):
        alone = make_optimizer(lr=0.1, momentum=0.9, weight_decay=1e-3, milestones=(1, 2), gamma=0.3,
                               steps_per_epoch=spe, **extra).transform
        state_a = alone.init(params)

        @jax.jit
        def traced_update(state, steps_per_epoch):
            return run_stack.traced_optimizer(0.1, 0.9, 1e-3, (1, 2), 0.3, steps_per_epoch,
                                              **extra).update(grads, state, params)

        state_t = state_a
        for _ in range(3 * spe):
            up_a, state_a = alone.update(grads, state_a, params)
            up_t, state_t = traced_update(state_t, jnp.int32(spe))
            np.testing.assert_array_equal(np.asarray(up_a["w"]), np.asarray(up_t["w"]))


def test_stacked_stores_pad_to_common_bucketed_sizes():
    from pthnet_jax.data.sampling import ResidentFeatures

    def store(clips, rows):
        return ResidentFeatures({"H": np.ones((rows, 2), np.float32)}, {"H": np.zeros(clips, np.int32)},
                                {"H": np.ones(clips, np.int32)}, np.ones(clips, np.int32))

    stacked = run_stack.stacked_store([store(3, 20), store(5, 17)])
    assert stacked.windows["H"].shape == (2, 20, 2) and stacked.labels.shape == (2, 5)
    assert stacked.windows["H"][1, 17:].sum() == 0 and stacked.labels[0, 3:].sum() == 0


def test_groups_are_even_and_bad_subsets_are_named(tiny_datasets, tmp_path):
    from pthnet_jax.runs import _groups
    from pthnet_jax.train import TrainingError

    assert [len(g) for g in _groups(list(range(10)), 4)] == [3, 4, 3]
    assert [len(g) for g in _groups(list(range(10)), 10)] == [10]
    assert [len(g) for g in _groups(list(range(3)), 1)] == [1, 1, 1]
    spec = RunSpec("bad", tmp_path / "bad", str(tiny_datasets[0]), train_clips=[0, 1, 99])
    with pytest.raises(TrainingError, match="bad: train_clips must be distinct clip indices in 0..39"):
        train_runs(tiny_config(tiny_datasets[0]), [spec, spec], parallel_runs=2)


@pytest.mark.slow  # trains (the program of the test above, from the compilation cache)
def test_a_stopped_multi_run_program_resumes_every_run_exactly(together, tiny_datasets, small_dataset,
                                                               tmp_path, monkeypatch):
    import os
    import signal

    import jax

    specs, _ = together
    config = tiny_config(tiny_datasets[0], **{"train.epochs": 2})
    resumed = _specs(tmp_path, tiny_datasets, small_dataset)
    calls = {"n": 0}
    original_chunk = run_stack.chunk

    def chunk_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2's first call (epoch 1 took two: 5 steps in calls of 4)
            os.kill(os.getpid(), signal.SIGTERM)
        return original_chunk(*args, **kwargs)

    monkeypatch.setattr(run_stack, "chunk", chunk_then_signal)
    assert train_runs(config, resumed, parallel_runs=3) is None
    # Stopped mid-epoch: every run saved its steps of epoch 2 (4 of 5, 3 of 4, 4 of 5).
    assert [_final(s.workdir)[1]["step"] for s in resumed] == [9, 7, 9]
    monkeypatch.setattr(run_stack, "chunk", original_chunk)
    assert train_runs(config, resumed, parallel_runs=3) is not None
    for spec, reference in zip(resumed, specs):
        params, info = _final(spec.workdir)
        reference_params, reference_info = _final(reference.workdir)
        jax.tree.map(np.testing.assert_array_equal, params, reference_params)
        assert info["best"]["epoch"] == reference_info["best"]["epoch"]
        assert [r["test"] for r in _history(spec.workdir)] == [r["test"] for r in _history(reference.workdir)]
        for mine, theirs in zip(_history(spec.workdir), _history(reference.workdir)):
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-6)
        best, reference_best = load_checkpoint(spec.workdir / "best"), load_checkpoint(reference.workdir / "best")
        jax.tree.map(np.testing.assert_array_equal, best[1], reference_best[1])


@pytest.mark.slow  # trains three runs in one program through the command
def test_folds_with_seeds_in_one_program(tmp_path, capsys):
    from pthnet_jax.commands.folds import main
    from pthnet_jax.data.importer import import_features
    from pthnet_jax.data.synth import synthesize

    root = synthesize(tmp_path / "root", "DFEW", clips=40, test_clips=13, feature_dim=16, quiet=True, signal=3.0,
                      folds=[1])
    import_features("DFEW", root, tmp_path / "dfew_1", fold=1, feature_dim=16, quiet=True)
    argv = ["--config", "tiny", "--config.benchmark=DFEW", "--config.train.epochs=1", "--config.optim.milestones=(1,)",
            FAST_ARCH_FLAG,
            "--data", str(tmp_path / "dfew_{fold}"), "--workdir", str(tmp_path / "runs"), "--folds", "1",
            "--seeds", "3", "--parallel", "3"]
    assert main(argv) == 0
    result = json.loads((tmp_path / "runs" / "folds.json").read_text())
    assert result["seeds"] == [0, 1, 2] and result["num_runs"] == 3
    assert sorted(result["runs"]) == ["1/seed0", "1/seed1", "1/seed2"]
    wars = [result["runs"][f"1/seed{s}"]["WAR"] for s in range(3)]
    assert result["mean"]["WAR"] == pytest.approx(np.mean(wars)) and result["std"]["WAR"] == pytest.approx(np.std(wars))
    for seed in range(3):  # each run wrote `pthnet train`'s workdir, with its own seed
        workdir = tmp_path / "runs" / f"fold_1_seed{seed}"
        assert json.loads((workdir / "config.json").read_text())["train"]["seed"] == seed
        assert (workdir / "best").is_dir() and (workdir / "summary.json").is_file()
    assert "3 runs, 3 at a time in one program" in capsys.readouterr().out
    # Run again: every run is finished, nothing trains, the same summary comes back.
    assert main(argv) == 0
    assert json.loads((tmp_path / "runs" / "folds.json").read_text())["runs"] == result["runs"]


def test_leave_one_group_out_runs_are_clip_subsets_of_one_dataset(tmp_path):
    from pthnet_jax.protocols import leave_one_group_out

    groups = ["s1", "s2", "s1", "s3", "s2", "s2"]
    specs = leave_one_group_out("data/casme2", groups, tmp_path, seed=4)
    assert [s.name for s in specs] == ["subject_s1", "subject_s2", "subject_s3"]
    for spec, name in zip(specs, ["s1", "s2", "s3"]):
        expected_test = [i for i, g in enumerate(groups) if g == name]
        assert list(spec.test_clips) == expected_test and spec.test_split == "train" and spec.seed == 4
        assert sorted([*spec.train_clips, *spec.test_clips]) == list(range(len(groups)))
        assert spec.workdir == tmp_path / f"subject_{name}" and spec.has_subsets
    with pytest.raises(ValueError, match="at least 2 groups"):
        leave_one_group_out("d", ["a", "a"], tmp_path)


def test_vmap_width_auto_is_a_loop_on_cpus_and_one_vmap_elsewhere():
    from pthnet_jax.config_check import config_problems

    assert run_stack.resolve_vmap_width(-1, "cpu") == 1 and run_stack.resolve_vmap_width(-1, "gpu") == 0
    assert run_stack.resolve_vmap_width(4, "cpu") == 4 and run_stack.resolve_vmap_width(0, "cpu") == 0
    bad = tiny_config("data", **{"train.runs_vmap_width": -2})
    assert any("train.runs_vmap_width" in p and ">= -1" in p for p in config_problems(bad))
