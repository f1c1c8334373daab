"""Training: config-driven, data-parallel, resumable, with evaluation after every epoch.

`train_and_evaluate(config, workdir)` reads like the recipe: open the data, build the model (both by
`config.family`'s task: `pthnet_jax.task`) and the original's optimiser, restore the latest checkpoint if there is one, then per epoch train, evaluate
and checkpoint. Data order and randomness derive from (seed, epoch, step), so a resumed run ends
exactly where an uninterrupted one does. The command line is in `pthnet_jax.commands.train`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pthnet_jax import parallel, reporting, steps, timing
from pthnet_jax.checkpoint import CheckpointError
from pthnet_jax.config_check import ConfigError, validate_config  # noqa: F401 - ConfigError re-exported
from pthnet_jax.epochs import EpochSpec, StopOnSignal, TrainingError, make_runner, run_epoch
from pthnet_jax.evaluation import Predictor
from pthnet_jax.fsutil import remove_stale_temp_files
from pthnet_jax.metrics import classification_metrics
from pthnet_jax.optim import make_optimizer, optimizer_options
from pthnet_jax.plan import batch_plan, epoch_order
from pthnet_jax.run_checkpoints import CHECKPOINTS, RunState, TrainCheckpoints
from pthnet_jax.task import UnknownFamily, family_of, get_task, state_sync
from pthnet_jax.workdir import (WorkdirError, check_workdir_path, dataset_fingerprint, identity_differences,
                                run_identity, workdir_lock)


def task_of(config: ml_collections.ConfigDict):
    """The model family `config.family` names (PTH-Net for configs that name none)."""
    try:
        return get_task(family_of(config))
    except UnknownFamily as err:
        raise TrainingError(f"config.family: {err}") from err


def model_config_from(config: ml_collections.ConfigDict, dataset_classes: int | None = None) -> Any:
    """The family's model config; `model.num_classes = 0` (the default) takes the dataset's class count."""
    try:
        return task_of(config).model_config(config.model.to_dict(), dataset_classes)
    except (TypeError, ValueError) as err:
        raise TrainingError(f"config.model: {err}") from err


def compute_dtype(config: ml_collections.ConfigDict):
    dtype = config.get("model_dtype", "float32")
    if dtype not in ("float32", "bfloat16"):
        raise TrainingError(f"config.model_dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    return None if dtype == "float32" else jnp.bfloat16


def steps_per_dispatch(requested: int, steps_per_epoch: int | None = None) -> int:
    """Training steps per device call in resident mode (a `lax.scan`); 0 = auto (32).

    Many steps per call keep the host out of the loop: on a 2-core CPU, 16-32 steps per call run
    about 25% faster per step than one step per call. Never more than an epoch's steps: the steps
    of a call past the epoch's end are skipped with a `lax.cond`, which on XLA:CPU still costs about
    a step each (15 steps per epoch in calls of 32 ran at 450 ms per step instead of 175).
    """
    requested = int(requested)
    if requested < 0:
        raise TrainingError(f"config.train.steps_per_dispatch must be >= 0 (0 = auto), got {requested}")
    chunk = requested or 32
    return min(chunk, steps_per_epoch) if steps_per_epoch else chunk


def validation_split(num_clips: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train ids, held-out ids): a fixed-seed share of the training clips for model selection."""
    if not 0.0 < fraction < 1.0:
        raise TrainingError(f"config.train.val_fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng([seed, 0xA11]).permutation(num_clips)
    held_out = max(1, int(round(num_clips * fraction)))
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def log(message: str, **kwargs) -> None:
    """Print on process 0 only (every process of a multi-process run runs the same loop)."""
    if jax.process_index() == 0:
        print(message, flush=True, **kwargs)


@dataclasses.dataclass(frozen=True)
class _Data:
    train: Any  # FeatureSplit
    train_ids: np.ndarray
    eval_sets: dict  # name -> (split, clip ids or None)


def _open_data(config: ml_collections.ConfigDict, task) -> _Data:
    dcfg, tcfg = config.data, config.train
    if not dcfg.data_dir:
        raise TrainingError("no data: pass --data DATA_DIR (a directory written by `pthnet import-features`)")
    try:
        train_split = task.open(dcfg.data_dir, dcfg.train_split)
        test_split = task.open(dcfg.data_dir, dcfg.test_split)
    except (FileNotFoundError, KeyError, ValueError) as err:  # ValueError: DatasetError (damaged)
        raise TrainingError(f"data directory {dcfg.data_dir}: {err.args[0] if err.args else err}") from err
    train_ids = np.arange(train_split.num_clips)
    eval_sets = {"test": (test_split, None)}
    if tcfg.select_on == "val":
        train_ids, val_ids = validation_split(train_split.num_clips, tcfg.val_fraction, tcfg.val_seed)
        eval_sets["val"] = (train_split, val_ids)
    elif tcfg.select_on != "test":
        raise TrainingError(f"config.train.select_on must be 'test' or 'val', got {tcfg.select_on!r}")
    return _Data(train_split, train_ids, eval_sets)


def _check_model_fits_data(task, model_cfg: Any, split) -> None:
    try:
        task.check_fits(model_cfg, split)
    except ValueError as err:
        raise TrainingError(str(err)) from err


def _epoch_spec(config: ml_collections.ConfigDict, data: _Data, task, model_cfg: Any) -> EpochSpec:
    tcfg = config.train
    devices, processes = parallel.local_device_count(), jax.process_count()
    if tcfg.global_batch % (devices * processes):
        raise TrainingError(f"config.train.global_batch={tcfg.global_batch} does not split over "
                            f"{processes} process(es) x {devices} local devices; choose a multiple of "
                            f"{devices * processes} (the recipe's batch stays a global batch)")
    steps_per_epoch = -(-len(data.train_ids) // tcfg.global_batch)
    try:
        sync = state_sync(task, config)
    except ValueError as err:
        raise TrainingError(str(err)) from err
    return EpochSpec(mode=task.choose_mode(data.train, config.data.mode), global_batch=int(tcfg.global_batch),
                     steps_per_epoch=steps_per_epoch,
                     steps_per_call=steps_per_dispatch(tcfg.steps_per_dispatch, steps_per_epoch), seed=int(tcfg.seed),
                     task=task, options=task.input_options(model_cfg, config.data), sync=sync,
                     profile_steps=int(tcfg.get("profile_steps", 0) or 0))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Train per `config`, writing checkpoints, logs and plots into `workdir`; returns the summary.

    A SIGTERM stops every process at the same step once the device calls already dispatched are
    done; the state is saved and the result is `{"interrupted": True, "step": ...}`. Every failure
    a user can cause or meet (bad config, damaged data or checkpoint, a full disk, a workdir in use
    or from another run) is a `TrainingError` whose message names the key or the path.
    """
    config = ml_collections.ConfigDict(config.to_dict())  # never mutate the caller's config
    validate_config(config)
    workdir = Path(workdir).absolute()
    try:
        check_workdir_path(workdir)
        with workdir_lock(workdir):
            return _train(config, workdir)
    except CheckpointError as err:
        raise TrainingError(str(err)) from err
    except OSError as err:
        raise TrainingError(describe_os_error(err, workdir)) from err


def describe_os_error(err: OSError, workdir: Path) -> str:
    where = err.filename or workdir
    text = f"{where}: {err.strerror or err}"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        text += " (the disk is full: free space and run the same command again; it resumes from the last complete checkpoint)"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        text += " (no permission to write there: fix it or choose another --workdir)"
    return text


def _check_resume(checkpoints: TrainCheckpoints, identity: dict[str, Any], allow_change: bool) -> list[str]:
    """Refuse to resume a workdir whose saved config or dataset differs (unless allowed)."""
    try:
        saved = checkpoints.latest_info().get("provenance", {})
    except CheckpointError as err:
        raise WorkdirError(f"cannot resume: {err}") from err
    if "config" not in saved:
        return ["(the latest checkpoint predates config checks: not compared)"]
    differences = identity_differences(saved, identity)
    if differences and not allow_change:
        raise WorkdirError(
            f"{checkpoints.workdir} holds a run with another config or dataset; resuming it would mix "
            "two runs:\n  " + "\n  ".join(differences) + "\nUse another --workdir, or pass "
            "--config.train.allow_resume_change=True to resume with these changes knowingly")
    return differences


def _train(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    if jax.process_index() == 0:
        remove_stale_temp_files(workdir)
    clock = timing.RunClock()
    reporting.enable_compilation_cache()
    tcfg = config.train
    task = task_of(config)
    with clock.phase("data"):
        data = _open_data(config, task)
    model_cfg = model_config_from(config, data.train.num_classes)
    _check_model_fits_data(task, model_cfg, data.train)
    spec = _epoch_spec(config, data, task, model_cfg)
    identity = run_identity(config, dataset_fingerprint({"train": data.train,
                                                         **{n: s for n, (s, _) in data.eval_sets.items()}}))

    model = task.model(model_cfg, dtype=compute_dtype(config))
    optimizer = make_optimizer(lr=config.optim.lr, momentum=config.optim.momentum,
                               weight_decay=config.optim.weight_decay, milestones=config.optim.milestones,
                               gamma=config.optim.gamma, steps_per_epoch=spec.steps_per_epoch,
                               **optimizer_options(config.optim))
    # One compiled program: initialising eagerly compiles hundreds of tiny ones (seconds on CPU).
    init = jax.jit(lambda key: steps.state_from_variables(task.init(model, key), optimizer.transform))
    checkpoints = TrainCheckpoints(workdir, tcfg.keep_checkpoints, identity, family=task.family)
    run = RunState()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.closing(checkpoints))
        resuming = checkpoints.latest_step() is not None
        if resuming:  # checked before anything is written into the workdir
            changes = _check_resume(checkpoints, identity, bool(tcfg.get("allow_resume_change", False)))
        else:
            with clock.phase("init"):
                state = init(jax.random.key(tcfg.seed))
        logger = stack.enter_context(contextlib.closing(reporting.Logger(workdir, enabled=jax.process_index() == 0)))
        if resuming:  # restored against the state's shapes: no initialisation to compile and run
            with clock.phase("restore"):
                state, run = checkpoints.restore(jax.eval_shape(init, jax.random.key(tcfg.seed)))
            log(f"resuming from {workdir / CHECKPOINTS} at step {int(state.step)} "
                f"(epoch {run.epoch} of {tcfg.epochs} done)"
                + (" with these changes:\n  " + "\n  ".join(changes) if changes else ""))
            if int(state.step) > tcfg.epochs * spec.steps_per_epoch:
                raise WorkdirError(f"{workdir} holds a run at step {int(state.step)}, past the "
                                   f"{tcfg.epochs} epoch(s) of this config; use another --workdir")
            with clock.phase("checkpoints"):
                repaired = checkpoints.ensure_best(run)
            if repaired:
                log(repaired)
            missing = logger.sync(run.history)
            if missing:
                log(f"rewrote history.json, TensorBoard events and curves for epoch(s) {missing} "
                    "(the previous run was killed before writing them)")
        reporting.save_run_files(workdir, config)
        return _epochs(config, workdir, data, model_cfg, spec, model, optimizer, state, run, checkpoints,
                       logger, clock)


def _epochs(config, workdir: Path, data: _Data, model_cfg: Any, spec: EpochSpec, model, optimizer,
            state, run: RunState, checkpoints: TrainCheckpoints, logger, clock: timing.RunClock
            ) -> dict[str, Any]:
    tcfg = config.train
    with clock.phase("data"):  # the resident features are placed on the devices here
        runner = make_runner(spec, data.train, data.train_ids, model, optimizer.transform)
    task = spec.task
    predictor = Predictor(model, mode=spec.mode, batch_size=config.eval.batch_size, task=task,
                          options=spec.options)
    num_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
    log(f"{task.display_name} {num_params:,} parameters | {data.train.dataset_info.get('benchmark')} "
        f"train {len(data.train_ids)} clips, {spec.steps_per_epoch} steps/epoch of {spec.global_batch} | "
        f"{jax.process_count()} process(es) x {parallel.local_device_count()} {jax.devices()[0].platform} "
        f"device(s) | data {spec.mode}{f' ({spec.steps_per_call} steps per call)' if spec.mode == 'resident' else ''}"
        f" | model selection on {tcfg.select_on}")

    replicated = parallel.replicate(state)
    with StopOnSignal() as stop:
        for epoch in range(int(state.step) // spec.steps_per_epoch, tcfg.epochs):
            order = data.train_ids[epoch_order(len(data.train_ids), seed=spec.seed, epoch=epoch,
                                                   shuffle=bool(config.train.get("shuffle", True)))]
            plan = batch_plan(order, global_batch=spec.global_batch, process_index=jax.process_index(),
                              process_count=jax.process_count())
            first = int(state.step) - epoch * spec.steps_per_epoch  # > 0 when resuming mid-epoch
            earlier = run.partial if (first and run.partial.get("epoch") == epoch
                                      and run.partial.get("step") == int(state.step)) else None
            progress = reporting.EpochProgress(epoch, tcfg.epochs, spec.steps_per_epoch, first,
                                               spec.global_batch, enabled=jax.process_index() == 0,
                                               resume=earlier, terms=task.terms)
            trace = reporting.StepTrace(workdir / "profile", spec.profile_steps,
                                        enabled=_trace_this_epoch(spec, epoch, tcfg.epochs, state))
            with trace, clock.phase("steps"):
                replicated, finished = run_epoch(runner, replicated, epoch, plan, first, stop,
                                                 on_metrics=lambda m, n: (progress.update(m), trace.advance(n),
                                                                          clock.mark("first_step")))
            state = parallel.unreplicate(replicated)
            if not finished:  # stopped mid-epoch: save and stop now
                # The running sums are global (every process reads the same all-reduced metrics).
                run.partial = {"epoch": epoch, "step": int(state.step), **progress.snapshot()}
                with clock.phase("checkpoints"):
                    checkpoints.save(state, model_cfg, run, interrupted=True)
                progress.close()
                return _interrupted(stop, state, workdir)
            run.partial = {}
            record = {"epoch": epoch + 1, "step": int(state.step),
                      "lr": float(optimizer.schedule(epoch * spec.steps_per_epoch)), **progress.close()}
            if trace.record:
                record["profile"] = {**trace.record, "epoch": epoch + 1}
            if (epoch + 1) % tcfg.eval_every == 0 or epoch + 1 == tcfg.epochs:
                with clock.phase("eval"):
                    record.update(_evaluate(predictor, replicated, data.eval_sets, task.metrics))
            is_best = _bookkeep(run, record, tcfg)
            save_started = time.perf_counter()
            with clock.phase("checkpoints"):
                checkpoints.save(state, model_cfg, run, best=is_best)
            record["save_seconds"] = time.perf_counter() - save_started
            with clock.phase("logging"):
                logger.epoch(record, run)
            if stop.agreed:  # arrived during the epoch's last steps: the epoch is complete
                return _interrupted(stop, state, workdir)
    with clock.phase("logging"):
        logger.finish()
    clock.stop()
    return reporting.final_summary(workdir, run, num_params, tcfg.select_on, clock)


def _trace_this_epoch(spec: EpochSpec, epoch: int, epochs: int, state) -> bool:
    """Trace `profile_steps` steps of the first epoch that does not compile (or the only one)."""
    if spec.profile_steps <= 0 or jax.process_index() != 0:
        return False
    start_epoch = int(state.step) // spec.steps_per_epoch
    return epoch == start_epoch + 1 or (epoch == start_epoch and epoch + 1 == epochs)


def _evaluate(predictor: Predictor, replicated, eval_sets: dict, metrics: tuple[str, ...]) -> dict[str, Any]:
    started = time.perf_counter()
    variables = {"params": parallel.unreplicate(replicated.params), **parallel.unreplicate(replicated.model_state)}
    record: dict[str, Any] = {}
    for name, (split, ids) in eval_sets.items():
        logits, labels = predictor.predict(variables, split, ids)
        result = classification_metrics(logits, labels, split.num_classes)
        record[name] = {k: result[k] for k in metrics}
    record["eval_seconds"] = time.perf_counter() - started
    return record


def _bookkeep(run: RunState, record: dict[str, Any], tcfg) -> bool:
    """Append the epoch to the history; True when it is the best so far by the selection metric."""
    run.epoch = record["epoch"]
    run.history.append(record)
    selected = record.get(tcfg.select_on, {}).get(tcfg.select_metric)
    if selected is None or selected <= run.best.get("value", -1.0):
        return False
    run.best = {"value": selected, "metric": tcfg.select_metric, "split": tcfg.select_on,
                "epoch": record["epoch"], "step": record["step"], "metrics": dict(record)}  # as saved
    return True


def _interrupted(stop, state, workdir: Path) -> dict[str, Any]:
    log(f"\nreceived signal {stop.signal or 'on another process'}: saved step {int(state.step)} to "
        f"{workdir / CHECKPOINTS}; run the same command again to resume")
    return {"interrupted": True, "step": int(state.step)}
