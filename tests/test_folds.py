"""`pthnet folds`: every fold checked before any training, forward and backward models per fold,
the fused protocol's mean and std over folds, resumable."""
import json

import numpy as np
import pytest

from cli_helpers import assert_clean_error, pthnet
from train_helpers import FAST_ARCH_FLAG
from pthnet_jax.data.importer import import_features
from pthnet_jax.data.synth import synthesize

DIM = 16


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Synthetic DFEW, folds 1 and 2 (40 train / 13 test clips each: the tiny training tests' sizes)."""
    return synthesize(tmp_path_factory.mktemp("folds") / "root", "DFEW", clips=40, test_clips=13, feature_dim=DIM,
                      quiet=True, signal=3.0, folds=[1, 2])


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_fold_data_is_checked_before_any_training(root, tmp_path):
    import_features("DFEW", root, tmp_path / "dfew_1", fold=1, feature_dim=DIM, quiet=True)
    import_features("DFEW", root, tmp_path / "dfew_2", fold=1, feature_dim=DIM, quiet=True)  # fold 1 again
    base = ["folds", "--config", "tiny", "--config.benchmark=DFEW", "--workdir", tmp_path / "runs"]
    # fold 2's directory holds fold 1, and there is no backward data at all: all reported at once
    result = pthnet(*base, "--data", tmp_path / "dfew_{fold}", "--rv-data", tmp_path / "dfew_rv_{fold}",
                    "--folds", "1-2")
    assert_clean_error(result, "fold 1 (backward)", "dfew_rv_1", "dfew_rv_2", "--import-root")
    (tmp_path / "dfew_rv_1").symlink_to(tmp_path / "dfew_1")  # forward data given as backward
    (tmp_path / "dfew_rv_2").symlink_to(tmp_path / "dfew_1")
    result = pthnet(*base, "--data", tmp_path / "dfew_{fold}", "--rv-data", tmp_path / "dfew_rv_{fold}",
                    "--folds", "1-2")
    assert_clean_error(result, "fold 2: ", "fold 1 (expected 2)", "fold 1 backward", "reverse False (expected True)",
                       "nothing was trained")
    assert not (tmp_path / "runs").exists()
    assert_clean_error(pthnet(*base, "--data", tmp_path / "dfew_1"), "{fold} placeholder")
    assert_clean_error(pthnet(*base, "--data", tmp_path / "dfew_{fold}", "--folds", "0-3"), "[0] outside 1..5")
    assert_clean_error(pthnet("folds", "--config", "ferv39k", "--data", "d_{fold}", "--workdir", tmp_path / "runs"),
                       "single train/test split")
    usage = pthnet("folds", "--help")
    assert usage.returncode == 0
    for flag in ("--import-root", "--rv-data", "--import-args", "--mu", "--config.train.epochs="):
        assert flag in usage.stdout, flag


@pytest.mark.slow
def test_forward_backward_and_fused_over_two_folds(root, tmp_path, capsys):
    from pthnet_jax.commands.folds import main
    from pthnet_jax.evaluation import evaluate

    argv = ["--config", "tiny", "--config.benchmark=DFEW", "--config.train.epochs=1", FAST_ARCH_FLAG,
            "--data", str(tmp_path / "data" / "dfew_{fold}"), "--rv-data", str(tmp_path / "data" / "dfew_rv_{fold}"),
            "--workdir", str(tmp_path / "runs"), "--folds", "1-2", "--mu", "0.6",
            "--import-root", str(root), "--import-args", f"--feature-dim {DIM}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "runs" / "folds.json").read_text())
    assert result["benchmark"] == "DFEW" and result["num_folds"] == 2 and result["fused"]["mu"] == 0.6
    fused = []
    for fold in (1, 2):
        for direction, run in (("forward", f"fold_{fold}"), ("backward", f"fold_{fold}_rv")):
            best = json.loads((tmp_path / "runs" / run / "summary.json").read_text())["best"]["metrics"]["test"]
            block = result["folds"] if direction == "forward" else result["backward"]["folds"]
            assert block[str(fold)]["WAR"] == pytest.approx(best["WAR"])
        # the fused numbers are those of `pthnet evaluate` with both best checkpoints
        metrics, _ = evaluate(tmp_path / "runs" / f"fold_{fold}" / "best", tmp_path / "data" / f"dfew_{fold}", "test",
                              tmp_path / "runs" / f"fold_{fold}_rv" / "best", tmp_path / "data" / f"dfew_rv_{fold}", 0.6)
        assert not metrics["checks"]["unchecked"] and len(metrics["checks"]["verified"]) == 3
        assert result["fused"]["folds"][str(fold)]["UAR"] == pytest.approx(metrics["UAR"])
        fused.append([metrics["UAR"], metrics["WAR"]])
    fused = np.array(fused)
    assert result["fused"]["mean"]["UAR"] == pytest.approx(fused[:, 0].mean())
    assert result["fused"]["std"]["WAR"] == pytest.approx(fused[:, 1].std())
    assert "fused (mu=0.6)" in out and "± " in out

    # Again: every fold is finished, nothing retrains, the same report.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("fold_*/history.json")}
    assert len(stamps) == 4 and main(argv) == 0
    assert json.loads((tmp_path / "runs" / "folds.json").read_text()) == result
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
