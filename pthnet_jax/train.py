"""`pthnet train`: config-driven, data-parallel, resumable training with per-epoch evaluation.

    pthnet train --config configs/ferv39k.py --data DATA_DIR --workdir DIR [--config.a.b=v ...]

Reads like the recipe: build the model and the original's optimiser, put the data where the steps
run, then per epoch train (many steps per device call in resident mode), evaluate, checkpoint.
Data order and randomness derive from (seed, epoch, step), so a resumed run ends exactly where an
uninterrupted one does.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pthnet_jax import checkpoint as ckpt
from pthnet_jax import parallel, reporting, steps
from pthnet_jax.data import (ResidentFeatures, batch_plan, choose_mode, epoch_order, iterate_batches,
                             open_split)
from pthnet_jax.evaluate import Predictor
from pthnet_jax.metrics import classification_metrics
from pthnet_jax.models.pthnet import ModelConfig, PTHNet, count_params, init_variables
from pthnet_jax.optim import make_optimizer


class TrainingError(RuntimeError):
    """A run that cannot go on (bad data directory, NaN loss, class count mismatch...)."""


def model_config_from(config: ml_collections.ConfigDict) -> ModelConfig:
    try:
        return ModelConfig.from_dict(config.model.to_dict())
    except (TypeError, ValueError) as err:
        raise TrainingError(f"config.model: {err}") from err


def compute_dtype(config: ml_collections.ConfigDict):
    dtype = config.get("model_dtype", "float32")
    if dtype not in ("float32", "bfloat16"):
        raise TrainingError(f"config.model_dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    return None if dtype == "float32" else jnp.bfloat16


def steps_per_dispatch(requested: int) -> int:
    """Training steps per device call in resident mode (a `lax.scan`); 0 = auto (32).

    Many steps per call keep the host out of the loop. On a 2-core CPU, 16-32 steps per call run
    ~25% faster per step than one step per call (measured in the issue-5 note).
    """
    requested = int(requested)
    if requested < 0:
        raise TrainingError(f"config.train.steps_per_dispatch must be >= 0 (0 = auto), got {requested}")
    return requested or 32


def validation_split(num_clips: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train ids, held-out ids): a fixed-seed share of the training clips for model selection."""
    if not 0.0 < fraction < 1.0:
        raise TrainingError(f"config.train.val_fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng([seed, 0xA11]).permutation(num_clips)
    held_out = max(1, int(round(num_clips * fraction)))
    return np.sort(order[held_out:]), np.sort(order[:held_out])


@dataclasses.dataclass
class RunState:
    """Bookkeeping saved with every checkpoint (in the `pthnet` JSON item)."""

    epoch: int = 0  # epochs completed
    history: list = dataclasses.field(default_factory=list)
    best: dict = dataclasses.field(default_factory=dict)


class _StopFlag:
    """Set by SIGTERM: the loop saves a checkpoint at the next chunk boundary and exits."""

    def __init__(self):
        self.signal: int | None = None

    def __call__(self, signum, frame):
        self.signal = signum

    def install(self):
        previous = {s: signal.signal(s, self) for s in (signal.SIGTERM,)}
        return lambda: [signal.signal(s, h) for s, h in previous.items()]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Train per `config`, writing checkpoints, logs and plots into `workdir`; returns the summary."""
    config = ml_collections.ConfigDict(config.to_dict())  # never mutate the caller's config
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    reporting.enable_compilation_cache()
    tcfg, dcfg = config.train, config.data
    if not dcfg.data_dir:
        raise TrainingError("no data: pass --data DATA_DIR (a directory written by `pthnet import-features`)")
    try:
        train_split = open_split(dcfg.data_dir, dcfg.train_split)
        test_split = open_split(dcfg.data_dir, dcfg.test_split)
    except (FileNotFoundError, KeyError) as err:
        raise TrainingError(f"data directory {dcfg.data_dir}: {err}") from err
    model_cfg = model_config_from(config)
    if train_split.num_classes != model_cfg.num_classes:
        raise TrainingError(f"the dataset has {train_split.num_classes} classes "
                            f"({train_split.dataset_info.get('benchmark')}) but config.model.num_classes is "
                            f"{model_cfg.num_classes}; set --config.model.num_classes={train_split.num_classes}")
    if train_split.feature_dim != model_cfg.n_in:
        raise TrainingError(f"the dataset's features have {train_split.feature_dim} channels but "
                            f"config.model.n_in is {model_cfg.n_in}")

    devices = parallel.local_device_count()
    processes = jax.process_count()
    global_batch = tcfg.global_batch
    if global_batch % (devices * processes):
        raise TrainingError(f"config.train.global_batch={global_batch} does not split over "
                            f"{processes} process(es) x {devices} local devices; choose a multiple of "
                            f"{devices * processes} (the recipe's batch stays a global batch)")
    train_ids, val_ids = np.arange(train_split.num_clips), None
    if tcfg.select_on == "val":
        train_ids, val_ids = validation_split(train_split.num_clips, tcfg.val_fraction, tcfg.val_seed)
    elif tcfg.select_on != "test":
        raise TrainingError(f"config.train.select_on must be 'test' or 'val', got {tcfg.select_on!r}")
    steps_per_epoch = -(-len(train_ids) // global_batch)

    model = PTHNet(model_cfg, dtype=compute_dtype(config))
    optimizer = make_optimizer(lr=config.optim.lr, momentum=config.optim.momentum,
                               weight_decay=config.optim.weight_decay, milestones=config.optim.milestones,
                               gamma=config.optim.gamma, steps_per_epoch=steps_per_epoch)
    # One compiled program: initialising eagerly compiles hundreds of tiny ones (seconds on CPU).
    state = jax.jit(lambda key: steps.create_train_state(init_variables(model, key)["params"], optimizer))(
        jax.random.key(tcfg.seed))
    manager = reporting.checkpoint_manager(workdir, tcfg.keep_checkpoints)
    run = RunState()
    if manager.latest_step() is not None:
        state, run = reporting.restore(manager, state)
        print(f"resuming from {workdir / 'checkpoints'} at step {int(state.step)} "
              f"(epoch {run.epoch} of {tcfg.epochs} done)")
    reporting.save_run_files(workdir, config)

    mode = choose_mode(train_split, dcfg.mode)
    chunk = steps_per_dispatch(tcfg.steps_per_dispatch)
    train_resident = None
    if mode == "resident":
        train_resident = parallel.replicate(ResidentFeatures.from_split(train_split))
        chunk_fn = steps.pmapped(steps.train_chunk, donate_state=True, model=model, optimizer=optimizer,
                                 seed=tcfg.seed, max_len=model_cfg.max_len, noise_std=dcfg.noise_std)
    else:
        step_fn = steps.pmapped(steps.train_step, donate_state=True, model=model, optimizer=optimizer,
                                seed=tcfg.seed)
    predictor = Predictor(model, mode=mode, batch_size=config.eval.batch_size)
    eval_sets = {"test": (test_split, None)}
    if val_ids is not None:
        eval_sets["val"] = (train_split, val_ids)

    num_params = count_params(state.params)
    print(f"PTH-Net {num_params:,} parameters | {train_split.dataset_info.get('benchmark')} "
          f"train {len(train_ids)} clips, {steps_per_epoch} steps/epoch of {global_batch} | "
          f"{processes} process(es) x {devices} {jax.devices()[0].platform} device(s) | data {mode}"
          f"{f' ({chunk} steps per call)' if mode == 'resident' else ''} | "
          f"model selection on {tcfg.select_on}")
    logger = reporting.Logger(workdir, enabled=jax.process_index() == 0)
    stop = _StopFlag()
    restore_signals = stop.install()
    replicated = parallel.replicate(state)
    try:
        start_epoch = int(state.step) // steps_per_epoch
        profiled = None
        for epoch in range(start_epoch, tcfg.epochs):
            order = train_ids[epoch_order(len(train_ids), seed=tcfg.seed, epoch=epoch, shuffle=True)]
            indices, valid = batch_plan(order, global_batch=global_batch,
                                        process_index=jax.process_index(), process_count=processes)
            first = int(state.step) - epoch * steps_per_epoch  # > 0 when resuming mid-epoch
            progress = reporting.EpochProgress(epoch, tcfg.epochs, steps_per_epoch, first, global_batch,
                                               enabled=jax.process_index() == 0)
            position = first
            profiling = _start_profile(tcfg, workdir, epoch, start_epoch, profiled)
            # The host reads a call's metrics only after it has dispatched the next call, so the
            # device never waits for Python (progress bar, finiteness check, next plan).
            pending = None
            while position < steps_per_epoch:
                end = min(position + chunk, steps_per_epoch)
                if mode == "resident":
                    plan_i, plan_v = _padded_chunk(indices, valid, position, chunk)
                    replicated, metrics = chunk_fn(
                        replicated, train_resident, parallel.split_for_devices(plan_i, axis=1),
                        parallel.split_for_devices(plan_v, axis=1), np.full((devices,), epoch, np.int32))
                else:  # one grain iterator for the rest of the epoch; it stops early on a signal
                    replicated, metrics = _streaming_steps(train_split, train_ids, epoch, position,
                                                           steps_per_epoch, tcfg, dcfg, model_cfg, devices,
                                                           step_fn, replicated, stop)
                    end = position + len(metrics["count"])
                if pending is not None:
                    _consume_metrics(*pending, progress)
                pending = (metrics, end - position, epoch * steps_per_epoch + end, mode == "resident")
                position = end
                if profiling and position - first >= tcfg.profile_steps:
                    _consume_metrics(*pending, progress)
                    pending = None
                    profiled = _stop_profile(profiling, position - first)
                    profiling = None
                if stop.signal is not None:
                    break
            if pending is not None:
                _consume_metrics(*pending, progress)
            if profiling:
                profiled = _stop_profile(profiling, position - first)
            state = _host_state(replicated)
            if stop.signal is not None and position < steps_per_epoch:  # mid-epoch: save and stop now
                reporting.save(manager, state, model_cfg, run, workdir, interrupted=True)
                progress.close()
                print(f"\nreceived signal {stop.signal}: saved step {int(state.step)} to "
                      f"{workdir / 'checkpoints'}; run the same command again to resume")
                return {"interrupted": True, "step": int(state.step)}
            train_summary = progress.close()
            record = {"epoch": epoch + 1, "step": int(state.step),
                      "lr": float(reporting.learning_rate(config.optim, epoch)), **train_summary}
            if (epoch + 1) % tcfg.eval_every == 0 or epoch + 1 == tcfg.epochs:
                eval_started = time.perf_counter()
                params = parallel.unreplicate(replicated.params)
                for name, (split, ids) in eval_sets.items():
                    logits, labels = predictor.predict(params, split, ids)
                    result = classification_metrics(logits, labels, split.num_classes)
                    record[name] = {k: result[k] for k in ("UAR", "WAR", "weighted_f1")}
                record["eval_seconds"] = time.perf_counter() - eval_started
            if profiled and profiled.get("epoch") == epoch + 1:
                record["profile"] = profiled  # where the trace went, and the traced steps' wall time
            run.epoch = epoch + 1
            run.history.append(record)
            selected = record.get(tcfg.select_on, {}).get(tcfg.select_metric)
            is_best = selected is not None and selected > run.best.get("value", -1.0)
            if is_best:
                run.best = {"value": selected, "metric": tcfg.select_metric, "split": tcfg.select_on,
                            "epoch": epoch + 1, "step": int(state.step), "metrics": record}
            save_started = time.perf_counter()
            reporting.save(manager, state, model_cfg, run, workdir, best=is_best)
            record["save_seconds"] = time.perf_counter() - save_started
            logger.epoch(record, run)
            if stop.signal is not None:  # arrived during the epoch's last steps: the epoch is complete
                print(f"received signal {stop.signal}: saved epoch {epoch + 1} (step {int(state.step)}) to "
                      f"{workdir / 'checkpoints'}; run the same command again to resume")
                return {"interrupted": True, "step": int(state.step)}
    finally:
        restore_signals()
        manager.wait_until_finished()
        logger.close()
    summary = reporting.final_summary(workdir, run, num_params, tcfg.select_on)
    return summary


def _padded_chunk(indices: np.ndarray, valid: np.ndarray, start: int, length: int):
    """`length` steps from `start`; steps past the epoch's end are all padding (valid False)."""
    part_i, part_v = indices[start:start + length], valid[start:start + length]
    missing = length - len(part_i)
    if missing:
        part_i = np.concatenate([part_i, np.zeros((missing, part_i.shape[1]), part_i.dtype)])
        part_v = np.concatenate([part_v, np.zeros((missing, part_v.shape[1]), bool)])
    return part_i, part_v


def _streaming_steps(split, train_ids, epoch, start, end, tcfg, dcfg, model_cfg, devices, step_fn, replicated,
                     stop):
    """Streaming mode: one pmapped step per host batch (records read through grain).

    A batch's metrics are fetched after the next batch has been dispatched; stops after the step
    during which a signal arrived. Returns the state and the stacked host metrics of the steps run.
    """
    collected, previous = [], None
    batches = iterate_batches(split, train=True, global_batch=tcfg.global_batch, seed=tcfg.seed, epoch=epoch,
                              mode="streaming", max_len=model_cfg.max_len, noise_std=dcfg.noise_std,
                              num_devices=devices, clip_subset=train_ids, shuffle=True,
                              start_step=start, stop_step=end)
    for batch in batches:
        replicated, metrics = step_fn(replicated, parallel.shard(batch))
        if previous is not None:
            collected.append(parallel.unreplicate(previous))
        previous = metrics
        if stop.signal is not None:
            break
    collected.append(parallel.unreplicate(previous))
    return replicated, jax.tree.map(lambda *xs: np.stack(xs), *collected)


def _host_state(replicated: steps.TrainState) -> steps.TrainState:
    return parallel.unreplicate(replicated)


def _start_profile(tcfg, workdir: Path, epoch: int, start_epoch: int, profiled) -> dict[str, Any] | None:
    """Start a jax.profiler trace for `train.profile_steps` steps of this epoch, if it is the one."""
    steps_wanted = int(tcfg.get("profile_steps", 0) or 0)
    if steps_wanted <= 0 or profiled is not None or jax.process_index() != 0:
        return None
    if epoch == start_epoch and epoch + 1 < tcfg.epochs:
        return None  # the first epoch of a process compiles: trace a later one
    directory = workdir / "profile"
    jax.profiler.start_trace(str(directory))
    return {"dir": str(directory), "epoch": epoch + 1, "started": time.perf_counter()}


def _stop_profile(profiling: dict[str, Any], num_steps: int) -> dict[str, Any]:
    """Stop the trace (every traced step has finished: its metrics were read)."""
    jax.profiler.stop_trace()
    return {"dir": profiling["dir"], "epoch": profiling["epoch"], "steps": int(num_steps),
            "seconds": time.perf_counter() - profiling["started"]}


def _consume_metrics(metrics: Any, num_steps: int, last_step: int, on_device: bool, progress) -> None:
    """Fetch one call's per-step metrics (blocks until that call is done), check and report them."""
    if on_device:
        metrics = parallel.unreplicate(metrics)
    metrics = jax.tree.map(lambda x: x[:num_steps], metrics)
    _check_finite(metrics, last_step)
    progress.update(metrics)


def _check_finite(metrics: dict[str, np.ndarray], step: int) -> None:
    for name in ("total", "grad_norm"):
        values = np.asarray(metrics[name])
        if not np.isfinite(values).all():
            bad = int(np.argmax(~np.isfinite(values)))
            raise TrainingError(
                f"{'loss' if name == 'total' else 'gradient norm'} is {values[bad]} at step "
                f"{step - len(values) + bad + 1}: training diverged. Hint: lower --config.optim.lr, check "
                "the features for extreme values, or use float32 (--config.model_dtype=float32)")


# ---- command line -----------------------------------------------------------------------------------

USAGE = ("usage: pthnet train --config configs/NAME.py --data DATA_DIR --workdir DIR [--config.a.b=value ...]"
         "\n  (config fields are locked: an override must name an existing field)")


def flag_error_text(err: BaseException) -> str:
    """absl wraps ml-collections' KeyError ('lrr' / Did you mean "lr"?) in other errors: unwrap it."""
    while err.args and isinstance(err.args[0], BaseException):
        err = err.args[0]
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return f"bad config override: {text}" if isinstance(err, KeyError) else str(text)


def run_flags(program: str, argv: list[str], *, data_help: str, workdir_help: str):
    """absl flags `--config FILE` (locked, with `--config.a.b=v` overrides), `--data`, `--workdir`.

    Returns the flag values (not parsed yet) and the argv to parse them from, program name first.
    """
    from absl import flags
    from ml_collections import config_flags

    values = flags.FlagValues()
    argv = [program, *argv]
    # sys_argv: ml-collections looks for the --config.a.b=v overrides in this list (by default it reads
    # the process's sys.argv, which is not what `main(argv)` was given).
    config_flags.DEFINE_config_file("config", None, "ml-collections config file", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    flags.DEFINE_string("data", None, data_help, flag_values=values)
    flags.DEFINE_string("workdir", None, workdir_help, flag_values=values)
    return values, argv


def parse_args(argv: list[str]) -> tuple[ml_collections.ConfigDict, Path]:
    """`--config FILE --data DIR --workdir DIR` plus locked `--config.a.b=v` overrides (absl flags)."""
    from absl import flags

    values, argv = run_flags("pthnet train", argv, data_help="data directory written by `pthnet import-features`",
                             workdir_help="where checkpoints, logs and plots go")
    if any(arg in ("-h", "--help", "-help") for arg in argv[1:]):
        raise SystemExit(f"{USAGE}\n\n{values.get_help(include_special_flags=False)}")
    try:
        values(argv)
        config = values.config
        if config is not None:
            config.to_dict()  # a file that failed to load raises only on first use: surface it here
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError, OSError) as err:
        raise SystemExit(f"pthnet train: {flag_error_text(err)}\n{USAGE}")
    if config is None or values.workdir is None:
        raise SystemExit(USAGE)
    if values.data:
        with config.unlocked():
            config.data.data_dir = values.data
    return config, Path(values.workdir)


def main(argv: list[str]) -> int:
    config, workdir = parse_args(argv)
    parallel.maybe_initialize_distributed()
    try:
        train_and_evaluate(config, workdir)
    except TrainingError as err:
        print(f"pthnet train: {err}", file=sys.stderr)
        return 2
    return 0
