"""Ctrl-C: a real SIGINT to real processes. `pthnet train` at start-up, mid-compile and mid-epoch
(exit 75, saved, resumable, never a crash), and the second Ctrl-C that quits at once."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train_helpers import FAST_ARCH_FLAG

ROOT = Path(__file__).resolve().parents[1]

_SECTION = """
import sys, time
from pthnet_jax import interrupts
with interrupts.handle_signals("pthnet test"):
    if sys.argv[1] == "deferred":
        with interrupts.deferred():
            print("ready", flush=True)
            while interrupts.pending() is None:
                time.sleep(0.01)
            print("stopping at a safe point", flush=True)
            time.sleep(30)
    else:
        print("ready", flush=True)
        time.sleep(30)
"""


def _start(args, env=None):
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, env={**os.environ, **(env or {})})


def _wait_for(process, text, timeout=600):
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    process.kill()
    raise AssertionError(f"never printed {text!r}:\n{''.join(seen)}")


def _finish(process, seen="", timeout=600):
    out, _ = process.communicate(timeout=timeout)
    output = seen + out
    assert "Traceback" not in output and "Segmentation" not in output and "KeyboardInterrupt" not in output, output
    return process.returncode, output


def test_outside_a_loop_the_first_ctrl_c_exits_75_inside_one_the_second_quits():
    process = _start(["-c", _SECTION, "plain"])
    seen = _wait_for(process, "ready", timeout=60)
    process.send_signal(signal.SIGINT)
    code, output = _finish(process, seen, timeout=30)
    assert code == 75 and "interrupted (SIGINT)" in output and "re-run the same command" in output

    process = _start(["-c", _SECTION, "deferred"])
    seen = _wait_for(process, "ready", timeout=60)
    process.send_signal(signal.SIGINT)
    seen += _wait_for(process, "stopping at a safe point", timeout=30)
    assert "Ctrl-C again quits now" in seen
    process.send_signal(signal.SIGINT)
    code, output = _finish(process, seen, timeout=30)
    assert code == 130 and "second Ctrl-C: quitting now" in output

    process = _start(["-c", _SECTION, "plain"])
    seen = _wait_for(process, "ready", timeout=60)
    process.send_signal(signal.SIGTERM)  # SIGTERM: the same
    assert _finish(process, seen, timeout=30)[0] == 75


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from train_helpers import make_dataset

    return make_dataset(tmp_path_factory.mktemp("sigint"))[0]


def _train(data_dir, workdir, cache, epochs):
    return _start(["-m", "pthnet_jax.cli", "train", "--config", "tiny", "--data", str(data_dir), "--workdir",
                   str(workdir), f"--config.train.epochs={epochs}", "--config.train.steps_per_dispatch=1",
                   FAST_ARCH_FLAG, "--config.train.keep_checkpoints=1"],
                  env={"PTHNET_COMPILATION_CACHE": str(cache), "PYTHONUNBUFFERED": "1"})


def _saved_steps(workdir):
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


@pytest.mark.slow  # `pthnet train` in subprocesses, interrupted three times
def test_ctrl_c_at_start_up_mid_compile_and_mid_epoch(data_dir, tmp_path):
    cache = tmp_path / "xla"  # cold: the first run really compiles
    # Start-up: the run has written its data record and is loading, nothing to save yet.
    process = _train(data_dir, tmp_path / "startup", cache, 2)
    deadline = time.monotonic() + 120
    while not (tmp_path / "startup" / "data.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    code, output = _finish(process)
    assert code == 75 and "before anything needed saving" in output, output

    # Mid-compile: the run says it compiles; Ctrl-C there stops after the first call and saves.
    process = _train(data_dir, tmp_path / "compile", cache, 2)
    seen = _wait_for(process, "compiling the training step")
    process.send_signal(signal.SIGINT)
    code, output = _finish(process, seen)
    assert code == 75 and "stopping at the next safe point" in output and "re-run to resume" in output, output
    assert _saved_steps(tmp_path / "compile")

    # Mid-epoch: after epoch 1 of 4, while the next one runs (resuming exactly is test_preemption's).
    process = _train(data_dir, tmp_path / "epoch", cache, 4)
    seen = _wait_for(process, "epoch 1 |")
    process.send_signal(signal.SIGINT)
    code, output = _finish(process, seen)
    assert code == 75 and "re-run to resume" in output, output
    steps_per_epoch = 5  # 40 training clips, global batch 8
    saved = _saved_steps(tmp_path / "epoch")
    assert saved and steps_per_epoch < saved[-1] < 4 * steps_per_epoch, (saved, output)
