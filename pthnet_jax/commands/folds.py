"""`pthnet folds`: train every fold of a multi-fold benchmark; mean +- std over folds.

    pthnet folds --config dfew --data 'data/dfew_{fold}' --workdir runs/dfew
                 [--rv-data 'data/dfew_rv_{fold}' [--mu 0.7]] [--folds 1-5]
                 [--import-root ROOT [--import-args '--face']] [--config.a.b=v ...]

DFEW, MAFW, CREMA-D and eNTERFACE05 have 5 folds, RAVDESS 6, CASME2 26 leave-one-subject-out sets.
`--data` names one imported data directory per fold through a `{fold}` placeholder; `--rv-data`
the time-reversed ones: then a backward model is trained per fold too and the forward and backward
models are fused (`mu * forward + (1 - mu) * backward`, the paper's protocol). With `--import-root`,
folds whose directory does not exist yet are imported first (`pthnet import-features --dataset
BENCHMARK --fold K --root ROOT --out DIR [--reverse]`). Every fold's data is imported and checked
(benchmark, fold, direction, splits) before any training starts.

Each fold trains in WORKDIR/fold_K (backward: WORKDIR/fold_K_rv) exactly as `pthnet train` would,
so running the command again resumes unfinished folds and skips finished ones. Per fold, the numbers
are the test-split UAR/WAR of the checkpoint selected per `config.train.select_on` (the original: best
test WAR; or a held-out validation split); WORKDIR/folds.json holds every fold and the mean / std
(population, ddof=0) of the forward, backward and fused numbers. Exit status: 0 done, 2 bad
arguments or data, 75 interrupted (re-run to resume).
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pthnet_jax.commands.train import (INTERRUPTED_EXIT, USAGE_EXIT, config_names, help_text, parse_flags,
                                       run_flags, wants_help)
from pthnet_jax.fsutil import atomic_write_json

METRICS = ("UAR", "WAR", "weighted_f1")  # PTH-Net's; a run reports its family's (`task.metrics`)
USAGE = ("usage: pthnet folds --config NAME|FILE --data 'DIR_{{fold}}' --workdir DIR [--rv-data 'RV_DIR_{{fold}}' "
         "[--mu 0.7]] [--folds 1-5] [--import-root ROOT [--import-args '...']] [--config.a.b=v ...]\n"
         "  NAME: one of {names}")


class FoldsError(ValueError):
    """Bad fold data or arguments, found before any training."""


def summarize(per_fold: dict[int, dict[str, float]], metrics: tuple[str, ...] = METRICS) -> dict[str, Any]:
    """Mean and population std over folds of each metric."""
    table = {m: np.array([row[m] for row in per_fold.values()], float) for m in metrics}
    return {"num_folds": len(per_fold),
            "mean": {m: float(v.mean()) for m, v in table.items()},
            "std": {m: float(v.std()) for m, v in table.items()}}


def fold_result(summary: dict[str, Any], metrics: tuple[str, ...] = METRICS) -> dict[str, Any]:
    """Test metrics of the selected checkpoint of one fold's training summary."""
    best = summary.get("best") or {}
    test = best.get("metrics", {}).get("test")
    if test is None:
        raise RuntimeError("the fold's training summary has no test metrics for its selected epoch")
    return {**{m: float(test[m]) for m in metrics}, "epoch": best["epoch"], "selected_on": best["split"]}


def fold_dirs(pattern: str | None, folds: list[int]) -> dict[int, Path]:
    return {} if pattern is None else {k: Path(pattern.format(fold=k)).absolute() for k in folds}


