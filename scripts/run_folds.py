"""Train every fold of a multi-fold protocol and report the mean and std over folds.

    python scripts/run_folds.py --config configs/dfew.py --data "DATA/dfew_set{fold}" --workdir runs/dfew \
        [--folds 1-5] [--import-root ROOT [--import-args "--reverse"]] [--config.a.b=v ...]

DFEW, MAFW, CREMA-D, eNTERFACE05 and RAVDESS have 5 (RAVDESS 6) folds; CASME2 is leave-one-subject-out
over 26 sets. `--data` names one imported data directory per fold through a `{fold}` placeholder;
with `--import-root`, folds whose directory does not exist yet are imported first (`pthnet
import-features --dataset BENCHMARK --fold K --root ROOT --out DIR`). Each fold trains in
`WORKDIR/fold_K` exactly as `pthnet train` would (so running the command again resumes unfinished
folds and skips finished ones). Per fold, the reported numbers are the test-split UAR/WAR of the
checkpoint selected per `config.train.select_on` (the original: best test WAR; or a held-out
validation split); `WORKDIR/folds.json` holds every fold and the mean / std (population, ddof=0).
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pthnet_jax.fsutil import atomic_write_json

METRICS = ("UAR", "WAR", "weighted_f1")


def parse_folds(text: str | None, num_folds: int) -> list[int]:
    """'1-5', '1,3,4' or None (all folds) -> fold numbers, each checked against the benchmark."""
    if not text:
        return list(range(1, num_folds + 1))
    folds: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        try:
            folds.extend(range(int(low), int(high or low) + 1))
        except ValueError:
            raise ValueError(f"--folds: cannot read {part!r}; expected e.g. '1-5' or '1,3'") from None
    bad = [f for f in folds if not 1 <= f <= num_folds]
    if bad:
        raise ValueError(f"--folds: {bad} outside 1..{num_folds}")
    return folds


def summarize(per_fold: dict[int, dict[str, float]]) -> dict[str, Any]:
    """Mean and population std over folds of each metric."""
    table = {m: np.array([row[m] for row in per_fold.values()], float) for m in METRICS}
    return {"num_folds": len(per_fold),
            "mean": {m: float(v.mean()) for m, v in table.items()},
            "std": {m: float(v.std()) for m, v in table.items()}}


def fold_result(summary: dict[str, Any]) -> dict[str, Any]:
    """Test metrics of the selected checkpoint of one fold's training summary."""
    best = summary.get("best") or {}
    test = best.get("metrics", {}).get("test")
    if test is None:
        raise RuntimeError("the fold's training summary has no test metrics for its selected epoch")
    return {**{m: float(test[m]) for m in METRICS}, "epoch": best["epoch"], "selected_on": best["split"]}


def run_folds(config, data_pattern: str, workdir: Path, folds: list[int], import_root: Path | None = None,
              import_args: list[str] | None = None) -> dict[str, Any]:
    """Train each fold (resuming), then write WORKDIR/folds.json; returns its content."""
    import ml_collections

    from pthnet_jax.train import train_and_evaluate

    workdir = Path(workdir).absolute()
    per_fold: dict[int, dict[str, Any]] = {}
    for fold in folds:
        data_dir = Path(data_pattern.format(fold=fold)).absolute()
        if not data_dir.exists() and import_root is not None:
            from pthnet_jax.data.importer import main as import_main

            code = import_main(["--dataset", config.benchmark, "--fold", str(fold), "--root", str(import_root),
                                "--out", str(data_dir), *(import_args or [])])
            if code:
                raise RuntimeError(f"importing fold {fold} into {data_dir} failed (see above)")
        fold_config = ml_collections.ConfigDict(config.to_dict())
        fold_config.data.data_dir = str(data_dir)
        print(f"\n=== {config.benchmark} fold {fold} of {folds[-1]}: {data_dir} -> {workdir / f'fold_{fold}'}",
              flush=True)
        summary = train_and_evaluate(fold_config, workdir / f"fold_{fold}")
        if summary.get("interrupted"):  # SIGTERM: fold saved; the same command resumes it
            raise KeyboardInterrupt(f"stopped during fold {fold}; run the same command to resume")
        per_fold[fold] = fold_result(summary)
        print(f"fold {fold}: UAR {per_fold[fold]['UAR']:.2f}  WAR {per_fold[fold]['WAR']:.2f}", flush=True)
    result = {"benchmark": config.benchmark, "model_selection": config.train.select_on,
              "folds": {str(k): v for k, v in per_fold.items()}, **summarize(per_fold)}
    atomic_write_json(workdir / "folds.json", result)
    print(f"\n{config.benchmark}, {len(per_fold)} folds (checkpoints selected on {config.train.select_on}): "
          + "  ".join(f"{m} {result['mean'][m]:.2f} ± {result['std'][m]:.2f}" for m in ("UAR", "WAR"))
          + f"  -> {workdir / 'folds.json'}")
    return result


def main(argv: list[str]) -> int:
    from absl import flags

    from pthnet_jax.data import get_benchmark
    from pthnet_jax.commands.train import TrainingError, flag_error_text, run_flags

    values, argv = run_flags("run_folds.py", argv, data_help="data directory per fold, with a {fold} placeholder",
                             workdir_help="runs go to WORKDIR/fold_K")
    flags.DEFINE_string("folds", None, "e.g. '1-5' or '1,3' (default: all folds of the benchmark)",
                        flag_values=values)
    flags.DEFINE_string("import_root", None, "import missing folds from this feature root", flag_values=values)
    flags.DEFINE_string("import_args", "", "extra `pthnet import-features` options, e.g. '--reverse'",
                        flag_values=values)
    try:
        values(argv)
        if values.config is not None:
            values.config.to_dict()  # a config file that failed to load raises on first use
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError, OSError) as err:
        print(f"run_folds.py: {flag_error_text(err)}", file=sys.stderr)
        return 2
    if values.config is None or not values.data or not values.workdir or "{fold}" not in values.data:
        print("usage: run_folds.py --config configs/NAME.py --data 'DIR_{fold}' --workdir DIR [--folds 1-5] "
              "[--import-root ROOT] [--config.a.b=v ...]  (--data needs a {fold} placeholder)", file=sys.stderr)
        return 2
    try:
        folds = parse_folds(values.folds, get_benchmark(values.config.benchmark).num_folds)
        run_folds(values.config, values.data, Path(values.workdir), folds,
                  Path(values.import_root) if values.import_root else None, shlex.split(values.import_args))
    except (TrainingError, ValueError, RuntimeError) as err:
        print(f"run_folds.py: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
