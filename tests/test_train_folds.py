"""The multi-fold runner (scripts/run_folds.py): import each fold, train it, mean and std over folds."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from pthnet_jax.data.synth import synthesize

REPO = Path(__file__).resolve().parents[1]
DIM = 16


def _load_runner():
    spec = importlib.util.spec_from_file_location("run_folds", REPO / "scripts" / "run_folds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _two_fold_root(base: Path) -> Path:
    """Two DFEW-style folds made of synthetic clips: fold 2 = fold 1's clips in another list order
    (same sizes, so the tiny model's compiled steps are shared, but other batches and results).

    The clips are those of train_helpers.make_dataset (FERv39k-like window counts, same seed and
    sizes), so in one pytest session the steps compiled for tests/test_train.py are reused too.
    """
    root = synthesize(base / "root", "FERv39k", clips=40, test_clips=13, feature_dim=DIM, reverse=False,
                      quiet=True, signal=3.0)
    for split in ("train", "test"):
        for level_dir in (root / "annotation" / "FERv39k").iterdir():
            lines = (level_dir / f"{split}_All.txt").read_text().splitlines()
            target = root / "annotation" / "DFEW" / level_dir.name
            target.mkdir(parents=True, exist_ok=True)
            (target / f"set_1_{split}.txt").write_text("\n".join(lines) + "\n")
            (target / f"set_2_{split}.txt").write_text("\n".join(lines[5:] + lines[:5]) + "\n")
    return root


def test_parse_folds():
    runner = _load_runner()
    assert runner.parse_folds(None, 5) == [1, 2, 3, 4, 5]
    assert runner.parse_folds("2-4,1", 26) == [2, 3, 4, 1]
    with pytest.raises(ValueError, match=r"\[6\] outside 1..5"):
        runner.parse_folds("1,6", 5)
    with pytest.raises(ValueError, match="cannot read"):
        runner.parse_folds("one", 5)


@pytest.mark.slow
def test_two_folds_mean_and_std(tmp_path, capsys):
    runner = _load_runner()
    root = _two_fold_root(tmp_path)
    argv = ["--config", str(REPO / "configs" / "tiny.py"), "--config.benchmark=DFEW", "--config.train.epochs=1",
            "--data", str(tmp_path / "data" / "set{fold}"), "--workdir", str(tmp_path / "runs"),
            "--folds", "1-2", "--import_root", str(root), "--import_args", f"--feature-dim {DIM}"]
    assert runner.main(argv) == 0
    result = json.loads((tmp_path / "runs" / "folds.json").read_text())
    assert result["benchmark"] == "DFEW" and result["num_folds"] == 2 and result["model_selection"] == "test"
    per_fold = []
    for fold in (1, 2):  # each fold's numbers are its own run's selected (best) epoch on the test split
        summary = json.loads((tmp_path / "runs" / f"fold_{fold}" / "summary.json").read_text())
        best_test = summary["best"]["metrics"]["test"]
        assert result["folds"][str(fold)]["UAR"] == pytest.approx(best_test["UAR"])
        assert result["folds"][str(fold)]["WAR"] == pytest.approx(best_test["WAR"])
        per_fold.append([best_test["UAR"], best_test["WAR"]])
    per_fold = np.array(per_fold)
    assert result["mean"]["UAR"] == pytest.approx(per_fold[:, 0].mean())
    assert result["std"]["WAR"] == pytest.approx(abs(per_fold[0, 1] - per_fold[1, 1]) / 2)
    assert "± " in capsys.readouterr().out

    # Running the same command again resumes: both folds are done, nothing retrains, same report.
    histories = {f: (tmp_path / "runs" / f"fold_{f}" / "history.json").stat().st_mtime_ns for f in (1, 2)}
    assert runner.main(argv) == 0
    assert json.loads((tmp_path / "runs" / "folds.json").read_text())["folds"] == result["folds"]
    assert histories == {f: (tmp_path / "runs" / f"fold_{f}" / "history.json").stat().st_mtime_ns for f in (1, 2)}


def test_bad_arguments_are_reported(tmp_path, capsys):
    runner = _load_runner()
    config = str(REPO / "configs" / "tiny.py")
    assert runner.main(["--config", config, "--data", "no-placeholder", "--workdir", str(tmp_path)]) == 2
    assert "{fold}" in capsys.readouterr().err
    assert runner.main(["--config", config, "--config.train.epohcs=3", "--data", "d{fold}",
                        "--workdir", str(tmp_path)]) == 2
    assert "epohcs" in capsys.readouterr().err
