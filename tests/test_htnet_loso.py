"""HTNet through the harness: the Task, Adam, the configs, and `pthnet loso` (a run per subject)."""
from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from pthnet_jax.families.htnet.dataset import import_checkout, write_synthetic

    root = tmp_path_factory.mktemp("htnet")
    checkout = write_synthetic(root / "checkout", subjects=3, per_subject=6)
    return import_checkout(checkout, root / "data", quiet=True)


def test_open_lists_samples_in_the_original_batch_order(dataset):
    from pthnet_jax.families.htnet.dataset import load
    from pthnet_jax.families.htnet.task import TASK

    split = TASK.open(dataset, "samples")
    raw = load(dataset)
    expected = sorted(range(len(raw["sample"])), key=lambda i: (int(raw["label"][i]), f"{raw['sample'][i]} .png"))
    assert split.clip_ids == [str(raw["sample"][i]) for i in expected]
    np.testing.assert_array_equal(split.labels, raw["label"][expected])
    np.testing.assert_array_equal(split.groups, raw["subject"][expected])
    np.testing.assert_array_equal(split.mosaics, raw["mosaic"][expected].astype(np.float32))
    assert split.mosaics.dtype == np.float32 and TASK.choose_mode(split, "auto") == "resident"
    with pytest.raises(KeyError, match="one split 'samples'"):
        TASK.open(dataset, "train")


def test_sample_is_a_plain_gather_and_the_loss_is_cross_entropy(dataset):
    import jax
    import jax.numpy as jnp

    from pthnet_jax import parallel
    from pthnet_jax.families.htnet.task import TASK

    split = TASK.open(dataset, "samples")
    store = parallel.unreplicate(TASK.store(split, train=True))
    indices, valid = jnp.array([5, 0, 17, 5]), jnp.array([True, True, True, False])
    batch = TASK.sample(store, indices, valid, seed=0, epoch=3, train=True, options=())
    np.testing.assert_array_equal(batch["images"], split.mosaics[[5, 0, 17, 5]])
    np.testing.assert_array_equal(batch["labels"], split.labels[[5, 0, 17, 5]])
    class Linear:  # a stand-in model: the loss is what is checked, not HTNet (tested elsewhere)
        def apply(self, variables, images, deterministic=True, rngs=None):
            assert deterministic is False and "dropout" in rngs
            return images.reshape(len(images), -1)[:, :3] / 100.0 + variables["params"]["bias"]

    variables = {"params": {"bias": jnp.array([0.1, -0.2, 0.3])}}
    terms, logits, updates = TASK.loss(Linear(), variables, batch, jax.random.key(1))
    assert set(terms) == set(TASK.terms) and updates == {}
    shifted = np.asarray(logits) - np.asarray(logits).max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    expected = -log_probs[np.arange(4), np.asarray(batch["labels"])]
    np.testing.assert_allclose(terms["ce"], expected, rtol=1e-5, atol=1e-6)


def test_adam_matches_torch_formula():
    import optax

    from pthnet_jax.optim import make_optimizer

    opt = make_optimizer(lr=0.1, momentum=0.0, weight_decay=0.0, milestones=(), gamma=1.0, steps_per_epoch=2,
                         name="adam", b1=0.9, b2=0.99, eps=1e-3)
    params = np.array([1.0, -2.0, 0.5])
    grads = [np.array([0.3, -1.0, 2.0]), np.array([-0.5, 0.1, 0.0]), np.array([1.0, 1.0, -1.0])]
    state, p = opt.transform.init(params), params.copy()
    m = v = np.zeros(3)
    for t, g in enumerate(grads, 1):  # torch.optim.Adam: eps added to sqrt of the bias-corrected v
        m, v = 0.9 * m + 0.1 * g, 0.99 * v + 0.01 * g * g
        p = p - 0.1 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.99 ** t)) + 1e-3)
        updates, state = opt.transform.update(g, state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params, p, rtol=1e-5)
    with pytest.raises(ValueError, match="'sgd' or 'adam'"):
        make_optimizer(lr=0.1, momentum=0.0, weight_decay=0.0, milestones=(), gamma=1.0, steps_per_epoch=1,
                       name="rmsprop")


def test_composite_config_is_the_released_recipe():
    from pthnet_jax.config_check import config_problems
    from pthnet_jax.configs import htnet_composite
    from pthnet_jax.families.htnet.model import count_params
    from pthnet_jax.families.htnet.task import TASK

    config = htnet_composite.get_config()
    assert config_problems(config) == []
    assert (config.optim.name, config.optim.lr, config.optim.weight_decay, config.train.global_batch,
            config.train.epochs, config.train.shuffle) == ("adam", 5e-5, 0.0, 256, 800, False)
    shapes = TASK.abstract_variables(TASK.model_config(config.model.to_dict(), 3))
    assert count_params(shapes["params"]) > 10_000_000  # the released model (eval_shape only)


