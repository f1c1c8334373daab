"""`pthnet bench` end to end at a tiny size: both sides run, the table and JSON are complete and consistent."""
import contextlib
import json
import math
import os
import sys

import pytest

from pthnet_jax.benchmarks.speed import format_table, main, model_config

pytestmark = pytest.mark.slow  # end to end: runs whole programs

TRAIN, TEST, EPOCHS = 64, 24, 3


def matmul_flops_per_clip(config, levels=("H",)) -> float:
    """Multiply-adds of the model's matrix products, counted by hand from the architecture (x2)."""
    c, k_embd = config.n_embd, config.thr_size[0]
    per_layer_row = 2 * (4 * c * c + 2 * c * config.mlp_dim)  # q, k, v, proj + the two MLP layers
    total = 0.0
    for level in levels:
        t = config.level_lengths[level]
        rows = t * 2 * (k_embd * config.n_in * c) + t * (config.arch[0] - 1) * 2 * (k_embd * c * c)
        lengths = [t] * config.arch[1] + [t // 2] * config.arch[2] + [t // 4] * config.arch[3]
        for length in lengths:
            rows += length * per_layer_row + 2 * 2 * length * length * c  # + scores and weighted sum
        total += rows + 2 * c * config.num_classes
    return total


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    pytest.importorskip("torch")
    workdir = tmp_path_factory.mktemp("bench")
    argv = ["--workdir", str(workdir), "--train-clips", str(TRAIN), "--test-clips", str(TEST), "--model", "tiny",
            "--epochs", str(EPOCHS), "--torch-epochs", "2", "--torch-workers", "0", "--profile-steps", "1",
            "--eval-repeats", "1"]
    # Both sides show progress while they run (the children write to this process's stdout/stderr).
    log = workdir / "console.txt"
    saved = [os.dup(1), os.dup(2)]
    with open(log, "w", buffering=1) as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        os.dup2(sink.fileno(), 1), os.dup2(sink.fileno(), 2)
        try:
            code = main(argv)
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
    return code, json.loads((workdir / "results.json").read_text()), workdir, log.read_text()


def test_both_sides_measured_over_the_whole_data(bench_run, capsys):
    code, results, _, console = bench_run
    assert code == 0
    for text in ("== pthnet-jax:", "epoch 1/3", "== PyTorch baseline:", "PyTorch epoch 1/2", "PyTorch epoch 2/2",
                 "PyTorch evaluation", "load average (1/5/15 min): start"):
        assert text in console, text
    load = results["load_average"]
    assert set(load) == {"start", "after_jax", "after_torch"} and all(len(v) == 3 for v in load.values())
    ours, theirs = results["jax"], results["torch"]
    assert results["train_clips"] == TRAIN and results["test_clips"] == TEST
    # Every epoch saw every training clip and the evaluation every test clip, on both sides.
    assert ours["train_clips"] == pytest.approx(EPOCHS * TRAIN) and theirs["train_clips"] == 2 * TRAIN
    assert ours["eval_clips"] == TEST and theirs["eval_clips"] == TEST
    assert ours["epochs"] == EPOCHS and len(theirs["epoch_seconds"]) == 2
    for side in (ours, theirs):
        for key in ("train_clips_per_s", "train_clips_per_s_steady", "eval_clips_per_s", "startup_s",
                    "peak_host_memory_gib"):
            assert math.isfinite(side[key]) and side[key] > 0, (key, side[key])
    # The parts of the JAX run add up to its wall time.
    parts = ours["startup_s"] + ours["train_s"] + ours["eval_in_training_s"] + ours["checkpoint_s"]
    assert parts == pytest.approx(ours["wall_s"], rel=1e-6)


def test_flops_agree_with_a_count_by_hand(bench_run):
    _, results, _, _ = bench_run
    config = model_config("tiny")
    by_hand_eval = matmul_flops_per_clip(config)
    by_hand_forward_all = matmul_flops_per_clip(config, ("L", "M", "H"))
    flops = results["flops"]
    # XLA also counts the elementwise work, so its numbers are a little above the products alone.
    assert by_hand_eval <= flops["eval_flops_per_clip"] <= 1.3 * by_hand_eval
    # Training: the forward of the three levels and a backward of twice that, less the gradient with
    # respect to the input features, which nothing needs (the first embedding convolution).
    first_conv = sum(config.level_lengths.values()) * 2 * config.thr_size[0] * config.n_in * config.n_embd
    by_hand_train = 3 * by_hand_forward_all - first_conv
    assert by_hand_train <= flops["train_flops_per_clip"] <= 1.3 * by_hand_train
    ours = results["jax"]
    assert ours["achieved_train_tflops"] == pytest.approx(
        ours["train_clips_per_s_steady"] * flops["train_flops_per_clip"] / 1e12)


def test_table_ratios_and_profile(bench_run):
    _, results, _, _ = bench_run
    ours, theirs = results["jax"], results["torch"]
    table = results["table"]
    lines = {line[:50].strip(): line.split() for line in table.splitlines()[1:]}
    row = lines["evaluation clips/s (whole test split)"]
    assert float(row[-1].rstrip("x")) == pytest.approx(ours["eval_clips_per_s"] / theirs["eval_clips_per_s"], abs=0.0051)
    row = lines["start-up s (placement+compile / model+loaders)"]  # lower is better: theirs / ours
    assert float(row[-1].rstrip("x")) == pytest.approx(theirs["startup_s"] / ours["startup_s"], abs=0.0051)  # printed to 0.01
    profile = ours["profile"]
    assert profile["steps"] >= 1 and profile["op_ms_per_step"] > 0
    assert sum(profile["by_kind_ms_per_step"].values()) == pytest.approx(profile["op_ms_per_step"], rel=1e-6)
    assert profile["by_kind_ms_per_step"].get("matmul / convolution", 0) > 0


def test_table_without_baseline_marks_missing_ratios():
    table = format_table({"train_clips_per_s": 10.0, "eval_clips_per_s": 100.0, "startup_s": 2.0}, None)
    assert "evaluation clips/s" in table
    assert all(line.split()[-1] == "-" for line in table.splitlines()[1:])


def test_small_case_times_both_whole_runs_from_process_start(tmp_path):
    """`--small`: `pthnet train` and the baseline each run whole in a process of their own."""
    pytest.importorskip("torch")
    from pthnet_jax.timing import describe

    argv = ["--small", "--workdir", str(tmp_path), "--train-clips", "32", "--test-clips", "16", "--epochs", "2",
            "--model", "tiny", "--torch-workers", "0"]
    assert main(argv) == 0
    results = json.loads((tmp_path / "results-small.json").read_text())
    ours, theirs = results["jax"], results["torch"]
    assert results["epochs"] == 2 and "pthnet_jax.cli train" in ours["command"]
    parts = ours["time"]
    # The run's own clock: its parts add up and fit inside the wall time measured from outside.
    inner = sum(v for k, v in parts.items() if k not in ("total", "programs", "marks"))
    assert inner == pytest.approx(parts["total"], abs=0.05)
    assert 0 < parts["total"] <= ours["wall_s"] and parts["compile"] > 0 and parts["steps"] > 0
    assert 0 < parts["marks"]["first_step"] < parts["total"]
    # The baseline evaluated after the first epoch too (the original's script evaluates every epoch).
    assert theirs["eval_in_training_s"] > 0 and len(theirs["epoch_seconds"]) == 2
    assert theirs["startup_s"] + theirs["train_s"] + theirs["eval_s"] < theirs["wall_s"]
    ratio = float(results["report"].split("ratio ")[1].split("x")[0])
    assert ratio == pytest.approx(theirs["wall_s"] / ours["wall_s"], abs=0.006)
    assert describe(parts, top=4) in results["report"]
