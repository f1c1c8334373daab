"""Every command of the README, run as written (in a scratch folder, at a tiny size).

Each ```bash line of README.md is run with bash in one scratch folder, in README order, with the
installed `pthnet` first on PATH. Two things are added, and only these: `pthnet train` and `pthnet
folds` get TINY appended (a small model and one epoch; `pthnet folds` one fold), and the original's
`model_best.pth` is stood in for by the first run's checkpoint exported to `.pth`. The commands that
install things, run this suite or take many minutes are listed in SKIPPED with the reason; a README
command that is neither run nor listed fails the test, as does a listed one that left the README.
The ```python blocks run too, in the same folder.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from train_helpers import FAST_ARCH_FLAG

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TINY = (f"--config.model.n_embd=32 --config.model.mlp_dim=48 {shlex.quote(FAST_ARCH_FLAG)} --config.train.epochs=1 --config.optim.milestones='()' "
        "--config.train.global_batch=8 "
        "--config.train.steps_per_dispatch=4 --config.eval.batch_size=16")
APPENDED = {"pthnet train ": TINY, "pthnet folds ": f"{TINY} --folds 1"}
SKIPPED = {
    'pip install .': "installs the package (the suite runs from an installed checkout)",
    'pip install -e ".[test]"': "installs the package",
    'pip install ".[cuda12]"': "installs the GPU build",
    'python -m pytest -q -n 2 --dist loadfile tests': "this suite itself",
    'pthnet demo': "minutes at its default size; tests/test_demo.py runs it smaller",
    'pthnet bench --bf16': "a full-size GPU benchmark; tests/test_bench.py runs pthnet bench at a tiny size",
    'python scripts/fetch_gpu_wheels.py': "downloads wheels from PyPI; tests/test_gpu_report.py checks its parsing",
    'python scripts/gpu_report.py --out gpu-report --tiny': "minutes of compilation on a CPU; "
    "tests/test_gpu_report.py runs it (slow)",
    'pthnet extract videos/ --backbone vit_g_hybrid_pt_1200e_k710_ft.pth --out ROOT --dataset FERv39k '
    '--labels labels.txt': "needs the released 2 GB ViT-g; tests/test_video_extract.py runs extract on a tiny backbone",
    'pthnet predict clip.mp4 --backbone vit_g_hybrid_pt_1200e_k710_ft.pth --checkpoint runs/ferv39k/best '
    '--rv-checkpoint runs/ferv39k_rv/best --mu 0.7': "needs the released 2 GB ViT-g; tests/test_video_predict.py "
    "runs predict on a tiny backbone",
    'pthnet demo-video --workdir demo-video': "minutes; tests/test_video_demo_bench.py runs it smaller, then predict "
    "with the backbone it keeps",
    'pthnet predict demo-video/videos/Happy --backbone demo-video/backbone.safetensors --checkpoint '
    'demo-video/run/best': "needs demo-video's outputs; tests/test_video_demo_bench.py runs it",
    'pthnet extract demo-video/videos --backbone demo-video/backbone.safetensors --out my-root --dataset Shapes '
    '--classes Happy,Sad,Neutral,Angry,Surprise,Disgust,Fear --labels demo-video/labels.txt': "needs demo-video's "
    "outputs; tests/test_video_newuser.py extracts and imports a dataset of its own classes",
    'pthnet import-features --dataset Shapes --root my-root --out data/shapes': "needs the extract above",
    'pthnet train --config demo --data data/shapes --workdir runs/shapes': "needs the import above",
    'pthnet convert best_dfew_fold5.pth ckpt/lstpnet_dfew_5': "needs LSTPNet's released weights (not mirrored); "
    "tests/test_lstpnet_convert.py converts an original-format file both ways through pthnet convert",
    'pthnet convert ckpt/lstpnet_dfew_5 back.pth': "needs the import above",
    'pthnet import-htnet --repo HTNet --landmarks landmarks.csv --out data/htnet': "needs a checkout of the HTNet "
    "repository (its data have no licence to copy); tests/test_htnet_data.py imports a synthetic checkout",
    'pthnet import-htnet --repo HTNet --compute-landmarks landmarks.csv': "needs the checkout and the optional "
    "PyTorch face detector",
    'pthnet import-htnet --synthetic /tmp/htnet-synth': "tests/test_htnet_data.py writes and imports a synthetic checkout",
    'pthnet loso --config htnet_composite --data data/htnet --workdir runs/htnet --parallel 8 --selection '
    'last,best_on_test,800 --metrics compat': "the full protocol: hours on a GPU",
    'pthnet loso --config htnet_tiny --data /tmp/htnet-data --workdir /tmp/htnet-loso --parallel 3': "a minute of "
    "compilation; tests/test_htnet_loso.py runs the reduced protocol",
}


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def readme_commands() -> list[str]:
    """The bash commands, continuation lines joined, comments dropped, `a && b` split."""
    commands = []
    for block in readme_blocks("bash"):
        for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines():
            text = re.sub(r"(^|\s+)#.*$", "", line).strip()  # a comment (no README command quotes a '#')
            if text:
                commands += [part.strip() for part in text.split(" && ")]
    return commands


def test_every_readme_command_is_run_or_skipped_for_a_reason():
    commands = readme_commands()
    assert len(commands) >= 15 and any(c.startswith("pthnet folds ") for c in commands)
    stale = [c for c in SKIPPED if c not in commands]
    assert not stale, f"skipped commands no longer in the README: {stale}"
    for command in commands:
        assert command in SKIPPED or command.startswith("pthnet "), f"neither run nor skipped: {command}"
    assert readme_blocks("python"), "the README's Python example is gone"


def _make_model_best(scratch: Path) -> None:
    """The original's checkpoint file, stood in for by the first run's best checkpoint as a `.pth`."""
    pytest.importorskip("torch")
    from pthnet_jax.convert import checkpoint_to_pth

    checkpoint_to_pth(scratch / "runs" / "ferv39k" / "best", scratch / "model_best.pth")


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path, monkeypatch):
    scratch = tmp_path / "readme"
    scratch.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    ran = []
    for command in readme_commands():
        if command in SKIPPED:
            continue
        if "model_best.pth" in command and not (scratch / "model_best.pth").exists():
            _make_model_best(scratch)
        line = command + next((f" {extra}" for prefix, extra in APPENDED.items() if command.startswith(prefix)), "")
        result = subprocess.run(["bash", "-c", line], cwd=scratch, env=env, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, f"README command failed: {line}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr, result.stderr
        ran.append(command)
    assert len(ran) >= 12
    # What the README says these commands leave behind is there.
    for path in ("data/mafw_c_1", "runs/ferv39k/best", "runs/ferv39k_rv/best", "eval/ferv39k/metrics.json",
                 "eval/ferv39k/mu_sweep.json", "runs/dfew/folds.json", "runs/dfew/fold_1_rv/best", "ckpt", "model.pth"):
        assert (scratch / path).exists(), path
    import json

    folds = json.loads((scratch / "runs" / "dfew" / "folds.json").read_text())
    assert folds["num_folds"] == 1 and "UAR" in folds["fused"]["mean"]
    metrics = json.loads((scratch / "eval" / "ferv39k" / "metrics.json").read_text())
    assert len(metrics["checks"]["verified"]) == 3 and metrics["mu"] == 0.7

    monkeypatch.chdir(scratch)
    for block in readme_blocks("python"):
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own example
        assert namespace["logits"].shape == (2, 7)
