"""`pthnet bench --small`: a short run end to end, as a new user meets it on a small benchmark.

Both sides run in a fresh process and are timed from the process's start to its exit: pthnet-jax as
`pthnet train --config <ferv39k.py>` with a cold compilation cache (the published 20-epoch recipe,
evaluation every epoch, checkpoints), the PyTorch baseline with the same epochs, evaluating the test
split after every epoch as the original's script does. Default size: 480 / 120 clips (FERv39k-like
window counts), the size where fixed costs (start-up, compilation, saves) decide.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pthnet_jax.fsutil import atomic_write_json


def _timed(args: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run(args, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:6])} ... failed with exit status {done.returncode}; see its output above")
    return time.perf_counter() - started


def run_jax(data_dir: Path, workdir: Path, epochs: int, model: str) -> dict[str, Any]:
    from pthnet_jax.configs import ferv39k

    run_dir, cache = workdir / "small-jax-run", workdir / "small-xla-cache"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    command = [sys.executable, "-m", "pthnet_jax.cli", "train", "--config", ferv39k.__file__,
               f"--config.data.data_dir={data_dir}", f"--workdir={run_dir}", f"--config.train.epochs={epochs}",
               # the recipe's milestones that a shorter run reaches (all of them at 20 epochs)
               f"--config.optim.milestones={tuple(m for m in ferv39k.get_config().optim.milestones if m <= epochs)}"]
    if model == "tiny":  # the baseline's model, costs.model_config("tiny"), on the benchmark's 1408-dim features
        from pthnet_jax.benchmarks.costs import model_config

        tiny = model_config("tiny")
        command += [f"--config.model.n_embd={tiny.n_embd}", f"--config.model.mlp_dim={tiny.mlp_dim}",
                    f"--config.model.arch={tuple(tiny.arch)}"]
    wall = _timed(command, {"PTHNET_COMPILATION_CACHE": str(cache)})
    summary = json.loads((run_dir / "summary.json").read_text())
    last = summary["last"]["test"]
    return {"wall_s": wall, "time": summary.get("time", {}), "test_UAR_last_epoch": last["UAR"],
            "test_WAR_last_epoch": last["WAR"], "command": " ".join(command)}


def run_torch(root: Path, workdir: Path, epochs: int, model_kwargs: dict[str, Any], device: str,
              workers: int | None) -> dict[str, Any]:
    spec_path, out_path = workdir / ".small-torch-spec.json", workdir / "small-torch-result.json"
    atomic_write_json(spec_path, {
        "root": str(root), "list_dir": str(root / "annotation" / "FERv39k"),
        "model_kwargs": model_kwargs, "epochs": epochs, "device": device,
        "num_workers": workers, "eval_every_epoch": True})
    out_path.unlink(missing_ok=True)
    wall = _timed([sys.executable, "-m", "pthnet_jax.benchmarks.torch_baseline", str(spec_path), str(out_path)])
    return {"wall_s": wall, **json.loads(out_path.read_text())}


def report(ours: dict[str, Any], theirs: dict[str, Any] | None) -> str:
    parts = ours.get("time", {})
    lines = [f"end to end (process start to exit): pthnet-jax {ours['wall_s']:.1f}s"
             + (f", PyTorch {theirs['wall_s']:.1f}s, ratio {theirs['wall_s'] / ours['wall_s']:.2f}x"
                if theirs else "")]
    if parts:
        from pthnet_jax.timing import describe

        lines.append(f"pthnet-jax run: {describe(parts, top=4)}")
    if theirs:
        lines.append(f"PyTorch run: start-up {theirs['startup_s']:.1f}s, training {theirs['train_s']:.1f}s, "
                     f"evaluation {theirs['eval_in_training_s'] + theirs['eval_s']:.1f}s, the rest "
                     f"{theirs['wall_s'] - theirs['startup_s'] - theirs['train_s'] - theirs['eval_in_training_s'] - theirs['eval_s']:.1f}s "
                     "(interpreter, imports, worker shutdown)")
    return "\n".join(lines)
