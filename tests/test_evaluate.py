"""`pthnet evaluate` against an independent computation: the original's evaluation sampling done by
hand from the .npy files and lists, the model applied clip by clip, metrics from scikit-learn."""
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from pthnet_jax.checkpoint import save_checkpoint
from pthnet_jax.configs import tiny
from pthnet_jax.data.importer import import_features
from pthnet_jax.data.synth import synthesize
from pthnet_jax.commands.evaluate import main as evaluate_main
from pthnet_jax.models.pthnet import ModelConfig, PTHNet, init_variables

DIM = 16
TEST_CLIPS = 13  # with --batch-size 8 on 4 devices: one full batch, one padded (5 of 8)


def _init(config, seed):
    # Jitted: Flax initialises op by op otherwise, compiling hundreds of tiny programs.
    return jax.jit(lambda key: init_variables(PTHNet(config), key)["params"])(jax.random.key(seed))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("evaluate")
    # DFEW-like window counts (up to ~200 per clip) so the segment picking is exercised, not only
    # the "fewer windows than steps" case.
    root = synthesize(base / "root", "DFEW", clips=8, test_clips=TEST_CLIPS, feature_dim=DIM, reverse=True,
                      quiet=True, signal=2.0)
    forward = import_features("DFEW", root, base / "data", fold=1, feature_dim=DIM, quiet=True)
    backward = import_features("DFEW", root, base / "data_rv", fold=1, reverse=True, feature_dim=DIM, quiet=True)
    config = ModelConfig.from_dict({**tiny.get_config().model.to_dict(), "num_classes": 7})
    checkpoints = {}
    for name, seed in (("forward", 0), ("backward", 1)):
        params = _init(config, seed)
        checkpoints[name] = save_checkpoint(base / f"ckpt_{name}", params, config, {"test": name})
        checkpoints[name + "_params"] = params
    return {"base": base, "root": root, "forward": forward, "backward": backward, "config": config, **checkpoints}


def _reference_inputs(root: Path, list_file: Path, max_len: int = 16):
    """The original's evaluation input of the H level, written out from the spec (section 1)."""
    features, masks, labels, clip_ids = [], [], [], []
    for line in list_file.read_text().splitlines():
        path, num_windows, label = line.split()
        windows = np.load(root / path)
        assert len(windows) == int(num_windows)
        n = len(windows)
        if n < max_len:
            picked = windows
        else:
            seg = n / max_len
            starts = [int(np.round(seg * i)) for i in range(max_len)]
            picked = windows[[s + int(seg / 2) for s in starts]]
        padded = np.zeros((max_len, windows.shape[1]), np.float32)
        padded[:len(picked)] = picked
        features.append(padded)
        masks.append(np.arange(max_len) < len(picked))
        labels.append(int(label))
        clip_ids.append(path)
    return np.stack(features), np.stack(masks), np.array(labels), clip_ids


