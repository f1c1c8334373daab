"""Several runs in one program, measured: a whole `pthnet folds` protocol end to end, and the
throughput of K runs vmapped on one device (the GPU report's part).

    python -m pthnet_jax.benchmarks.runs protocol --out DIR [--width tiny|default] [--epochs 2]
        [--clips 40 --test-clips 10] [--parallel 10] [--folds 1-5]
    python -m pthnet_jax.benchmarks.runs throughput --runs 1,4,16,64 [--width default] [--seconds 20]
        [--placement inside|spread|both] [--steps-per-call 32]

`protocol` writes synthetic DFEW-like features (5 folds, forward and backward), imports them, then
runs `pthnet folds` twice in processes of their own, each with a cold compilation cache: one run at a
time (today's command), then `--parallel K`; it reports both wall times, their ratio, and whether
the two `folds.json` agree. `throughput` times `train.steps_per_dispatch` steps per call of K runs
on one resident dataset (K seeds), K = 1 being today's un-vmapped program: runs x clips/s, and the
largest K that fits in memory (it keeps doubling K past the list until a run does not fit).
`--placement` (`pthnet_jax.run_placement`) times the runs inside each device's program (each run's
batch split over the local devices) or spread over the devices (whole runs per device), or both
for each K in one process; compare them with several local devices (on CPU:
XLA_FLAGS=--xla_force_host_platform_device_count=2).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence


def _config(width: str):
    from pthnet_jax.configs import default, tiny

    if width != "tiny":
        return default.get_config()
    config = tiny.get_config()
    config.model.arch = tiny.SMOKE_ARCH  # throughput at tiny width is a smoke run (the report's --tiny)
    return config


def make_protocol_data(root: Path, feature_dim: int, clips: int, test_clips: int, folds: Sequence[int]) -> Path:
    """Synthetic DFEW (`folds`, forward and backward) imported into root/data/dfew[_rv]_K."""
    from pthnet_jax.data.importer import import_features
    from pthnet_jax.data.synth import synthesize

    source = synthesize(root / "features", "DFEW", clips=clips, test_clips=test_clips, feature_dim=feature_dim,
                        quiet=True, signal=3.0, folds=list(folds))
    for fold in folds:
        for reverse in (False, True):
            import_features("DFEW", source, root / "data" / f"dfew{'_rv' if reverse else ''}_{fold}", fold=fold,
                            reverse=reverse, feature_dim=feature_dim, quiet=True)
    return root / "data"


def _folds_command(width: str, data: Path, workdir: Path, epochs: int, folds: str, parallel: int) -> list[str]:
    config = "tiny" if width == "tiny" else "dfew"
    command = [sys.executable, "-m", "pthnet_jax.cli", "folds", "--config", config, "--config.benchmark=DFEW",
               f"--config.train.epochs={epochs}", f"--config.optim.milestones=({max(1, epochs // 2)},)",
               "--data", str(data / "dfew_{fold}"), "--rv-data", str(data / "dfew_rv_{fold}"),
               "--workdir", str(workdir), "--folds", folds]
    return command + (["--parallel", str(parallel)] if parallel > 1 else [])


def protocol(out: Path, width: str = "tiny", epochs: int = 2, clips: int = 40, test_clips: int = 10,
             parallel: int = 10, folds: str = "1-5") -> dict[str, Any]:
    """`pthnet folds` one run at a time vs `--parallel K`, end to end, cold caches; the result dict."""
    from pthnet_jax.data.benchmarks import parse_folds

    out = Path(out).absolute()
    fold_list = parse_folds(folds, 5)
    feature_dim = _config(width).model.n_in
    started = time.perf_counter()
    data = make_protocol_data(out, feature_dim, clips, test_clips, fold_list)
    result: dict[str, Any] = {"width": width, "epochs": epochs, "clips": clips, "test_clips": test_clips,
                              "folds": fold_list, "runs": 2 * len(fold_list), "parallel": parallel,
                              "data_seconds": round(time.perf_counter() - started, 1)}
    for name, k in (("sequential", 1), ("parallel", parallel)):
        workdir = out / name
        env = {**os.environ, "PTHNET_COMPILATION_CACHE": tempfile.mkdtemp(prefix=f"runs-bench-{name}-")}
        load = os.getloadavg()[0]
        began = time.perf_counter()
        done = subprocess.run(_folds_command(width, data, workdir, epochs, folds, k), env=env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - began
        (out / f"{name}.log").write_text(done.stdout + done.stderr)
        if done.returncode:
            raise RuntimeError(f"pthnet folds ({name}) failed with status {done.returncode}: {done.stderr[-2000:]}")
        result[name] = {"seconds": round(seconds, 1), "load_before": round(load, 2),
                        "load_after": round(os.getloadavg()[0], 2),
                        "summary": json.loads((workdir / "folds.json").read_text())}
        print(f"{name}: {seconds:.1f} s (load {load:.1f})", flush=True)
    result["speedup"] = round(result["sequential"]["seconds"] / result["parallel"]["seconds"], 3)
    seq, par = result["sequential"]["summary"], result["parallel"]["summary"]
    result["same_results"] = _close(seq, par)
    (out / "runs_protocol.json").write_text(json.dumps(result, indent=1))
    return result


def _close(a: Any, b: Any, tol: float = 1e-6) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= tol * max(1.0, abs(a))
    return a == b


# ---- throughput of K runs in one program ------------------------------------------------------------

def _synthetic_store(model_config, clips: int, seed: int = 0):
    """A resident dataset in memory (no files): random windows, window counts like FERv39k's."""
    import numpy as np

    from pthnet_jax.data.sampling import ResidentFeatures

    rng = np.random.default_rng(seed)
    counts_h = rng.integers(4, 40, clips).astype(np.int32)
    counts = {"H": counts_h, "M": np.maximum(1, counts_h // 2), "L": np.maximum(1, counts_h // 4)}
    windows, offsets = {}, {}
    for level, c in counts.items():
        offsets[level] = np.concatenate([[0], np.cumsum(c)[:-1]]).astype(np.int32)
        windows[level] = rng.normal(size=(int(c.sum()), model_config.n_in)).astype(np.float32)
    labels = rng.integers(0, model_config.num_classes, clips).astype(np.int32)
    return ResidentFeatures(windows, offsets, {k: v.astype(np.int32) for k, v in counts.items()}, labels)


def runs_throughput(run_counts: Sequence[int], *, width: str = "default", clips: int = 2048, calls: int = 3,
                    seconds_left=None, grow: bool = True, record=None, placements: Sequence[str] = ("inside",),
                    per_call: int = 32) -> dict[str, Any]:
    """Training throughput of K runs in one program for each K; K = 1 is today's un-vmapped chunk.

    Returns {"rows": [{"runs", "clips_per_s" (all runs), "per_run_clips_per_s", "seconds_per_call",
    "compile_seconds", "placement"}], "largest_fitting": K, "first_failing": K or None}; a row per
    placement for each K > 1 (K = 1 is the un-vmapped program alone).
    """
    import jax
    import numpy as np

    from pthnet_jax import parallel, run_stack
    from pthnet_jax.optim import make_optimizer
    from pthnet_jax.task import get_task
    from pthnet_jax.train import model_config_from

    config = _config(width)
    config.model.num_classes = 7
    model_cfg = model_config_from(config)
    task = get_task("pthnet")
    model = task.model(model_cfg)
    batch = int(config.train.global_batch)
    if batch % parallel.local_device_count():
        batch = parallel.local_device_count() * max(1, batch // parallel.local_device_count())
    spe = clips // batch
    optimizer = make_optimizer(lr=0.005, momentum=0.9, weight_decay=1e-4, milestones=(10,), gamma=0.5,
                               steps_per_epoch=spe)
    store = parallel.replicate(_synthetic_store(model_cfg, clips))
    init = run_stack.jitted_init(task, model, optimizer.transform)
    rows, largest, failing = [], 0, None
    counts = list(run_counts)
    while counts:
        k = counts.pop(0)
        if seconds_left is not None and seconds_left() < 10:
            break
        try:
            for placement in placements if k > 1 else ("inside",):
                row = _time_runs(k, task, model, optimizer, store, init, batch, per_call, spe, calls, model_cfg,
                                 placement)
                rows.append(row)
        except Exception as err:  # noqa: BLE001 - XlaRuntimeError RESOURCE_EXHAUSTED: K runs do not fit
            if "RESOURCE_EXHAUSTED" not in str(err) and "out of memory" not in str(err).lower():
                raise
            failing = k
            break
        largest = max(largest, k)
        if record is not None:
            record(rows=rows, largest_fitting=largest)
        if grow and not counts and k >= max(run_counts):
            counts.append(2 * k)
    del np
    return {"width": width, "global_batch": batch, "steps_per_call": per_call, "device": str(jax.devices()[0]),
            "rows": rows, "largest_fitting": largest, "first_failing": failing}


def _time_runs(k, task, model, optimizer, store, init, batch, per_call, spe, calls, model_cfg,
               placement: str = "inside") -> dict[str, Any]:
    import jax
    import numpy as np

    from pthnet_jax import parallel, run_placement, run_stack, steps

    states = [jax.device_get(init(jax.random.key(seed))) for seed in range(k)]
    rng = np.random.default_rng(k)
    plan_i = rng.integers(0, spe * batch, (k, per_call, batch)).astype(np.int32)
    plan_v = np.ones((k, per_call, batch), bool)
    options = task.input_options(model_cfg)
    if k == 1:  # today's program: no run axis
        fn = steps.pmapped(steps.train_chunk, donate_state=True, task=task, model=model,
                           optimizer=optimizer.transform, options=options, sync="pmean")
        state = parallel.replicate(states[0])
        zeros = np.zeros((parallel.local_device_count(),), np.int32)
        args = lambda: (parallel.split_for_devices(plan_i[0], axis=1), parallel.split_for_devices(plan_v[0], axis=1),
                        zeros, zeros)
    elif placement == "spread":
        place = run_placement.Spread(k)
        fn = place.chunk_fn(task, model, (0.005, 0.9, 1e-4, (10,), 0.5), options, "pmean", True)
        state, store = place.put_states(states), place.shared_store(store)
        extra = (place.per_run([0] * k), place.per_run(range(k)), place.per_run([spe] * k))
        args = lambda: (*place.chunk(plan_i, plan_v, 0, per_call), *extra)
    else:
        fn = run_stack.runs_chunk_fn(task, model, (0.005, 0.9, 1e-4, (10,), 0.5), options, "pmean", True)
        state = parallel.replicate(run_stack.stack(states))
        extra = (run_stack.per_device([0] * k), run_stack.per_device(range(k)), run_stack.per_device([spe] * k))
        args = lambda: (*run_stack.chunk(plan_i, plan_v, 0, per_call), *extra)
    began = time.perf_counter()
    state, metrics = fn(state, store, *args())
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - began
    began = time.perf_counter()
    for _ in range(calls):
        state, metrics = fn(state, store, *args())
    jax.block_until_ready(metrics)
    per_call_s = (time.perf_counter() - began) / calls
    clips_per_s = k * per_call * batch / per_call_s
    return {"runs": k, "placement": placement, "clips_per_s": round(clips_per_s, 1), "per_run_clips_per_s": round(clips_per_s / k, 1),
            "seconds_per_call": round(per_call_s, 4), "first_call_seconds": round(compile_seconds, 2)}


def gpu_part(ctx) -> dict[str, Any]:
    """The GPU report's part (`gpu_parts.PARTS`): K = 1, 4, 16, 64 runs (then doubling until one
    does not fit), runs x clips/s; with `ctx.tiny` the tiny model, K = 1, 2, 2 steps per call (CPU,
    seconds: the code path, not a figure)."""
    tiny = ctx.tiny
    result = runs_throughput((1, 2) if tiny else (1, 4, 16, 64), width="tiny" if tiny else "default",
                             clips=64 if tiny else 2048, calls=1 if tiny else 3, seconds_left=ctx.remaining,
                             grow=not tiny, record=ctx.record, per_call=2 if tiny else 32)
    rows = {r["runs"]: r for r in result["rows"]}
    base = rows.get(1, {}).get("clips_per_s")
    ratio = {k: round(r["clips_per_s"] / base, 2) for k, r in rows.items()} if base else {}
    result["speedup_vs_one_run"] = ratio
    result["summary"] = (", ".join(f"K={k}: {r['clips_per_s']:.0f} clips/s ({ratio.get(k, 0):.1f}x)"
                                   for k, r in rows.items())
                         + f"; largest K that fits {result['largest_fitting']}")
    return result


def _print_latest(rows: list[dict[str, Any]], largest_fitting: int) -> None:
    """Each K's rows as they come (stderr): a long measurement shows its figures before it ends."""
    for row in rows:
        if row["runs"] == largest_fitting:
            print(json.dumps(row), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pthnet_jax.benchmarks.runs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("protocol")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--width", choices=("tiny", "default"), default="tiny")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--clips", type=int, default=40)
    p.add_argument("--test-clips", type=int, default=10)
    p.add_argument("--parallel", type=int, default=10)
    p.add_argument("--folds", default="1-5")
    t = sub.add_parser("throughput")
    t.add_argument("--runs", default="1,4,16,64")
    t.add_argument("--width", choices=("tiny", "default"), default="default")
    t.add_argument("--clips", type=int, default=2048)
    t.add_argument("--calls", type=int, default=3)
    t.add_argument("--placement", choices=("inside", "spread", "both"), default="inside")
    t.add_argument("--steps-per-call", type=int, default=32)
    args = parser.parse_args(argv)
    if args.what == "protocol":
        result = protocol(args.out, args.width, args.epochs, args.clips, args.test_clips, args.parallel, args.folds)
        result = {k: v for k, v in result.items() if k not in ("sequential", "parallel")} | {
            k: {kk: vv for kk, vv in result[k].items() if kk != "summary"} for k in ("sequential", "parallel")}
    else:
        result = runs_throughput([int(k) for k in args.runs.split(",")], width=args.width, clips=args.clips,
                                 calls=args.calls, grow=False, per_call=args.steps_per_call,
                                 record=_print_latest,
                                 placements=("inside", "spread") if args.placement == "both" else (args.placement,))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
