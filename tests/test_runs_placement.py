"""The spread placement of many runs (`pthnet_jax.run_placement`): runs split over the local devices,
each whole on one device, end as they do alone on ONE device; a stopped spread program resumes.

The file is also the worker: `python tests/test_runs_placement.py spread|alone BASE DATA...` trains in
a process of its own with 2 or 1 fake CPU devices (the suite's own process has 4).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_dataset, tiny_config  # noqa: E402

# (name, data index into [forward, small], seed): K = 3 runs of two sizes, two of them sharing one
# store (one dataset, two seeds), padded to 4 runs over 2 devices.
TRIPLE = [("fwd_s0", 0, 0), ("small_s1", 1, 1), ("fwd_s1", 0, 1)]
TIMING = ("train_clips_per_s", "epoch_seconds", "eval_seconds", "save_seconds")


def _config(data_dir, **overrides):
    return tiny_config(data_dir, **{"train.epochs": 2, "train.runs_placement": "spread", **overrides})


def _specs(base: Path, data: list[str], runs) -> list:
    from pthnet_jax.runs import RunSpec

    return [RunSpec(name, base / name, data[i], seed=seed) for name, i, seed in runs]


def _worker(mode: str, base: Path, data: list[str]) -> None:
    import signal

    import jax

    from pthnet_jax import run_placement
    from pthnet_jax.runs import train_runs
    from pthnet_jax.train import train_and_evaluate

    if mode == "alone":  # every run of the test alone on one device
        assert jax.local_device_count() == 1
        for name, i, seed in TRIPLE:
            train_and_evaluate(_config(data[i], **{"train.seed": seed}), base / "alone" / name)
        return
    assert jax.local_device_count() == 2
    assert train_runs(_config(data[0]), _specs(base / "triple", data, TRIPLE), parallel_runs=3) is not None
    calls, original = {"n": 0}, run_placement.Spread.chunk

    def chunk_then_signal(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2's first call (epoch 1 took two: 5 steps in calls of 4)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args)

    run_placement.Spread.chunk = chunk_then_signal
    assert train_runs(_config(data[0]), _specs(base / "stopped", data, TRIPLE), parallel_runs=3) is None
    run_placement.Spread.chunk = original
    (base / "stopped_steps.json").write_text(json.dumps([_final(base / "stopped" / name)[1]["step"]
                                                         for name, *_ in TRIPLE]))
    assert train_runs(_config(data[0]), _specs(base / "stopped", data, TRIPLE), parallel_runs=3) is not None


def _final(workdir: Path):
    from pthnet_jax.checkpoint import load_checkpoint

    last = sorted((workdir / "checkpoints").iterdir(), key=lambda p: int(p.name))[-1]
    _, variables, info, _ = load_checkpoint(last)
    return variables["params"], info["provenance"]


def _history(workdir: Path):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in json.loads((workdir / "history.json").read_text())]


def _differences(a, b) -> tuple[float, float]:
    """Largest absolute difference, and largest relative to the leaf's scale (max(1, max |leaf|))."""
    import jax

    pairs = [(np.asarray(x, np.float64), np.asarray(y, np.float64)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return (max(float(np.max(np.abs(x - y))) for x, y in pairs),
            max(float(np.max(np.abs(x - y)) / max(1.0, float(np.max(np.abs(y))))) for x, y in pairs))


@pytest.fixture(scope="module")
def trained(tiny_datasets, tmp_path_factory):
    """Both workers, side by side: the spread programs on 2 devices, the runs alone on 1."""
    base = tmp_path_factory.mktemp("placement")
    small = make_dataset(tmp_path_factory.mktemp("small-data"), clips=28, test_clips=9)[0]
    data = [str(tiny_datasets[0]), str(small)]
    workers = []
    for mode, devices in (("spread", 2), ("alone", 1)):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
                                          "--xla_backend_optimization_level=0", "JAX_PLATFORMS": "cpu"}
        log = open(base / f"{mode}.log", "w")
        workers.append((subprocess.Popen([sys.executable, __file__, mode, str(base), *data], env=env, stdout=log,
                                         stderr=subprocess.STDOUT), base / f"{mode}.log", log))
    for process, path, log in workers:
        try:
            process.wait(timeout=1800)
        finally:
            process.kill()
            log.close()
        assert process.returncode == 0, f"{path.name}:\n{path.read_text()[-4000:]}"
    return base


@pytest.mark.slow  # trains in two processes of their own
def test_spread_runs_end_as_they_do_alone_on_one_device(trained):
    assert "runs placed spread" in (trained / "spread.log").read_text()
    differences = {}
    for name, *_ in TRIPLE:
        spread, alone = trained / "triple" / name, trained / "alone" / name
        params, info = _final(spread)
        alone_params, alone_info = _final(alone)
        differences[name] = _differences(params, alone_params)
        assert info["step"] == alone_info["step"] and info["best"]["epoch"] == alone_info["best"]["epoch"]
        spread_h, alone_h = _history(spread), _history(alone)
        assert [r["epoch"] for r in spread_h] == [r["epoch"] for r in alone_h] == [1, 2]
        for a, b in zip(spread_h, alone_h):
            assert a.keys() == b.keys()
            for key in a:
                if isinstance(a[key], dict):  # test metrics: the same predictions
                    assert a[key] == pytest.approx(b[key], abs=1e-9), key
                else:
                    assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    print("largest parameter difference (absolute, relative to the leaf's scale), spread vs alone:", differences)
    # Float rounding only: XLA batches the runs' matrix products (largest seen: 1.4e-5 on a bias of 8).
    assert max(relative for _, relative in differences.values()) < 1e-5


@pytest.mark.slow  # trains in two processes of their own (the fixture above)
def test_a_stopped_spread_program_resumes_every_run_exactly(trained):
    import jax

    # Stopped in epoch 2's first call: each run saved its steps of epoch 2 (4 of 5, 3 of 4, 4 of 5).
    assert json.loads((trained / "stopped_steps.json").read_text()) == [9, 7, 9]
    for name, *_ in TRIPLE:
        resumed, reference = trained / "stopped" / name, trained / "triple" / name
        params, info = _final(resumed)
        reference_params, reference_info = _final(reference)
        jax.tree.map(np.testing.assert_array_equal, params, reference_params)
        assert info["best"]["epoch"] == reference_info["best"]["epoch"]
        assert [r["test"] for r in _history(resumed)] == [r["test"] for r in _history(reference)]


def test_auto_and_impossible_placements():
    from pthnet_jax.run_placement import SPREAD_WHEN_AUTO, resolve
    from pthnet_jax.train import TrainingError

    auto_many = "spread" if SPREAD_WHEN_AUTO else "inside"
    assert resolve("auto", runs=4, global_batch=32, devices=2, processes=1) == auto_many
    assert resolve("auto", runs=1, global_batch=32, devices=2, processes=1) == "inside"  # fewer runs than devices
    assert resolve("auto", runs=8, global_batch=32, devices=1, processes=1) == "inside"  # one device
    assert resolve("auto", runs=8, global_batch=32, devices=2, processes=2) == "inside"  # several processes
    assert resolve("auto", runs=2, global_batch=9, devices=2, processes=1) == "spread"  # 9 does not split over 2
    assert resolve("inside", runs=8, global_batch=32, devices=2, processes=1) == "inside"
    assert resolve("spread", runs=3, global_batch=32, devices=4, processes=1) == "spread"
    assert resolve("spread", runs=3, global_batch=32, devices=1, processes=1) == "inside"
    with pytest.raises(TrainingError, match="'spread' runs in one process; this run has 2 processes"):
        resolve("spread", runs=4, global_batch=32, devices=2, processes=2)
    with pytest.raises(TrainingError, match="runs_placement must be one of auto, inside, spread, got 'wide'"):
        resolve("wide", runs=4, global_batch=32, devices=2, processes=1)


def test_placement_is_a_checked_config_key_that_may_change_on_resume(tmp_path):
    from pthnet_jax.config_check import ConfigError, validate_config
    from pthnet_jax.workdir import identity_differences

    config = tiny_config(tmp_path)
    assert config.train.runs_placement == "auto"
    config.train.runs_placement = "wide"
    with pytest.raises(ConfigError, match="train.runs_placement"):
        validate_config(config)
    before, after = {"config": {"train": {"runs_placement": "inside"}}}, {"config": {"train": {"runs_placement": "spread"}}}
    assert identity_differences(before, after) == []
    assert identity_differences({"config": {"train": {"seed": 0}}}, {"config": {"train": {"seed": 1}}})


def test_spread_layout_pads_runs_and_keeps_each_run_whole():
    import jax

    from pthnet_jax.run_placement import Spread

    place = Spread(3)  # the suite's 4 fake devices: one run per device, one inert run
    assert place.padded == 4
    states = [{"w": np.full((2,), k, np.float32)} for k in range(3)]
    placed = place.put_states(states)
    assert placed["w"].shape == (4, 2) and len(placed["w"].sharding.device_set) == 4
    assert [float(s["w"][0]) for s in place.states(placed)] == [0.0, 1.0, 2.0]
    indices = np.arange(3 * 5 * 8, dtype=np.int32).reshape(3, 5, 8)
    plan_i, plan_v = place.chunk(indices, np.ones((3, 5, 8), bool), 4, 3)  # steps 4..6 of 5: two past the end
    assert plan_i.shape == plan_v.shape == (4, 3, 8)  # every run's whole global batch
    host_v = np.asarray(plan_v)
    assert host_v[:3, 0].all() and not host_v[:3, 1:].any() and not host_v[3].any()
    np.testing.assert_array_equal(np.asarray(plan_i)[:3, 0], indices[:, 4])
    one_device = [shard.data.shape for shard in plan_i.addressable_shards]
    assert one_device == [(1, 3, 8)] * 4
    assert place.metrics({"loss": jax.numpy.ones((4, 3))})["loss"].shape == (3, 3)


def test_folds_placement_flag_sets_the_config(tmp_path, monkeypatch):
    from pthnet_jax.commands import folds

    seen = []
    monkeypatch.setattr(folds, "run_folds", lambda config, *args: seen.append(config.train.runs_placement) or {})
    argv = ["--config", "tiny", "--config.benchmark=DFEW", "--data", str(tmp_path / "d_{fold}"), "--workdir",
            str(tmp_path / "w"), "--folds", "1", "--parallel", "2"]
    assert folds.main(argv + ["--placement", "spread"]) == 0 and folds.main(argv) == 0
    assert seen == ["spread", "auto"]
    assert folds.main(argv + ["--placement", "wide"]) == folds.USAGE_EXIT


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])
