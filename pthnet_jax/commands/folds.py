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

`--parallel K` (or `config.train.parallel_runs`) trains K of the protocol's runs at a time in one
program, the step `vmap`ped over a run axis (`pthnet_jax.runs`): each run ends as it would alone and
writes the same workdir (`--placement`: where the runs sit on several local devices,
`pthnet_jax.run_placement`). `--seeds N` trains every fold and direction with N seeds (`train.seed`,
+1, ...; workdirs `fold_K[_rv]_seedS`) and reports the mean +- std over folds and seeds.
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
         "[--mu 0.7]] [--folds 1-5] [--parallel K [--placement auto|inside|spread]] [--seeds N] [--import-root ROOT [--import-args '...']] "
         "[--config.a.b=v ...]\n"
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
        expected = {"benchmark": benchmark, "fold": fold}
        if reverse or getattr(task, "fusion", True) is not None:  # a family without fusion records no direction
            expected["reverse"] = reverse
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


def protocol_runs(data: dict[int, Path], rv_data: dict[int, Path], workdir: Path, seeds: list[int]
                  ) -> list[tuple[str, int, int, Any]]:
    """(direction, fold, seed, RunSpec) of every run: per fold forward (and backward), per seed.

    One seed keeps today's workdirs (WORKDIR/fold_K, fold_K_rv); several add `_seedS`."""
    from pthnet_jax.runs import RunSpec

    runs = []
    for fold in data:
        for direction, directory, suffix in (("forward", data[fold], ""), ("backward", rv_data.get(fold), "_rv")):
            if directory is None:
                continue
            for seed in seeds:
                name = f"fold_{fold}{suffix}" + (f"_seed{seed}" if len(seeds) > 1 else "")
                runs.append((direction, fold, seed, RunSpec(name, workdir / name, str(directory), seed=seed)))
    return runs


def run_folds(config, data_pattern: str, workdir: Path, folds: list[int], rv_pattern: str | None = None,
              mu: float = 0.7, import_root: Path | None = None, import_args: list[str] | None = None,
              parallel_runs: int | None = None, num_seeds: int = 1) -> dict[str, Any] | None:
    """Check (and import) every fold, train each (resuming; `parallel_runs` at a time in one program),
    fuse; write WORKDIR/folds.json and return its content, or None when interrupted."""
    from pthnet_jax.evaluation import evaluate
    from pthnet_jax.runs import train_runs
    from pthnet_jax.train import task_of

    task = task_of(config)
    metrics, shown = tuple(task.metrics), tuple(task.metrics[:2])
    if rv_pattern is not None and task.fusion is None:
        raise FoldsError(f"--rv-data: {task.display_name} defines no forward/backward fusion")
    workdir = Path(workdir).absolute()
    data, rv_data = fold_dirs(data_pattern, folds), fold_dirs(rv_pattern, folds)
    prepare_folds(config.benchmark, folds, data, rv_data, import_root, import_args or [], task)
    parallel_runs = int(parallel_runs or config.train.get("parallel_runs", 1))
    seeds = [int(config.train.seed) + i for i in range(num_seeds)]
    runs = protocol_runs(data, rv_data, workdir, seeds)
    rows: dict[str, dict[Any, dict[str, Any]]] = {"forward": {}, "backward": {}, "fused": {}}
    if parallel_runs > 1:
        print(f"\n=== {config.benchmark}: {len(runs)} runs, {parallel_runs} at a time in one program", flush=True)
        summaries = train_runs(config, [spec for *_, spec in runs], parallel_runs)
        if summaries is None:
            return None
        for (direction, fold, seed, _), summary in zip(runs, summaries):
            rows[direction][(fold, seed)] = fold_result(summary, metrics)
    for fold in folds:
        for direction, _, seed, spec in (run for run in runs if run[1] == fold and parallel_runs == 1):
            print(f"\n=== {config.benchmark} fold {fold} ({direction}) of {folds}: {spec.data_dir} -> {spec.workdir}",
                  flush=True)
            result = train_fold(config if len(seeds) == 1 else _with_seed(config, seed), Path(spec.data_dir),
                                spec.workdir)
            if result is None:
                return None
            rows[direction][(fold, seed)] = result
        for seed in seeds if rv_data else []:
            suffix = f"_seed{seed}" if len(seeds) > 1 else ""
            fused, _ = evaluate(workdir / f"fold_{fold}{suffix}" / "best", data[fold], "test",
                                workdir / f"fold_{fold}_rv{suffix}" / "best", rv_data[fold], mu)
            rows["fused"][(fold, seed)] = {m: float(fused[m]) for m in metrics}
        print(f"fold {fold}: " + "  ".join(
            f"{d} " + " ".join(f"{m} {np.mean([v[m] for (k, _), v in r.items() if k == fold]):.2f}" for m in shown)
            for d, r in rows.items() if any(k == fold for k, _ in r)), flush=True)
    result = {"benchmark": config.benchmark, "model_selection": config.train.select_on,
              **_block(rows["forward"], seeds, metrics)}
    if rv_data:
        result["backward"] = _block(rows["backward"], seeds, metrics)
        result["fused"] = {"mu": mu, **_block(rows["fused"], seeds, metrics)}
    atomic_write_json(workdir / "folds.json", result)
    lines = [("forward", result)] + ([("backward", result["backward"]), (f"fused (mu={mu})", result["fused"])]
                                     if rv_data else [])
    over = f"{len(folds)} folds" + (f" x {len(seeds)} seeds" if len(seeds) > 1 else "")
    print(f"\n{config.benchmark}, {over} (checkpoints selected on {config.train.select_on}):")
    for name, block in lines:
        print(f"  {name:<16}" + "  ".join(f"{m} {block['mean'][m]:.2f} ± {block['std'][m]:.2f}" for m in shown))
    print(f"-> {workdir / 'folds.json'}")
    return result


