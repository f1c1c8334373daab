"""`pthnet demo` end to end (synthesize, import, train, evaluate): it learns, and it says where things are."""
import json

import pytest

from pthnet_jax.commands.demo import run_demo

pytestmark = pytest.mark.slow  # end to end: runs whole programs


def test_demo_learns_and_reports(tmp_path, capsys):
    # A smaller, clearer version of the default job (the default, 1,200 clips and 12 epochs, takes
    # about two minutes; the report of the task states its numbers).
    workdir = tmp_path / "demo"
    result = run_demo(workdir, clips=240, epochs=3, signal=3.0)
    out = capsys.readouterr().out
    chance = 100.0 / 7
    assert result["UAR"] > 2 * chance and result["WAR"] > 2 * chance, result
    # `pthnet evaluate` on the best checkpoint agrees with the evaluation done during training.
    summary = json.loads((workdir / "run" / "summary.json").read_text())
    assert summary["model_selection"] == "test"
    assert result["UAR"] == pytest.approx(summary["best"]["metrics"]["test"]["UAR"])
    assert result["WAR"] == pytest.approx(summary["best"]["metrics"]["test"]["WAR"])
    for path in (workdir / "run" / "training_curves.png", workdir / "evaluation" / "confusion_matrix.png",
                 workdir / "evaluation" / "metrics.json", workdir / "run" / "best"):
        assert path.exists() and str(path) in out, path
    assert f"UAR {result['UAR']:.2f}" in out and f"WAR {result['WAR']:.2f}" in out
