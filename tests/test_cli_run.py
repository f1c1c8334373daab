"""`pthnet train` interrupted and resumed, then `pthnet evaluate` on its checkpoint: exit codes,
messages, the data checks of a run trained here, and an output folder replaced as a whole."""
import json
import signal
import subprocess
import time

import pytest

from cli_helpers import PTHNET, assert_clean_error, pthnet
from train_helpers import FAST_ARCH_FLAG

pytestmark = pytest.mark.slow  # whole runs in subprocesses


def _train_until_first_epoch(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `pthnet train`, send SIGTERM once the first epoch is reported; return the finished process."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, lines = time.monotonic() + timeout, []
    for line in process.stdout:  # the epoch lines go to stdout (the progress bars to stderr)
        lines.append(line)
        if line.startswith("epoch 1 |"):
            process.send_signal(signal.SIGTERM)
            break
        assert time.monotonic() < deadline, "".join(lines)
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(command, process.returncode, "".join(lines) + out, err)


def test_interrupted_training_exits_75_and_resumes(tiny_datasets, tmp_path):
    forward, backward = tiny_datasets
    workdir = tmp_path / "run"
    command = [str(PTHNET), "train", "--config", "tiny", "--data", str(forward), "--workdir", str(workdir),
               FAST_ARCH_FLAG, "--config.train.epochs=40"]
    if not PTHNET.exists():
        pytest.skip("the pthnet console script is not installed next to this interpreter")
    stopped = _train_until_first_epoch(command)
    assert_clean_error(stopped, "interrupted, re-run to resume", code=75)
    saved = json.loads((workdir / "data.json").read_text())
    assert saved["benchmark"] == "FERv39k" and saved["reverse"] is False
    assert (workdir / "best").is_dir()

    # The run's checkpoint knows its data: the backward data is refused, with the reason.
    result = pthnet("evaluate", "--checkpoint", workdir / "best", "--data", backward, "--output", tmp_path / "e")
    assert_clean_error(result, "trained on FERv39k forward", "backward (time-reversed)", "reverse False vs True")
    result = pthnet("evaluate", "--checkpoint", workdir, "--data", forward, "--rv-checkpoint", workdir,
                    "--rv-data", backward, "--output", tmp_path / "e")
    assert_clean_error(result, "the backward checkpoint", "trained on FERv39k forward")
    assert not (tmp_path / "e").exists()

    # An earlier evaluation's files (a stale mu sweep) do not survive the next one.
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "metrics.json").write_text("{}")
    (tmp_path / "e" / "mu_sweep.json").write_text("[]")
    result = pthnet("evaluate", "--checkpoint", workdir / "best", "--data", forward, "--output", tmp_path / "e")
    assert result.returncode == 0, result.stderr
    assert "checked: the evaluated checkpoint was trained on FERv39k forward" in result.stdout
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["confusion_matrix.png", "metrics.json",
                                                                   "predictions.npz"]
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["checks"]["verified"] and not metrics["checks"]["unchecked"]
    # A folder that is not an evaluation output is never replaced.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    result = pthnet("evaluate", "--checkpoint", workdir / "best", "--data", forward, "--output", tmp_path / "mine")
    assert_clean_error(result, "not an earlier `pthnet evaluate` output")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"

    # The same command resumes and finishes (fewer epochs: the run ends at once after epoch 2).
    resumed = subprocess.run(command[:-1] + ["--config.train.epochs=2"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
