"""Input-pipeline throughput (clips/s) on FERv39k-sized synthetic data: resident vs streaming.

    python -m pthnet_jax.benchmarks.pipeline            # 31,088 train / 7,847 test clips, 1408-d (a few minutes)
    python -m pthnet_jax.benchmarks.pipeline --quick    # 2,000 / 500 clips, fewer batches (about a minute)
    python -m pthnet_jax.benchmarks.pipeline --data DIR # an already imported dataset (skips synth and import)

Synthesizes features in the original layout (window counts from the real FERv39k lists when
../shared/data is present), imports them, then times `iterate_batches` (host numpy batches, what a
trainer consumes batch by batch) in both modes, training and evaluation, and the on-device sampler
in a `lax.scan` (how the trainer consumes resident data). The first batch of every run (compilation)
is not timed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax

from pthnet_jax import data
from pthnet_jax.data.importer import import_features
from pthnet_jax.data.pipeline import resident_features
from pthnet_jax.data.synth import synthesize


def time_iterator(split, *, mode: str, train: bool, batch: int, max_batches: int, threads: int) -> dict:
    """clips/s of one epoch's `iterate_batches` (at most `max_batches` timed batches)."""
    iterator = data.iterate_batches(split, train=train, global_batch=batch, seed=0, epoch=0, mode=mode,
                                    num_threads=threads)
    next(iterator)  # compilation, first reads
    clips, batches, started = 0, 0, time.perf_counter()
    for batch_dict in iterator:
        clips += int(batch_dict["valid"].sum())
        batches += 1
        if batches >= max_batches:
            break
    elapsed = time.perf_counter() - started
    return {"mode": mode, "train": train, "batches": batches, "clips": clips, "seconds": elapsed,
            "clips_per_s": clips / elapsed}


def time_device_sampler(split, *, batch: int, steps: int) -> dict:
    """clips/s of `sample_batch` inside a jitted `lax.scan` over resident features (training)."""
    from pthnet_jax import parallel

    resident = parallel.first_device(resident_features(split, data.LEVELS))
    plan, valid = data.batch_plan(data.epoch_order(split.num_clips, seed=0, epoch=0, shuffle=True),
                                  global_batch=batch)
    chunks = len(plan) // steps

    @jax.jit
    def run(resident, plan, valid, epoch):
        def body(total, step):
            out = data.sample_batch(resident, step[0], step[1], seed=0, epoch=epoch, train=True)
            # Reduce so the work is not optimised away, without a host transfer per step.
            return total + sum(x[:, 0, 0].sum() for x in out["features"].values()), None
        return jax.lax.scan(body, 0.0, (plan, valid))[0]

    jax.block_until_ready(run(resident, plan[:steps], valid[:steps], 0))
    started = time.perf_counter()
    for chunk in range(1, chunks):
        window = slice(chunk * steps, (chunk + 1) * steps)
        jax.block_until_ready(run(resident, plan[window], valid[window], 0))
    elapsed = time.perf_counter() - started
    clips = int(valid[steps:chunks * steps].sum())
    return {"mode": "resident, on-device scan", "train": True, "batches": (chunks - 1) * steps, "clips": clips,
            "seconds": elapsed, "clips_per_s": clips / elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small run: 2,000 train clips, 100 batches")
    parser.add_argument("--data", type=Path, help="an imported dataset to use instead of synthesizing one")
    parser.add_argument("--workdir", type=Path, help="where to synthesize and import (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the synthesized and imported data")
    parser.add_argument("--clips", type=int, help="training clips (default 31,088, FERv39k's size)")
    parser.add_argument("--feature-dim", type=int, default=1408)
    parser.add_argument("--batch", type=int, default=32, help="global batch (the original's 32)")
    parser.add_argument("--max-batches", type=int, help="timed batches per run (default: 400, quick 100)")
    parser.add_argument("--threads", type=int, default=4, help="streaming reader threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    max_batches = args.max_batches or (100 if args.quick else 400)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pthnet-bench-pipeline-"))
    report: dict = {"device": str(jax.devices()[0]), "batch": args.batch}
    try:
        data_dir = args.data
        if data_dir is None:
            clips = args.clips or (2000 if args.quick else None)
            started = time.perf_counter()
            root = synthesize(workdir / "root", "FERv39k", clips=clips, test_clips=None if clips is None else
                              max(1, round(clips * 7847 / 31088)), feature_dim=args.feature_dim, reverse=False,
                              quiet=True)
            report["synth_s"] = time.perf_counter() - started
            started = time.perf_counter()
            data_dir = import_features("FERv39k", root, workdir / "data", feature_dim=args.feature_dim, quiet=True)
            report["import_s"] = time.perf_counter() - started
        train, test = data.open_split(data_dir, "train"), data.open_split(data_dir, "test")
        report.update(train_clips=train.num_clips, test_clips=test.num_clips,
                      train_feature_gb=train.feature_bytes() / 1e9)
        print(f"FERv39k-like data: {train.num_clips} train / {test.num_clips} test clips, "
              f"{train.feature_bytes() / 1e9:.2f} GB of training features"
              + (f"; synth {report['synth_s']:.0f}s, import {report['import_s']:.0f}s" if "synth_s" in report else ""),
              flush=True)
        started = time.perf_counter()
        resident_features(train, data.LEVELS)
        resident_features(test, ("H",))
        report["resident_load_s"] = time.perf_counter() - started
        print(f"resident load (read every record once, place on {report['device']}): "
              f"{report['resident_load_s']:.1f}s", flush=True)
        runs = []
        for mode in ("resident", "streaming"):
            for is_train, split in ((True, train), (False, test)):
                runs.append(time_iterator(split, mode=mode, train=is_train, batch=args.batch,
                                          max_batches=max_batches, threads=args.threads))
        runs.append(time_device_sampler(train, batch=args.batch, steps=50 if not args.quick else 20))
        report["runs"] = runs
        print(f"{'mode':<26}{'split':<7}{'batches':>8}{'clips/s':>12}")
        for run in runs:
            print(f"{run['mode']:<26}{'train' if run['train'] else 'eval':<7}{run['batches']:>8}"
                  f"{run['clips_per_s']:>12,.0f}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
    finally:
        if args.workdir is None and not args.keep:
            started = time.perf_counter()
            shutil.rmtree(workdir, ignore_errors=True)
            print(f"removed {workdir} in {time.perf_counter() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
