"""The family seam (`pthnet_jax.task`): the registry, old configs/workdirs/checkpoints meaning PTH-Net,
and a test-only family (a BatchNorm MLP, `seam_family.py`) trained, checkpointed, resumed and
evaluated through the generic loop, with both ways of combining the devices' BatchNorm statistics."""
import json

import jax
import numpy as np
import pytest

import seam_family
from pthnet_jax import task as task_module


def test_unknown_family_is_refused_naming_the_known_ones():
    with pytest.raises(task_module.UnknownFamily, match="'nope'.*htnet, lstpnet, pthnet"):
        task_module.get_task("nope")
    assert task_module.get_task().family == "pthnet" and task_module.get_task("pthnet").terms[0] == "total"


def test_config_checks_are_the_family_s(tmp_path, monkeypatch):
    from pthnet_jax.config_check import config_problems
    from pthnet_jax.configs import tiny

    config = tiny.get_config()
    config.family = "nope"
    assert any("config.family must be one of" in p for p in config_problems(config))
    seam_family.register(monkeypatch)
    config = seam_family.config(tmp_path, **{"train.select_metric": "weighted_f1", "model.hidden": 0})
    problems = config_problems(config)
    assert any("select_metric must be one of 'UAR', 'WAR'" in p for p in problems), problems
    assert any("config.model.hidden must be >= 1" in p for p in problems), problems
    config = seam_family.config(tmp_path, **{"train.model_state_sync": "max"})
    assert any("model_state_sync" in p for p in config_problems(config))
    assert config_problems(seam_family.config(tmp_path)) == []


def test_a_workdir_saved_before_families_resumes():
    """Its saved config has no `family` (nor `train.model_state_sync`): that means PTH-Net's defaults."""
    from pthnet_jax.configs import tiny
    from pthnet_jax.workdir import identity_differences, run_identity

    new = run_identity(tiny.get_config(), {"benchmark": "FERv39k"})
    old = json.loads(json.dumps(new))
    del old["config"]["family"], old["config"]["train"]["model_state_sync"]
    assert identity_differences(old, new) == []
    old["config"]["family"] = "lstpnet"
    assert identity_differences(old, new) == ["config.family: 'lstpnet' in the workdir, 'pthnet' now"]


def test_a_checkpoint_without_family_loads_as_pthnet(tmp_path):
    from pthnet_jax.checkpoint import load_checkpoint, read_info, save_checkpoint
    from pthnet_jax.configs import tiny
    from pthnet_jax.train import model_config_from
    from train_helpers import random_params

    model_config = model_config_from(tiny.get_config(), 7)
    params = random_params(model_config)
    path = save_checkpoint(tmp_path / "ckpt", params, model_config, {"epoch": 1})
    info_file = path / "pthnet" / "metadata"
    info = json.loads(info_file.read_text())
    assert info["family"] == "pthnet" and not (path / "model_state").exists()
    del info["family"]
    info_file.write_text(json.dumps(info))
    config, variables, info, _ = load_checkpoint(path)
    assert read_info(path)["family"] == "pthnet" and config == model_config and set(variables) == {"params"}
    jax.tree.map(np.testing.assert_array_equal, variables["params"], params)


# ---- BatchNorm statistics over devices ---------------------------------------------------------

def _bn_step(sync: str):
    """One pmapped training step of the MLP on 4 devices; returns (initial variables, batch, new state)."""
    from pthnet_jax import parallel, steps
    from pthnet_jax.optim import make_optimizer

    task = seam_family.TASK
    model = task.model(seam_family.MLPConfig(dropout=0.0))
    variables = task.init(model, jax.random.key(1))
    optimizer = make_optimizer(lr=0.1, momentum=0.9, weight_decay=0.0, milestones=(1,), gamma=0.1,
                               steps_per_epoch=1).transform
    state = steps.state_from_variables(variables, optimizer)
    rng = np.random.default_rng(5)
    # Each device's rows come from a different distribution: the devices' batch means differ.
    features = (rng.normal(size=(16, 6)) + np.repeat(np.arange(4), 4)[:, None] * 2).astype(np.float32)
    batch = {"features": features, "labels": rng.integers(0, 3, 16).astype(np.int32), "valid": np.ones(16, bool)}
    step = steps.pmapped(steps.train_step, task=task, model=model, optimizer=optimizer, seed=0, sync=sync)
    new, _ = step(parallel.replicate(state), parallel.split_for_devices(batch))
    return variables, features, new


@pytest.mark.parametrize("sync", ["first", "pmean"])
def test_batch_statistics_are_combined_over_devices_as_chosen(sync):
    variables, features, new = _bn_step(sync)
    kernel, bias = (np.asarray(variables["params"]["hidden"][k]) for k in ("kernel", "bias"))
    hidden = (features @ kernel + bias).reshape(4, 4, -1)  # (devices, rows, hidden), computed independently
    means, variances = hidden.mean(1), hidden.var(1)
    old_mean, old_var = (np.asarray(variables["batch_stats"]["norm"][k]) for k in ("mean", "var"))
    pick = (lambda x: x[0]) if sync == "first" else (lambda x: x.mean(0))
    expected_mean = 0.9 * old_mean + 0.1 * pick(means)
    expected_var = 0.9 * old_var + 0.1 * pick(variances)
    assert not np.allclose(means[0], means.mean(0), atol=1e-2)  # the two modes can be told apart
    stats = new.model_state["batch_stats"]["norm"]
    for device in range(4):  # every device holds the same statistics
        np.testing.assert_allclose(np.asarray(stats["mean"][device]), expected_mean, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(stats["var"][device]), expected_var, rtol=1e-4, atol=1e-4)