def prepare_folds(benchmark: str, folds: list[int], data: dict[int, Path], rv_data: dict[int, Path],
                  import_root: Path | None, import_args: list[str], task: Any = None) -> None:
    """Import missing fold directories (with `import_root`: PTH-Net's feature import), then check every
    one (what `task`'s datasets record); raises FoldsError listing every problem, before anything is
    trained."""
    from pthnet_jax.data.importer import main as import_main
    from pthnet_jax.evaluation import dataset_record, describe

    wanted = [(k, d, False) for k, d in data.items()] + [(k, d, True) for k, d in rv_data.items()]
    missing = [(k, d, rv) for k, d, rv in wanted if not d.exists()]
    if missing and import_root is None:
        raise FoldsError("no data for " + ", ".join(f"fold {k}{' (backward)' if rv else ''}: {d}" for k, d, rv in missing)
                         + "; import them (`pthnet import-features ... --fold K`) or pass --import-root ROOT")
    for fold, directory, reverse in missing:
        print(f"importing {benchmark} fold {fold}{' (backward)' if reverse else ''} -> {directory}", flush=True)
        code = import_main(["--dataset", benchmark, "--fold", str(fold), "--root", str(import_root),
                            "--out", str(directory), *(["--reverse"] if reverse else []), *import_args])
        if code:
            raise FoldsError(f"importing fold {fold} into {directory} failed (see above); nothing was trained")
    problems, label_sets = [], set()
    for fold, directory, reverse in wanted:
        try:
            record = dataset_record(directory, task)
        except (FileNotFoundError, ValueError) as err:
            problems.append(f"fold {fold}: {err}")
            continue
        expected = {"benchmark": benchmark, "fold": fold, "reverse": reverse}
        wrong = [f"{key} {record.get(key)!r} (expected {value!r})" for key, value in expected.items()
                 if str(record.get(key)).lower() != str(value).lower()]
        if wrong:
            problems.append(f"fold {fold}{' backward' if reverse else ''}: {directory} is {describe(record)}: "
                            + ", ".join(wrong))
        label_sets.add(record.get("label_set"))
    if len(label_sets) > 1:
        problems.append(f"the folds mix label sets {sorted(map(str, label_sets))}")
    if problems:
        raise FoldsError("the fold data is not what the protocol needs (nothing was trained):\n  "
                         + "\n  ".join(problems))


def train_fold(config, data_dir: Path, workdir: Path) -> dict[str, Any] | None:
    """One fold's training (resumes; a finished run returns at once); None when interrupted."""
    import ml_collections

    from pthnet_jax.commands.train import record_training_data
    from pthnet_jax.train import task_of, train_and_evaluate

    fold_config = ml_collections.ConfigDict(config.to_dict())
    fold_config.data.data_dir = str(data_dir)
    record_training_data(workdir, str(data_dir), config.get("family"))
    summary = train_and_evaluate(fold_config, workdir)
    return None if summary.get("interrupted") else fold_result(summary, tuple(task_of(config).metrics))


def run_folds(config, data_pattern: str, workdir: Path, folds: list[int], rv_pattern: str | None = None,
              mu: float = 0.7, import_root: Path | None = None, import_args: list[str] | None = None
              ) -> dict[str, Any] | None:
    """Check (and import) every fold, train each (resuming), fuse; write WORKDIR/folds.json and
    return its content, or None when interrupted."""
    from pthnet_jax.evaluation import evaluate
    from pthnet_jax.train import task_of

    task = task_of(config)
    metrics, shown = tuple(task.metrics), tuple(task.metrics[:2])
    if rv_pattern is not None and task.fusion is None:
        raise FoldsError(f"--rv-data: {task.display_name} defines no forward/backward fusion")
    workdir = Path(workdir).absolute()
    data, rv_data = fold_dirs(data_pattern, folds), fold_dirs(rv_pattern, folds)
    prepare_folds(config.benchmark, folds, data, rv_data, import_root, import_args or [], task)
    rows: dict[str, dict[int, dict[str, Any]]] = {"forward": {}, "backward": {}, "fused": {}}
    for fold in folds:
        runs = [("forward", data[fold], workdir / f"fold_{fold}")]
        if rv_data:
            runs.append(("backward", rv_data[fold], workdir / f"fold_{fold}_rv"))
        for direction, data_dir, run_dir in runs:
            print(f"\n=== {config.benchmark} fold {fold} ({direction}) of {folds}: {data_dir} -> {run_dir}", flush=True)
            result = train_fold(config, data_dir, run_dir)
            if result is None:
                return None
            rows[direction][fold] = result
        if rv_data:
            fused, _ = evaluate(workdir / f"fold_{fold}" / "best", data[fold], "test",
                                workdir / f"fold_{fold}_rv" / "best", rv_data[fold], mu)
            rows["fused"][fold] = {m: float(fused[m]) for m in metrics}
        print(f"fold {fold}: " + "  ".join(f"{d} " + " ".join(f"{m} {r[fold][m]:.2f}" for m in shown)
                                           for d, r in rows.items() if fold in r), flush=True)
    result = {"benchmark": config.benchmark, "model_selection": config.train.select_on,
              "folds": {str(k): v for k, v in rows["forward"].items()}, **summarize(rows["forward"], metrics)}
    if rv_data:
        result["backward"] = {"folds": {str(k): v for k, v in rows["backward"].items()}, **summarize(rows["backward"], metrics)}
        result["fused"] = {"mu": mu, "folds": {str(k): v for k, v in rows["fused"].items()}, **summarize(rows["fused"], metrics)}
    atomic_write_json(workdir / "folds.json", result)
    lines = [("forward", result)] + ([("backward", result["backward"]), (f"fused (mu={mu})", result["fused"])]
                                     if rv_data else [])
    print(f"\n{config.benchmark}, {len(folds)} folds (checkpoints selected on {config.train.select_on}):")
    for name, block in lines:
        print(f"  {name:<16}" + "  ".join(f"{m} {block['mean'][m]:.2f} ± {block['std'][m]:.2f}" for m in shown))
    print(f"-> {workdir / 'folds.json'}")
    return result