def _reference_logits(setup, params, reverse=False):
    suffix = "_rv" if reverse else ""
    list_file = setup["root"] / "annotation" / "DFEW" / f"th14_vit_g_16_4{suffix}" / "set_1_test.txt"
    features, masks, labels, clip_ids = _reference_inputs(setup["root"], list_file)
    model = PTHNet(setup["config"])
    apply = jax.jit(lambda p, f, m: model.apply({"params": p}, {"H": f}, {"H": m}, train=False)["H"])
    return np.asarray(apply(params, features, masks)), labels, clip_ids


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_metrics_and_predictions_match_an_independent_evaluation(setup, tmp_path):
    out = tmp_path / "out"
    assert evaluate_main(["--checkpoint", str(setup["forward"]), "--data", str(setup["base"] / "data"),
                          "--batch-size", "8", "--output", str(out)]) == 0
    logits, labels, clip_ids = _reference_logits(setup, setup["forward_params"])
    predictions = np.load(out / "predictions.npz")
    assert list(predictions["clip_ids"]) == clip_ids  # list order, the ids as written in the lists
    np.testing.assert_array_equal(predictions["labels"], labels)
    np.testing.assert_allclose(predictions["logits"], logits, rtol=1e-4, atol=1e-5)

    metrics = json.loads((out / "metrics.json").read_text())
    predicted = logits.argmax(1)
    assert metrics["num_clips"] == TEST_CLIPS
    assert metrics["WAR"] == pytest.approx(100 * accuracy_score(labels, predicted))
    assert metrics["UAR"] == pytest.approx(100 * balanced_accuracy_score(labels, predicted))
    assert metrics["weighted_f1"] == pytest.approx(f1_score(labels, predicted, average="weighted"))
    assert np.asarray(metrics["confusion_matrix"]).shape == (7, 7)
    assert np.asarray(metrics["confusion_matrix"]).sum() == TEST_CLIPS
    assert len(metrics["per_class_recall"]) == 7
    assert (out / "confusion_matrix.png").stat().st_size > 0
    assert "models" not in metrics and "logits_forward" not in predictions.files


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_fusion_and_mu_sweep(setup, tmp_path, capsys):
    out = tmp_path / "fused"
    # Checkpoints saved by hand carry no record of their data (like the original's .pth files): the
    # data record their directions, so fusing goes on and says what was not checked.
    assert evaluate_main(["--checkpoint", str(setup["forward"]), "--data", str(setup["base"] / "data"),
                          "--rv-checkpoint", str(setup["backward"]), "--rv-data", str(setup["base"] / "data_rv"),
                          "--mu", "0.7", "--mu-sweep", "--batch-size", "8", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("NOT CHECKED: the ") == 2 and "carries no record of its training data" in printed
    sweep = json.loads((out / "mu_sweep.json").read_text())
    best = max(sweep, key=lambda row: (row["WAR"], row["UAR"]))
    assert f"mu sweep: best WAR {best['WAR']:.2f} at mu={best['mu']:.1f}" in printed
    forward, labels, _ = _reference_logits(setup, setup["forward_params"])
    backward, labels_rv, _ = _reference_logits(setup, setup["backward_params"], reverse=True)
    np.testing.assert_array_equal(labels, labels_rv)
    predictions = np.load(out / "predictions.npz")
    np.testing.assert_allclose(predictions["logits_forward"], forward, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(predictions["logits_backward"], backward, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(predictions["logits"], 0.7 * forward + 0.3 * backward, rtol=1e-4, atol=1e-5)

    metrics = json.loads((out / "metrics.json").read_text())
    fused = (0.7 * forward + 0.3 * backward).argmax(1)
    assert metrics["UAR"] == pytest.approx(100 * balanced_accuracy_score(labels, fused))
    assert metrics["WAR"] == pytest.approx(100 * accuracy_score(labels, fused))
    for name, logits in (("forward", forward), ("backward", backward)):
        assert metrics["models"][name]["WAR"] == pytest.approx(100 * accuracy_score(labels, logits.argmax(1)))
        assert metrics["models"][name]["UAR"] == pytest.approx(
            100 * balanced_accuracy_score(labels, logits.argmax(1)))
    sweep = metrics["mu_sweep"]
    assert [row["mu"] for row in sweep] == pytest.approx([i / 10 for i in range(11)])
    for row in sweep:
        mixed = (row["mu"] * forward + (1 - row["mu"]) * backward).argmax(1)
        assert row["WAR"] == pytest.approx(100 * accuracy_score(labels, mixed))
        assert row["UAR"] == pytest.approx(100 * balanced_accuracy_score(labels, mixed))
    assert (out / "mu_sweep.png").stat().st_size > 0
    assert json.loads((out / "mu_sweep.json").read_text()) == sweep


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_exported_pth_gives_the_same_predictions(setup, tmp_path):
    pytest.importorskip("torch")
    from pthnet_jax.convert import checkpoint_to_pth

    checkpoint_to_pth(setup["forward"], tmp_path / "model.pth")
    for name, checkpoint in (("dir", setup["forward"]), ("pth", tmp_path / "model.pth")):
        assert evaluate_main(["--checkpoint", str(checkpoint), "--data", str(setup["base"] / "data"),
                              "--batch-size", "8", "--output", str(tmp_path / name)]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "dir" / "predictions.npz")["logits"],
                                  np.load(tmp_path / "pth" / "predictions.npz")["logits"])


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_clear_errors(setup, tmp_path, capsys):
    wrong = ModelConfig.from_dict({**setup["config"].to_dict(), "num_classes": 5})
    checkpoint = save_checkpoint(tmp_path / "five", _init(wrong, 0), wrong, {})
    data = str(setup["base"] / "data")
    assert evaluate_main(["--checkpoint", str(checkpoint), "--data", data, "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "5 classes" in err and "7" in err and not (tmp_path / "o" / "metrics.json").exists()
    assert evaluate_main(["--checkpoint", str(setup["forward"]), "--data", data, "--mu-sweep",
                          "--output", str(tmp_path / "o")]) == 2  # refused before any evaluation
    assert "--rv-checkpoint" in capsys.readouterr().err
    assert evaluate_main(["--checkpoint", str(tmp_path / "missing"), "--data", data,
                          "--output", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err
    assert evaluate_main(["--checkpoint", str(setup["forward"]), "--data", str(tmp_path / "nodata"),
                          "--output", str(tmp_path / "o")]) == 2
    assert "nodata" in capsys.readouterr().err