# ---- the whole loop ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def seam_data(tmp_path_factory):
    return seam_family.write_dataset(tmp_path_factory.mktemp("seam") / "data")


def _last(workdir):
    from pthnet_jax.checkpoint import load_checkpoint

    step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    return load_checkpoint(workdir / "checkpoints" / str(step))


@pytest.mark.slow  # trains (a tiny MLP) five times
def test_a_family_with_batch_norm_trains_resumes_and_evaluates(seam_data, tmp_path, monkeypatch):
    from pthnet_jax import load_model
    from pthnet_jax.evaluation import evaluate
    from pthnet_jax.train import train_and_evaluate

    seam_family.register(monkeypatch)
    summary = train_and_evaluate(seam_family.config(seam_data), tmp_path / "whole")
    assert summary["best"]["metric"] == "WAR" and set(summary["last"]["test"]) == {"UAR", "WAR"}
    config, variables, info, _ = _last(tmp_path / "whole")
    assert info["family"] == seam_family.FAMILY and set(variables) == {"params", "batch_stats"}
    step_dir = tmp_path / "whole" / "checkpoints" / str(info["provenance"]["step"])
    assert (step_dir / "model_state").is_dir() and (tmp_path / "whole" / "best" / "model_state").is_dir()
    # The statistics moved away from their initial values (zeros and ones): they were trained and saved.
    assert np.abs(np.asarray(variables["batch_stats"]["norm"]["mean"])).max() > 1e-3

    # Stopped after one epoch, resumed for the second: the same params and statistics.
    train_and_evaluate(seam_family.config(seam_data, **{"train.epochs": 1}), tmp_path / "resumed")
    train_and_evaluate(seam_family.config(seam_data), tmp_path / "resumed")
    _, resumed, _, _ = _last(tmp_path / "resumed")
    jax.tree.map(np.testing.assert_array_equal, resumed, variables)
    # Streaming batches from the host give what sampling on the devices gives.
    train_and_evaluate(seam_family.config(seam_data, **{"data.mode": "streaming"}), tmp_path / "streamed")
    _, streamed, _, _ = _last(tmp_path / "streamed")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), streamed, variables)
    # The other way of combining the statistics gives other statistics.
    train_and_evaluate(seam_family.config(seam_data, **{"train.model_state_sync": "pmean"}), tmp_path / "pmean")
    _, pmean, _, _ = _last(tmp_path / "pmean")
    assert not np.allclose(pmean["batch_stats"]["norm"]["mean"], variables["batch_stats"]["norm"]["mean"])

    # load_model dispatches on the checkpoint's family; evaluation uses the saved statistics.
    model, best = load_model(tmp_path / "whole")
    assert isinstance(model, seam_family.MLP)
    result, arrays = evaluate(tmp_path / "whole", seam_data, "test")
    split = seam_family.TASK.open(seam_data, "test")
    norm, params = best["batch_stats"]["norm"], best["params"]
    hidden = split.features @ np.asarray(params["hidden"]["kernel"]) + np.asarray(params["hidden"]["bias"])
    hidden = (hidden - norm["mean"]) / np.sqrt(norm["var"] + 1e-5) * params["norm"]["scale"] + params["norm"]["bias"]
    logits = np.maximum(hidden, 0) @ np.asarray(params["head"]["kernel"]) + np.asarray(params["head"]["bias"])
    np.testing.assert_allclose(arrays["logits"], logits, rtol=1e-4, atol=1e-4)
    assert result["WAR"] == pytest.approx(100 * np.mean(logits.argmax(1) == split.labels))
    assert result["class_names"] == seam_family.CLASSES
    with pytest.raises(ValueError, match="defines no forward/backward fusion"):
        evaluate(tmp_path / "whole", seam_data, "test", tmp_path / "pmean", seam_data)


def test_evaluation_names_the_checkpoint_s_classes_and_refuses_others(tmp_path):
    from types import SimpleNamespace

    from pthnet_jax.checkpoint import save_checkpoint
    from pthnet_jax.configs import tiny
    from pthnet_jax.evaluation import DataMismatch, checkpoint_class_names, finish_result
    from pthnet_jax.train import model_config_from
    from train_helpers import random_params

    model_config = model_config_from(tiny.get_config(), 3)
    names = ["calm", "glad", "cross"]
    path = save_checkpoint(tmp_path / "ckpt", random_params(model_config), model_config,
                           {"dataset": {"class_names": names}})
    assert checkpoint_class_names(path) == names and checkpoint_class_names(tmp_path / "x.pth") is None
    evaluated = SimpleNamespace(class_names=names)
    result = finish_result({}, {"split": evaluated}, path, "test", {})
    assert result["class_names"] == names
    with pytest.raises(DataMismatch, match="trained on the classes"):
        finish_result({}, {"split": SimpleNamespace(class_names=names[::-1])}, path, "test", {})


def test_convert_asks_each_family_whose_keys_a_file_holds(tmp_path, monkeypatch, capsys):
    import torch

    from pthnet_jax.convert.cli import detect_family, main as convert_main

    seam_family.register(monkeypatch)
    source = tmp_path / "mlp.pth"
    torch.save({k: torch.zeros(2) for k in ("hidden.weight", "norm.running_mean", "head.weight")}, source)
    assert detect_family(source) == seam_family.FAMILY
    assert convert_main([str(source), str(tmp_path / "out")]) == 2
    assert "holds a Seam MLP checkpoint, which `pthnet convert` cannot import yet" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
