"""Training end to end on the tiny config: outputs, resume after a stop, data parallelism, errors."""
import json
import os
import signal
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from pthnet_jax import load_model, parallel, reporting, steps
from pthnet_jax.checkpoint import load_checkpoint
from pthnet_jax.models.pthnet import ModelConfig, PTHNet, init_variables
from pthnet_jax.commands.train import parse_args
from pthnet_jax.epochs import check_finite
from pthnet_jax.train import TrainingError, train_and_evaluate

from train_helpers import random_batch, tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def datasets(tiny_datasets):
    return tiny_datasets


@pytest.fixture(scope="module")
def finished_run(datasets, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run") / "work"
    summary = train_and_evaluate(tiny_config(datasets[0], **{"train.epochs": 2}), workdir)
    return workdir, summary


def _final_params(workdir):
    config, variables, info, _ = load_checkpoint(sorted((workdir / "checkpoints").iterdir(),
                                                        key=lambda p: int(p.name))[-1])
    return variables["params"], info


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_training_writes_what_a_person_needs(finished_run):
    workdir, summary = finished_run
    for name in ("config.json", "environment.json", "history.json", "summary.json", "training_curves.png"):
        assert (workdir / name).is_file(), name
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["optim"]["lr"] == 0.005 and saved["train"]["epochs"] == 2
    history = json.loads((workdir / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2] and all("test" in r for r in history)
    assert summary["best"]["split"] == "test" and summary["model_selection"] == "test"
    # The best checkpoint is a model directory: load_model and the exporter accept it.
    model, variables = load_model(workdir / "best")
    assert model.config.n_in == 16 and model.config.num_classes == 7
    _, _, info, _ = load_checkpoint(workdir / "best")
    assert info["provenance"]["epoch"] == summary["best"]["epoch"]


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_trained_checkpoint_exports_to_pytorch(finished_run, tmp_path):
    pytest.importorskip("torch")
    import torch

    from pthnet_jax.convert import checkpoint_to_pth
    from pthnet_jax.benchmarks.torch_pthnet import TorchPTHNet

    workdir, _ = finished_run
    checkpoint_to_pth(workdir / "best", tmp_path / "best.pth")
    exported = torch.load(tmp_path / "best.pth", weights_only=True)
    model = torch.nn.DataParallel(TorchPTHNet(**load_model(workdir / "best")[0].config.to_dict()))
    model.load_state_dict(exported["state_dict"], strict=True)


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_streaming_mode_trains_like_resident_mode(datasets, finished_run, tmp_path):
    """Records read through grain, one pmapped step per host batch == on-device sampling in chunks."""
    reference_params, reference_info = _final_params(finished_run[0])
    workdir = tmp_path / "streaming"
    summary = train_and_evaluate(tiny_config(datasets[0], **{"train.epochs": 2, "data.mode": "streaming"}),
                                 workdir)
    params, info = _final_params(workdir)
    # Two different programs (steps in a scan vs one step per call) round differently: after 10 steps
    # parameters (~0.1 in size) differ by a few 1e-6; another window pick or clip order moves them far more.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, reference_params)
    for ours, theirs in zip(info["provenance"]["history"], reference_info["provenance"]["history"]):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)
        assert ours["test"]["WAR"] == pytest.approx(theirs["test"]["WAR"])
    assert summary["best"]["epoch"] == finished_run[1]["best"]["epoch"]


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_stop_after_an_epoch_and_resume_matches_uninterrupted(datasets, finished_run, tmp_path):
    reference_params, reference_info = _final_params(finished_run[0])
    workdir = tmp_path / "resumed"
    train_and_evaluate(tiny_config(datasets[0], **{"train.epochs": 1}), workdir)  # "killed" after epoch 1
    train_and_evaluate(tiny_config(datasets[0], **{"train.epochs": 2}), workdir)  # the same run, restarted
    params, info = _final_params(workdir)
    jax.tree.map(np.testing.assert_array_equal, params, reference_params)
    assert info["provenance"]["history"][-1]["test"] == reference_info["provenance"]["history"][-1]["test"]


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_and_resumes_exactly(datasets, finished_run, tmp_path, monkeypatch):
    reference_params, _ = _final_params(finished_run[0])
    workdir = tmp_path / "sigterm"
    calls = {"n": 0}
    original_update = reporting.EpochProgress.update

    def update_then_signal(self, metrics):
        original_update(self, metrics)
        calls["n"] += 1
        if calls["n"] == 4:  # epoch 2's first chunk, read while its second one runs
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(reporting.EpochProgress, "update", update_then_signal)
    # 5 steps per epoch in chunks of 2: [0, 2) [2, 4) [4, 5) | [5, 7) [7, 9) -> stops after step 9.
    overrides = {"train.epochs": 2, "train.steps_per_dispatch": 2}
    result = train_and_evaluate(tiny_config(datasets[0], **overrides), workdir)
    assert result == {"interrupted": True, "step": 9}
    monkeypatch.setattr(reporting.EpochProgress, "update", original_update)
    train_and_evaluate(tiny_config(datasets[0], **overrides), workdir)
    params, _ = _final_params(workdir)
    jax.tree.map(np.testing.assert_array_equal, params, reference_params)


def _run_step(config, batch, devices):
    model = PTHNet(ModelConfig.from_dict({**config.model.to_dict(), "num_classes": 7}))
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.05, momentum=0.9))
    state = steps.create_train_state(init_variables(model, jax.random.key(0))["params"], tx)
    count = len(devices)
    step = jax.pmap(lambda s, b: steps.train_step(s, b, model=model, optimizer=tx, seed=0),
                    axis_name=parallel.AXIS, devices=devices)
    stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (count, *np.shape(x))), state)
    per_device = jax.tree.map(lambda x: x.reshape(count, x.shape[0] // count, *x.shape[1:]), batch)
    for _ in range(2):
        stacked, metrics = step(stacked, per_device)
    return jax.tree.map(lambda x: np.asarray(x[0]), stacked.params), jax.tree.map(lambda x: np.asarray(x[0]), metrics)


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_four_devices_with_padding_equal_one_device_on_the_real_clips(datasets):
    """4 devices on a global batch of 16 rows of which 13 are real == 1 device on those 13 clips.

    Covers data parallelism (gradients summed over devices) and the padded partial last batch. Drop
    path is off because its draws are per device; the tests' shallow trunk and the H level only (the
    loss is then CE(H)) keep the two compiles short.
    """
    config = tiny_config(datasets[0], **{"model.path_pdrop": 0.0})
    batch = random_batch(config, 16, seed=2, valid=np.arange(16) < 13)
    batch = {**batch, "features": {"H": batch["features"]["H"]}, "masks": {"H": batch["masks"]["H"]}}
    four, metrics_four = _run_step(config, batch, jax.local_devices()[:4])
    alone = jax.tree.map(lambda x: x[:13], {**batch, "valid": np.ones(16, bool)})
    one, metrics_one = _run_step(config, alone, jax.local_devices()[:1])
    assert metrics_four["count"] == metrics_one["count"] == 13
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), four, one)


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_validation_split_selection(datasets, tmp_path):
    summary = train_and_evaluate(tiny_config(datasets[0], **{"train.epochs": 1, "train.select_on": "val"}),
                                 tmp_path / "val")
    assert summary["best"]["split"] == "val" and "val" in summary["last"] and "test" in summary["last"]


