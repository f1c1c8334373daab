"""Many training runs in one program: K runs side by side, the step `vmap`ped over a run axis.

`train_runs(config, specs, parallel=K)` trains the runs `specs` (each a `RunSpec`: its workdir, data,
seed and optional clip subsets) K at a time. Every run keeps its own parameters, optimiser state,
random stream, data order and data, and writes its own workdir in `pthnet train`'s format
(checkpoints, `best/`, history, TensorBoard, curves, summary), so `pthnet evaluate`, `load_model` and
a later `pthnet train` on one of them need nothing new. A run trained with others ends with the
parameters, history and best epoch it gets alone (up to float rounding where XLA batches the
matrix products differently; tests/test_runs.py measures it).

K = 1 without clip subsets is today's trainer (`train.train_and_evaluate`, no `vmap`); this module
holds the only `if K > 1` of the package. Runs of one program need the same model, batch and
recipe (the folds, directions and seeds of a protocol do) and one data mode: resident (sampled on
the device, `run_stack`) or streaming (host batches, `run_stream`); they may differ in dataset size,
seed and data. A killed program, run again, resumes every run from its checkpoints.
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from pthnet_jax import reporting, run_stack, timing
from pthnet_jax.checkpoint import CheckpointError
from pthnet_jax.config_check import validate_config
from pthnet_jax.epochs import TrainingError
from pthnet_jax.fsutil import remove_stale_temp_files
from pthnet_jax.optim import make_optimizer, optimizer_options
from pthnet_jax.run_checkpoints import RunState, TrainCheckpoints
from pthnet_jax.task import state_sync
from pthnet_jax.train import (_check_model_fits_data, _check_resume, compute_dtype,
                              describe_os_error, log, model_config_from, task_of, train_and_evaluate,
                              validation_split)
from pthnet_jax.workdir import (WorkdirError, check_workdir_path, dataset_fingerprint, run_identity,
                                workdir_lock)


@dataclasses.dataclass(frozen=True, eq=False)
class RunSpec:
    """One training run: where it writes, what it trains on, its seed.

    `train_clips` / `test_clips`: clip indices of the train / test split (default: all), e.g. a
    leave-one-subject-out run trains on the other subjects' clips and tests on its subject's, both
    from one imported dataset (`test_split="train"`), without importing anything per run.
    """

    name: str
    workdir: Path
    data_dir: str
    seed: int = 0
    train_clips: Any = None
    test_clips: Any = None
    test_split: str | None = None  # default: config.data.test_split

    @property
    def has_subsets(self) -> bool:
        return self.train_clips is not None or self.test_clips is not None or self.test_split is not None


def run_config(config: ml_collections.ConfigDict, spec: RunSpec) -> ml_collections.ConfigDict:
    """The config a run is trained (and its identity checked) with: its data directory and seed."""
    result = ml_collections.ConfigDict(config.to_dict())
    result.data.data_dir = str(spec.data_dir)
    result.train.seed = int(spec.seed)
    if spec.test_split is not None:
        result.data.test_split = spec.test_split
    return result


def train_runs(config: ml_collections.ConfigDict, specs: Sequence[RunSpec], parallel_runs: int = 1
               ) -> list[dict[str, Any]] | None:
    """Train every run, `parallel_runs` at a time; their summaries in order, None when interrupted.

    Groups are consecutive runs, as even as possible; a re-run after a stop forms the same groups,
    so runs that trained together resume together.
    """
    specs = list(specs)
    if parallel_runs < 1:
        raise TrainingError(f"parallel runs must be >= 1, got {parallel_runs}")
    summaries: list[dict[str, Any]] = []
    for group in _groups(specs, parallel_runs):
        if len(group) == 1 and not group[0].has_subsets:  # K = 1: today's trainer, no vmap
            summary = train_and_evaluate(run_config(config, group[0]), group[0].workdir)
            result = None if summary.get("interrupted") else [summary]
        else:
            result = _train_group(config, group)
        if result is None:
            return None
        summaries += result
    return summaries


def _groups(specs: list[RunSpec], size: int) -> list[list[RunSpec]]:
    count = -(-len(specs) // max(1, size))
    bounds = np.linspace(0, len(specs), count + 1).round().astype(int) if specs else [0]
    return [specs[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@dataclasses.dataclass(eq=False)
class _Run:
    """One run's host side: config, data, checkpoints, bookkeeping, logger and its latest state."""

    spec: RunSpec
    config: Any
    split: Any
    train_ids: np.ndarray
    eval_sets: dict
    steps_per_epoch: int
    model_config: Any
    checkpoints: TrainCheckpoints
    task: Any
    run: RunState = dataclasses.field(default_factory=RunState)
    logger: Any = None
    state: Any = None
    done: bool = False
    # the current round (run_loop): running sums, steps not reported yet, where the round began
    progress: Any = None
    pending: list = dataclasses.field(default_factory=list)
    block: int = 1
    position: int = 0
    round_epoch: int = 0
    round_start_step: int = 0

    @property
    def step(self) -> int:
        return int(self.state.step)

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def schedule(self):
        optim = self.config.optim
        return make_optimizer(lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                              milestones=optim.milestones, gamma=optim.gamma,
                              steps_per_epoch=self.steps_per_epoch, **optimizer_options(optim)).schedule


