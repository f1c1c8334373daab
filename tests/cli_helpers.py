"""Run the installed `pthnet` command in a subprocess, as a user would."""
import os
import subprocess
import sys
from pathlib import Path

PTHNET = Path(sys.executable).with_name("pthnet")


def pthnet(*args, cwd=None, timeout=600, env=None) -> subprocess.CompletedProcess:
    """`pthnet ARGS` (the console script next to this interpreter; `python -m pthnet_jax.cli` otherwise)."""
    command = [str(PTHNET)] if PTHNET.exists() else [sys.executable, "-m", "pthnet_jax.cli"]
    return subprocess.run([*command, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_clean_error(result: subprocess.CompletedProcess, *expected: str, code: int = 2) -> None:
    """Exit `code`, every `expected` text in stderr, and no Python traceback."""
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    for text in expected:
        assert text in result.stderr, (text, result.stderr)
