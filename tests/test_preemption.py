"""Preemption of a multi-process run: SIGTERM to one of two `jax.distributed` processes mid-epoch.

Both processes must stop after the same step, save one consistent checkpoint and exit cleanly;
running them again must end with exactly the parameters of an uninterrupted two-process run.

The file is also the worker: `python tests/test_preemption.py DATA WORKDIR SIGNAL_AFTER` runs one
process of the pair (rank and coordinator from the PTHNET_* environment, as `pthnet train` reads
them); with SIGNAL_AFTER > 0, process 1 sends itself SIGTERM after that many steps of epoch 2.
"""
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from distributed_helpers import start_workers, wait_for_workers  # noqa: E402

pytestmark = pytest.mark.slow

EPOCHS = 2


def _worker(data_dir: str, workdir: str, signal_after: int) -> None:
    from pthnet_jax import parallel

    assert parallel.maybe_initialize_distributed(), "the PTHNET_* environment is missing"
    import jax

    from pthnet_jax import reporting
    from pthnet_jax.train import train_and_evaluate
    from train_helpers import tiny_config

    assert jax.process_count() == 2 and jax.local_device_count() == 2
    if signal_after and jax.process_index() == 1:
        original_init, original = reporting.EpochProgress.__init__, reporting.EpochProgress.update
        seen = {"steps": 0}

        def init_and_remember(self, epoch, *args, **kwargs):
            original_init(self, epoch, *args, **kwargs)
            self.test_epoch = epoch + 1

        def update_then_signal(self, metrics):
            original(self, metrics)
            if self.test_epoch == 2:
                seen["steps"] += len(np.atleast_1d(metrics["count"]))
                if seen["steps"] == signal_after:
                    os.kill(os.getpid(), signal.SIGTERM)

        reporting.EpochProgress.__init__ = init_and_remember
        reporting.EpochProgress.update = update_then_signal
    config = tiny_config(data_dir, **{"train.epochs": EPOCHS, "train.steps_per_dispatch": 1, "train.keep_checkpoints": 1})
    result = train_and_evaluate(config, workdir)
    Path(workdir, f"result-{jax.process_index()}.json").write_text(json.dumps(result, default=str))
    jax.distributed.shutdown()


def _run_pair(data_dir: Path, workdir: Path, signal_after: int = 0) -> list[dict]:
    workers = start_workers(__file__, [str(data_dir), str(workdir), str(signal_after)], workdir.parent, workdir.name)
    logs = wait_for_workers(workers, timeout=900)
    assert all(p.returncode == 0 for p, _ in workers), f"a worker failed:\n{logs}"
    assert "Traceback" not in logs, logs
    return [json.loads((workdir / f"result-{rank}.json").read_text()) for rank in range(2)]


def _final_params(workdir: Path) -> dict:
    import jax

    from pthnet_jax.checkpoint import load_checkpoint

    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    _, variables, info, _ = load_checkpoint(workdir / "checkpoints" / str(steps[-1]))
    flat = {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(variables["params"])[0]}
    return {"step": steps[-1], "params": flat, "info": info}


def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes_exactly(tmp_path, tiny_datasets):
    data_dir = tiny_datasets[0]
    reference = _run_pair(data_dir, tmp_path / "uninterrupted")
    assert all(r.get("epochs") == EPOCHS for r in reference)

    interrupted = _run_pair(data_dir, tmp_path / "preempted", signal_after=2)
    assert all(r.get("interrupted") for r in interrupted), interrupted
    assert interrupted[0]["step"] == interrupted[1]["step"]  # one stopping step for both processes
    saved = _final_params(tmp_path / "preempted")
    steps_per_epoch = 5  # 40 training clips, global batch 8
    assert steps_per_epoch < saved["step"] < EPOCHS * steps_per_epoch  # mid-epoch 2
    assert saved["step"] == interrupted[0]["step"]
    assert saved["info"]["provenance"]["interrupted"]

    resumed = _run_pair(data_dir, tmp_path / "preempted")
    assert all(r.get("epochs") == EPOCHS for r in resumed)
    expected, actual = _final_params(tmp_path / "uninterrupted"), _final_params(tmp_path / "preempted")
    assert actual["step"] == expected["step"] == EPOCHS * steps_per_epoch
    assert set(actual["params"]) == set(expected["params"])
    for name, value in expected["params"].items():
        np.testing.assert_array_equal(actual["params"][name], value, err_msg=name)
    # Only process 0 writes the run's files.
    assert (tmp_path / "preempted" / "history.json").is_file()


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]))