def _open_run(config, spec: RunSpec, stack: contextlib.ExitStack, clock: timing.RunClock, splits: dict) -> _Run:
    """Lock the run's workdir and open its data; nothing is written yet."""
    config = run_config(config, spec)
    validate_config(config)
    workdir = Path(spec.workdir).absolute()
    check_workdir_path(workdir)
    stack.enter_context(workdir_lock(workdir))
    if jax.process_index() == 0:
        remove_stale_temp_files(workdir)
    dcfg, tcfg = config.data, config.train
    task = task_of(config)
    with clock.phase("data"):
        try:  # runs on one dataset share its opened splits (and their features on the devices)
            train_split, test_split = (_opened(splits, task, dcfg.data_dir, name)
                                       for name in (dcfg.train_split, dcfg.test_split))
        except (FileNotFoundError, KeyError, ValueError) as err:
            raise TrainingError(f"run {spec.name}: data directory {dcfg.data_dir}: "
                                f"{err.args[0] if err.args else err}") from err
    train_ids = _subset(spec.train_clips, train_split, f"run {spec.name}: train_clips")
    eval_sets = {"test": (test_split, None if spec.test_clips is None else
                          _subset(spec.test_clips, test_split, f"run {spec.name}: test_clips"))}
    if tcfg.select_on == "val":
        kept, held_out = validation_split(len(train_ids), tcfg.val_fraction, tcfg.val_seed)
        train_ids, eval_sets["val"] = train_ids[kept], (train_split, train_ids[held_out])
    model_cfg = model_config_from(config, train_split.num_classes)
    _check_model_fits_data(task, model_cfg, train_split)
    fingerprint = dataset_fingerprint({"train": train_split, **{n: s for n, (s, _) in eval_sets.items()}})
    for name, ids in (("train", spec.train_clips), ("test", spec.test_clips)):
        if ids is not None:  # a subset is part of what the run trains on
            fingerprint[f"subset:{name}"] = _ids_digest(np.asarray(ids))
    identity = run_identity(config, fingerprint)
    spe = -(-len(train_ids) // tcfg.global_batch)
    checkpoints = stack.enter_context(contextlib.closing(
        TrainCheckpoints(workdir, tcfg.keep_checkpoints, identity, family=task.family)))
    return _Run(spec, config, train_split, train_ids, eval_sets, spe, model_cfg, checkpoints, task)


def _opened(splits: dict, task, data_dir: str, name: str):
    key = (task.family, str(Path(data_dir).absolute()), name)
    if key not in splits:
        splits[key] = task.open(data_dir, name)
    return splits[key]


def _subset(ids, split, what: str) -> np.ndarray:
    if ids is None:
        return np.arange(split.num_clips)
    ids = np.asarray(ids)
    if ids.ndim != 1 or not len(ids) or not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 \
            or ids.max() >= split.num_clips or len(np.unique(ids)) != len(ids):
        raise TrainingError(f"{what} must be distinct clip indices in 0..{split.num_clips - 1} of split "
                            f"{split.name!r}, got {len(ids)} value(s)")
    return np.sort(ids)


def _ids_digest(ids: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.sort(ids).astype(np.int64).tobytes()).hexdigest()[:16]


def _check_one_program(runs: list[_Run]) -> None:
    """Runs trained together share everything that shapes the program."""
    first = runs[0]
    same = ("family", "model", "model_dtype", "optim", "train.model_state_sync", "train.global_batch",
            "train.steps_per_dispatch", "train.epochs", "data.noise_std", "data.mode", "train.eval_every",
            "train.select_on", "train.select_metric")
    for other in runs[1:]:
        for key in same:
            a, b = first.config, other.config
            for part in key.split("."):
                a, b = a.get(part), b.get(part)
            if key == "model":
                a, b = first.model_config, other.model_config
            if a != b:
                raise TrainingError(f"runs {first.spec.name} and {other.spec.name} cannot train in one program: "
                                    f"their {key} differ ({a} vs {b}); train them separately (parallel 1)")
    # One program reads its data one way (resident stores, or host streams: run_stream) with one
    # set of input options.
    for r in runs[1:]:
        for what, value in (("data mode", lambda r: r.task.choose_mode(r.split, r.config.data.mode)),
                            ("input options", lambda r: r.task.input_options(r.model_config, r.config.data))):
            if value(r) != value(first):
                raise TrainingError(f"runs {first.spec.name} and {r.spec.name} cannot train in one program: their "
                                    f"{what} differ ({value(first)} vs {value(r)}); train them separately (parallel 1)")


def _train_group(config, specs: list[RunSpec]) -> list[dict[str, Any]] | None:
    from pthnet_jax.run_loop import train_together

    config = ml_collections.ConfigDict(config.to_dict())
    clock = timing.RunClock()
    reporting.enable_compilation_cache()
    try:
        with contextlib.ExitStack() as stack:
            splits: dict = {}
            runs = [_open_run(config, spec, stack, clock, splits) for spec in specs]
            _check_one_program(runs)
            task = runs[0].task
            model = task.model(runs[0].model_config, dtype=compute_dtype(config))
            init = run_stack.jitted_init(task, model, _transform(runs[0]))
            for r in runs:
                _start(r, init, stack, clock)
            log(f"{len(runs)} runs in one program: " + ", ".join(f"{r.spec.name} ({len(r.train_ids)} clips, "
                                                                 f"epoch {r.epoch})" for r in runs))
            try:
                sync = state_sync(task, runs[0].config)
            except ValueError as err:
                raise TrainingError(str(err)) from err
            return train_together(runs, model, sync, clock)
    except CheckpointError as err:
        raise TrainingError(str(err)) from err
    except OSError as err:
        raise TrainingError(describe_os_error(err, Path(specs[0].workdir))) from err


def _transform(r: _Run):
    optim = r.config.optim
    return make_optimizer(lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                          milestones=optim.milestones, gamma=optim.gamma,
                          steps_per_epoch=r.steps_per_epoch, **optimizer_options(optim)).transform


def _start(r: _Run, init, stack: contextlib.ExitStack, clock: timing.RunClock) -> None:
    """Initialise or restore one run, as `pthnet train` does (same checks, same repairs)."""
    from pthnet_jax.commands.train import record_training_data

    tcfg, workdir = r.config.train, r.checkpoints.workdir
    resuming = r.checkpoints.latest_step() is not None
    changes = _check_resume(r.checkpoints, r.checkpoints.identity, bool(tcfg.get("allow_resume_change", False))) \
        if resuming else []
    r.logger = stack.enter_context(contextlib.closing(reporting.Logger(workdir, enabled=jax.process_index() == 0)))
    if not resuming:
        with clock.phase("init"):
            r.state = jax.device_get(init(jax.random.key(tcfg.seed)))
    else:
        with clock.phase("restore"):
            r.state, r.run = r.checkpoints.restore(jax.eval_shape(init, jax.random.key(tcfg.seed)))
        r.state = jax.device_get(r.state)
        log(f"{r.spec.name}: resuming at step {r.step} (epoch {r.run.epoch} of {tcfg.epochs} done)"
            + (" with these changes:\n  " + "\n  ".join(changes) if changes else ""))
        if r.step > tcfg.epochs * r.steps_per_epoch:
            raise WorkdirError(f"{workdir} holds a run at step {r.step}, past the {tcfg.epochs} epoch(s) "
                               "of this config; use another workdir")
        with clock.phase("checkpoints"):
            repaired = r.checkpoints.ensure_best(r.run) if tcfg.get("save_best", True) else None
        if repaired:
            log(repaired)
        missing = r.logger.sync(r.run.history)
        if missing:
            log(f"{r.spec.name}: rewrote history.json, TensorBoard events and curves for epoch(s) {missing}")
    reporting.save_run_files(workdir, r.config)
    record_training_data(workdir, r.config.data.data_dir, r.config.get("family"))
    r.done = r.epoch >= tcfg.epochs