def _with_seed(config, seed: int):
    import ml_collections

    result = ml_collections.ConfigDict(config.to_dict())
    result.train.seed = seed
    return result


def _block(rows: dict[tuple[int, int], dict[str, Any]], seeds: list[int], metrics: tuple[str, ...]) -> dict[str, Any]:
    """One direction's results: per fold (one seed: as before), or per run and per fold's mean over
    seeds (several seeds); mean and population std over every fold and seed."""
    if len(seeds) == 1:
        return {"folds": {str(fold): v for (fold, _), v in rows.items()}, **summarize(rows, metrics)}
    folds = sorted({fold for fold, _ in rows})
    per_fold = {str(f): {m: float(np.mean([v[m] for (k, _), v in rows.items() if k == f])) for m in metrics}
                for f in folds}
    return {"seeds": seeds, "runs": {f"{fold}/seed{seed}": v for (fold, seed), v in rows.items()},
            "folds": per_fold, **summarize(rows, metrics), "num_runs": len(rows)}


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
    flags.DEFINE_integer("parallel", None, "train this many of the protocol's runs at a time in one program "
                         "(jax.vmap over runs; default config.train.parallel_runs)", flag_values=values)
    flags.DEFINE_enum("placement", None, ["auto", "inside", "spread"], "with several local devices: the --parallel "
                      "runs inside each device's program or spread over the devices (config.train.runs_placement)",
                      flag_values=values)
    flags.DEFINE_integer("seeds", 1, "seeds per fold and direction (config.train.seed, +1, ...): the summary is "
                         "the mean +- std over folds and seeds", flag_values=values)
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
        if values.placement is not None:
            config.train.runs_placement = values.placement
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
        if root and config.get("family", "pthnet") != "pthnet":
            raise FoldsError(f"--import-root imports PTH-Net's features; a {config.family} run reads its own data "
                             "(import each fold first, e.g. `pthnet import-clips --fold K`)")
        for name in ("parallel", "seeds"):
            if values[name].value is not None and values[name].value < 1:
                raise FoldsError(f"--{name} must be >= 1, got {values[name].value}")
        result = run_folds(config, values.data, Path(values.workdir), folds, values["rv-data"].value, values.mu,
                           Path(root) if root else None, shlex.split(values["import-args"].value),
                           values.parallel, values.seeds)
    except (TrainingError, ValueError, RuntimeError, OSError) as err:
        print(f"pthnet folds: {err}\n{usage.splitlines()[0]}", file=sys.stderr)
        return USAGE_EXIT
    if result is None:
        print("pthnet folds: interrupted, re-run to resume (the same command continues the unfinished fold "
              "and skips the finished ones)", file=sys.stderr)
        return INTERRUPTED_EXIT
    return 0
