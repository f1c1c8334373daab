"""The GPU report (`scripts/gpu_report.py`): its runner (budgets, skips, kills, files), its
in-memory data, the PyTorch baseline's on-device sampling, the wheel script, and (slow) every part
of the report at tiny sizes on the CPU, so that it cannot rot before a session is lent a GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pthnet_jax.benchmarks import gpu_parts
from pthnet_jax.benchmarks.gpu_parts import PARTS, Part, run_report

ROOT = Path(__file__).resolve().parents[1]
OK = "pthnet_jax.benchmarks.gpu_parts:selfcheck_ok"
HANG = "pthnet_jax.benchmarks.gpu_parts:selfcheck_hang"


def _check_files(out: Path, names) -> dict:
    report = json.loads((out / "gpu_report.json").read_text())
    markdown = (out / "gpu_report.md").read_text()
    assert list(report["parts"]) == list(names)
    for name, entry in report["parts"].items():
        assert entry["status"] in ("measured", "skipped"), (name, entry)
        if entry["status"] == "skipped":
            assert entry["reason"], name
            assert f"| {name} | skipped | " in markdown and entry["reason"][:40].replace("|", "/") in markdown
        else:
            assert entry["result"]["summary"], name
            assert f"| {name} | measured | " in markdown
    for key in ("device", "driver", "jax / jaxlib", "date", "command"):
        assert f"- {key}: " in markdown
    return report


def test_runner_measures_skips_and_kills(tmp_path):
    parts = {"first": Part(OK, 30, tiny_budget_s=30), "zero": Part(OK, 30, tiny_budget_s=30),
             "hang": Part(HANG, 30, tiny_budget_s=2), "second": Part(OK, 30, tiny_budget_s=30)}
    report = run_report(tmp_path / "out", tiny=True, budgets={"zero": 0}, scratch=tmp_path / "scratch",
                        command="test", parts=parts)
    _check_files(tmp_path / "out", parts)
    entries = report["parts"]
    assert entries["first"]["status"] == "measured" and entries["first"]["result"]["previous_parts"] == []
    assert entries["zero"] == {**entries["zero"], "status": "skipped", "reason": "its budget is 0 s"}
    hang = entries["hang"]
    assert hang["status"] == "skipped" and "ran past its budget of 2 s" in hang["reason"]
    assert hang["partial"] == {"started": True}  # recorded before the kill, kept
    assert hang["seconds"] < 15
    assert entries["second"]["result"]["previous_parts"] == ["first"]  # only measured parts are passed on
    assert not {"jax", "torch"} & set(entries["second"]["result"]["imported_packages"])  # the runner needs neither


def test_total_budget_spent_and_bad_names(tmp_path):
    parts = {"a": Part(OK, 30), "b": Part(OK, 30)}
    report = run_report(tmp_path / "out", budgets={}, total_s=0, scratch=tmp_path / "s", parts=parts)
    _check_files(tmp_path / "out", parts)
    assert all("total budget of 0 s is spent" in e["reason"] for e in report["parts"].values())
    with pytest.raises(ValueError, match="unknown part"):
        run_report(tmp_path / "out", budgets={"nope": 1}, parts=parts)
    assert set(PARTS) >= {"environment", "ceiling", "pthnet_float32", "pthnet_bfloat16", "pthnet_variants",
                          "torch_pthnet", "videomae_jax", "videomae_torch"}
    assert sum(p.budget_s for p in PARTS.values()) <= gpu_parts.TOTAL_BUDGET_S <= 480  # under 8 minutes


def test_training_stops_after_the_last_epoch_that_fits(tmp_path):
    import signal
    import time

    from pthnet_jax.benchmarks.gpu_pthnet import stop_training_at

    got = []

    def wait_for_signal(seconds):
        until = time.time() + seconds
        while not got and time.time() < until:
            time.sleep(0.05)

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))  # the trainer's handler
    try:
        with stop_training_at(tmp_path, time.time() - 1) as state:  # past the deadline, but no epoch yet
            wait_for_signal(1.0)
        assert got == [] and not state["stopped"]
        (tmp_path / "history.json").write_text(json.dumps([{"epoch_seconds": 100.0, "eval_seconds": 0.5}]))
        with stop_training_at(tmp_path, time.time() + 60) as state:  # the first epoch compiles: no prediction
            wait_for_signal(1.0)
        assert got == [] and not state["stopped"]
        with stop_training_at(tmp_path, time.time() - 1) as state:  # ... until the deadline has passed
            wait_for_signal(5.0)
        assert got == [signal.SIGTERM] and state == {"stopped": True, "after_epochs": 1}
        got.clear()
        (tmp_path / "history.json").write_text(json.dumps([{"epoch_seconds": 100.0}, {"epoch_seconds": 1.0}]))
        with stop_training_at(tmp_path, time.time() + 60) as state:  # the next epoch fits
            wait_for_signal(1.0)
        assert got == [] and not state["stopped"]
        (tmp_path / "history.json").write_text(json.dumps([{"epoch_seconds": 1.0}, {"epoch_seconds": 100.0}]))
        with stop_training_at(tmp_path, time.time() + 60) as state:  # a 100 s epoch would end past it
            wait_for_signal(5.0)
        assert got == [signal.SIGTERM] and state == {"stopped": True, "after_epochs": 2}
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_memory_splits_feed_open_split():
    from pthnet_jax.benchmarks.gpu_data import MEMORY_DATA_DIR, feature_split, make_split, memory_data
    from pthnet_jax.data import open_split

    arrays = make_split("train", 40, feature_dim=8)
    frames_rule = {"H": 4, "M": 8, "L": 16}
    for level, stride in frames_rule.items():  # every count follows 1 + ceil((frames - 16) / stride)
        assert (arrays.counts[level] >= 1).all() and arrays.counts[level].max() <= 1 + -(-(48 - 16) // stride)
        assert arrays.windows[level].shape == (arrays.counts[level].sum(), 8)
    assert (arrays.counts["H"] >= arrays.counts["M"]).all() and (arrays.counts["M"] >= arrays.counts["L"]).all()
    split = feature_split(arrays)
    record = split.read([3])[0]
    np.testing.assert_array_equal(record["features_M"], arrays.windows["M"][arrays.offsets["M"][3]:][
        :arrays.counts["M"][3]])
    assert record["label"] == arrays.labels[3] and split.num_classes == 7
    import pthnet_jax.data as data  # where PTH-Net's task opens its splits (imported at call time)
    from pthnet_jax.task import get_task

    with memory_data({"train": split}) as data_dir:
        assert data_dir == MEMORY_DATA_DIR and data.open_split(data_dir, "train") is split
        assert get_task("pthnet").open(data_dir, "train") is split  # what the trainer calls
        with pytest.raises(KeyError, match="no split 'test'"):
            data.open_split(data_dir, "test")
    assert data.open_split is open_split  # restored


def test_torch_resident_sampling_matches_the_original_rule():
    torch = pytest.importorskip("torch")
    from pthnet_jax.benchmarks.gpu_torch import _level_batch
    from pthnet_jax.benchmarks.torch_baseline import segment_picks

    counts = np.array([1, 5, 16, 17, 40, 3], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    windows = np.arange(counts.sum(), dtype=np.float32)[:, None].repeat(2, 1)  # row i holds i
    level = {"windows": torch.from_numpy(windows), "offsets": torch.from_numpy(offsets),
             "counts": torch.from_numpy(counts)}
    clips = torch.arange(len(counts))
    x, mask = _level_batch(torch, level, clips, 16, train=False)
    rng = np.random.default_rng(0)
    for i, count in enumerate(counts):
        picks = segment_picks(int(count), 16, False, rng)
        np.testing.assert_array_equal(x[i, 0, :len(picks)].numpy(), offsets[i] + picks)
        assert mask[i, 0].sum() == len(picks) and not x[i, :, len(picks):].any()
    x, mask = _level_batch(torch, level, clips, 8, train=True, noise_std=0.0)
    for i, count in enumerate(counts):
        if count >= 8:  # one window of each of the 8 segments
            edges = np.round(count / 8 * np.arange(9)).astype(int)
            picked = x[i, 0].numpy() - offsets[i]
            assert ((picked >= edges[:-1]) & (picked < edges[1:])).all()


def test_configs_and_convert_found_without_an_install():
    """The device runs the working tree with nothing installed: `pthnet_jax.configs` / `.convert`
    (pyproject's package-dir) come from the top-level folders through the report's finder."""
    code = ("import pthnet_jax.benchmarks.gpu_parts as g\n"
            "try:\n    import pthnet_jax.configs\nexcept ImportError:\n    print('absent before')\n"
            "g.install_folder_packages()\nimport pthnet_jax.configs.ferv39k as f, pthnet_jax.convert as c\n"
            "print(f.__file__, c.__file__, f.get_config().train.epochs)")
    paths = [str(ROOT)] + [p for p in sys.path if p and "site-packages" in p]  # no .pth files: no editable install
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": ":".join(paths), "PATH": "/usr/bin:/bin"}, cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.split("\n")
    assert lines[0] == "absent before"
    assert lines[1] == f"{ROOT / 'configs' / 'ferv39k.py'} {ROOT / 'convert' / '__init__.py'} 20"


def test_wheel_requirements_parse(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import fetch_gpu_wheels
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("demo-1.0.dist-info/METADATA", "Name: demo\nRequires-Dist: absl-py\nRequires-Dist: "
                         "PyYAML>=5 ; python_version>'3'\nRequires-Dist: pytest ; extra == \"test\"\n"
                         "Requires-Dist: Protobuf_X (>=3)\n")
    assert fetch_gpu_wheels.requirements(wheel) == ["absl-py", "pyyaml", "protobuf-x"]
    assert {"ml-collections", "tensorboardx"} <= {fetch_gpu_wheels.normalise(n) for n in fetch_gpu_wheels.WHEELS}


@pytest.mark.slow
def test_every_part_runs_tiny(tmp_path):
    """The report's own command at tiny sizes: every part measured (or skipped with a reason when the
    shared machine is too slow for its budget), two given a 0 budget: pthnet_variants (six more
    trainings) and pthnet_float32, whose code is pthnet_bfloat16's (gpu_pthnet._run) in the float32
    that every training test trains in (its profile is test_bench.py's); each compiles a minute."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user runs it
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_report.py"), "--out", str(out), "--tiny",
                           "--scratch", str(tmp_path / "scratch"), "--budget", "pthnet_variants=0",
                           "--budget", "pthnet_float32=0"], capture_output=True, text=True, timeout=1800, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = _check_files(out, PARTS)
    for name in ("pthnet_variants", "pthnet_float32"):
        assert report["parts"][name]["reason"] == "its budget is 0 s"
    measured = [n for n, e in report["parts"].items() if e["status"] == "measured"]
    # every part with a budget ran to its end (a part killed for its budget would pass unseen)
    assert set(measured) == set(PARTS) - {"pthnet_variants", "pthnet_float32"}, {
        n: e.get("reason") for n, e in report["parts"].items() if e["status"] != "measured"}
    for name in measured:  # the import chain stays within what the device has or gets as wheels
        assert not {"tensorflow_datasets", "array_record", "grain", "av"} & set(
            report["parts"][name]["result"]["imported_packages"]), name