def define_flags(argv: list[str]):
    from absl import flags

    values, argv = run_flags("pthnet folds", argv, data_help="data directory per fold, with a {fold} placeholder",
                             workdir_help="runs go to WORKDIR/fold_K (and WORKDIR/fold_K_rv)")
    flags.DEFINE_string("rv-data", None, "time-reversed data directory per fold ({fold}): also train backward "
                        "models and report the fused forward+backward numbers", flag_values=values)
    flags.DEFINE_float("mu", 0.7, "fusion weight of the forward model", flag_values=values)
    flags.DEFINE_string("folds", None, "e.g. '1-5' or '1,3' (default: all folds of the benchmark)", flag_values=values)
    flags.DEFINE_string("import-root", None, "import missing folds from this feature root", flag_values=values)
    flags.DEFINE_string("import-args", "", "extra `pthnet import-features` options, e.g. '--face'",
                        flag_values=values)
    return values, argv


def main(argv: list[str]) -> int:
    from pthnet_jax.data import get_benchmark
    from pthnet_jax.data.benchmarks import parse_folds
    from pthnet_jax.train import TrainingError

    usage = USAGE.format(names=", ".join(config_names()))
    try:
        values, argv = define_flags(argv)
        if wants_help(argv[1:]):
            print(help_text(f"{__doc__}\n{usage}", values, argv))
            return 0
        config = parse_flags(values, argv)
        if config is None or not values.data or not values.workdir:
            raise FoldsError("--config, --data and --workdir are required")
        for name in ("data", "rv-data"):
            if values[name].value is not None and "{fold}" not in values[name].value:
                raise FoldsError(f"--{name} {values[name].value!r} needs a {{fold}} placeholder, e.g. 'data/dfew_{{fold}}'")
        if not 0.0 <= values.mu <= 1.0:
            raise FoldsError(f"--mu must be in [0, 1], got {values.mu}")
        bench = get_benchmark(config.benchmark)
        if bench.list_style != "fold":
            raise FoldsError(f"{bench.name} has a single train/test split, no folds: use `pthnet train` "
                             "(and `pthnet evaluate` to fuse forward and backward)")
        folds = parse_folds(values.folds, bench.num_folds)
        root = values["import-root"].value
        result = run_folds(config, values.data, Path(values.workdir), folds, values["rv-data"].value, values.mu,
                           Path(root) if root else None, shlex.split(values["import-args"].value))
    except (TrainingError, ValueError, RuntimeError, OSError) as err:
        print(f"pthnet folds: {err}\n{usage.splitlines()[0]}", file=sys.stderr)
        return USAGE_EXIT
    if result is None:
        print("pthnet folds: interrupted, re-run to resume (the same command continues the unfinished fold "
              "and skips the finished ones)", file=sys.stderr)
        return INTERRUPTED_EXIT
    return 0