def test_loso_refuses_another_family_and_a_missing_run(dataset, tmp_path):
    from pthnet_jax.configs import default, htnet_tiny
    from pthnet_jax.families.htnet.loso import pool, subject_runs

    with pytest.raises(ValueError, match="family is 'pthnet'"):
        subject_runs(default.get_config(), str(dataset), tmp_path)
    split, specs = subject_runs(htnet_tiny.get_config(), str(dataset), tmp_path)
    assert [s.name for s in specs] == ["subject_s00", "subject_s01", "subject_s02"]
    for spec in specs:  # every sample is held out exactly once, by its own subject's run
        assert set(split.groups[spec.test_clips]) == {spec.name.removeprefix("subject_")}
    assert sorted(np.concatenate([s.test_clips for s in specs]).tolist()) == list(range(split.num_clips))
    with pytest.raises(FileNotFoundError, match="recorded no predictions"):
        pool(split, specs)


def test_kept_predictions_replace_repeated_epochs(tmp_path):
    from pthnet_jax.families.htnet.task import keep_predictions, read_predictions

    for epoch, values in ((1, [0, 1]), (2, [2, 2]), (3, [1, 1]), (2, [0, 0])):  # resumed at epoch 2
        keep_predictions(tmp_path, epoch, np.array(values), np.array([4, 9]))
    epochs, table = read_predictions(tmp_path / "predictions.npz")
    np.testing.assert_array_equal(epochs, [1, 2])
    np.testing.assert_array_equal(table, [[0, 1], [0, 0]])


@pytest.mark.slow  # compiles and trains 3 tiny runs in one program (about a minute on a loaded CPU)
def test_loso_trains_every_subject_and_pools_the_selected_predictions(dataset, tmp_path, capsys):
    from sklearn.metrics import f1_score, recall_score

    from pthnet_jax.cli import main
    from pthnet_jax.families.htnet.task import TASK, read_predictions

    workdir = tmp_path / "loso"
    assert main(["loso", "--config", "htnet_tiny", "--data", str(dataset), "--workdir", str(workdir),
                 "--parallel", "3", "--selection", "last,best_on_test,2", "--metrics", "clean"]) == 0
    assert "selection best_on_test" in capsys.readouterr().out
    result = json.loads((workdir / "loso.json").read_text())
    split = TASK.open(dataset, "samples")
    pooled = {name: np.full(split.num_clips, -1) for name in ("last", "2")}
    for subject in ("s00", "s01", "s02"):
        run = workdir / f"subject_{subject}"
        history = json.loads((run / "history.json").read_text())
        epochs, table = read_predictions(run / "predictions.npz")
        test = np.flatnonzero(split.groups == subject)
        np.testing.assert_array_equal(epochs, [1, 2, 3])
        assert not (run / "best").exists() and (run / "checkpoints").is_dir()  # save_best False
        for record, predictions in zip(history, table):  # the kept predictions are the evaluated ones
            np.testing.assert_allclose(100 * np.mean(predictions == split.labels[test]), record["test"]["WAR"])
        pooled["last"][test], pooled["2"][test] = table[2], table[1]
        best = max(range(3), key=lambda e: (history[e]["test"]["WAR"], e)) + 1
        assert result["best_on_test"]["epochs"][f"subject_{subject}"] == best
    for name in ("last", "2"):
        assert result[name]["selection"] == ("last" if name == "last" else "epoch_2")
        expected = f1_score(split.labels, pooled[name], average="macro", labels=[0, 1, 2], zero_division=0)
        assert result[name]["all"]["UF1"] == pytest.approx(expected)
        expected = recall_score(split.labels, pooled[name], average="macro", labels=[0, 1, 2], zero_division=0)
        assert result[name]["all"]["UAR"] == pytest.approx(expected)
        assert set(result[name]) >= {"casme2", "smic", "samm"}
    # `pthnet convert`: a run's last checkpoint -> the original's .pth -> a checkpoint -> the same bytes
    step = sorted((workdir / "subject_s00" / "checkpoints").iterdir(), key=lambda p: int(p.name))[-1]
    assert main(["convert", str(step), str(tmp_path / "a.pth")]) == 0
    assert main(["convert", str(tmp_path / "a.pth"), str(tmp_path / "imported")]) == 0
    assert main(["convert", str(tmp_path / "imported"), str(tmp_path / "b.pth")]) == 0
    assert (tmp_path / "a.pth").read_bytes() == (tmp_path / "b.pth").read_bytes()