def test_clear_errors(datasets, tmp_path, capsys):
    code = parse_args(["--config", str(REPO / "configs" / "tiny.py"), "--workdir", str(tmp_path),
                       "--config.optim.lrr=0.1"])
    assert code == 2 and "lrr" in capsys.readouterr().err
    config, workdir = parse_args(["--config", str(REPO / "configs" / "tiny.py"), "--workdir", str(tmp_path / "w"),
                                  "--data", str(datasets[0]), "--config.optim.milestones=(3,4)"])
    assert tuple(config.optim.milestones) == (3, 4) and config.data.data_dir == str(datasets[0])
    with pytest.raises(TrainingError, match="does not exist"):
        train_and_evaluate(tiny_config(tmp_path / "missing"), tmp_path / "a")
    with pytest.raises(TrainingError, match="num_classes=7"):
        train_and_evaluate(tiny_config(datasets[0], **{"model.num_classes": 5}), tmp_path / "b")
    with pytest.raises(TrainingError, match="global_batch=6"):
        train_and_evaluate(tiny_config(datasets[0], **{"train.global_batch": 6}), tmp_path / "c")
    with pytest.raises(TrainingError, match="at step 12"):
        check_finite({"total": np.array([1.0, np.nan]), "grad_norm": np.ones(2)}, 12)


def test_steps_per_call_never_exceed_an_epoch():
    from pthnet_jax.train import steps_per_dispatch

    assert steps_per_dispatch(0) == 32 and steps_per_dispatch(4) == 4
    # 480 clips in batches of 32: 15 steps; a call of 32 would skip 17 padded steps, each ~a step's cost
    assert steps_per_dispatch(0, 15) == 15 and steps_per_dispatch(32, 15) == 15
    assert steps_per_dispatch(0, 971) == 32 and steps_per_dispatch(4, 5) == 4
