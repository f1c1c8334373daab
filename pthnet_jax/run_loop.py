"""The multi-run training loop (`runs.train_runs`): rounds of one epoch per run, one program for all.

A round runs every unfinished run to the end of its current epoch (`run_stack.round_plan`); then each
run is evaluated, its epoch recorded and its checkpoint saved exactly as `pthnet train` does. A
SIGTERM stops every run after the same device call; each run that took a step in the unfinished
round saves a mid-epoch checkpoint with its running sums, so the same command resumes them all.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from pthnet_jax import parallel, reporting, run_placement, run_stack, run_stream, timing
from pthnet_jax.epochs import StopOnSignal, check_finite
from pthnet_jax.evaluation import Predictor
from pthnet_jax.metrics import classification_metrics
from pthnet_jax.optim import optimizer_options
from pthnet_jax.plan import batch_plan, epoch_order
from pthnet_jax.train import _bookkeep, log, steps_per_dispatch


def train_together(runs: list, model, sync: str, clock: timing.RunClock) -> list[dict[str, Any]] | None:
    """Train the runs of one group to their last epoch; their summaries, or None when stopped."""
    active = [r for r in runs if not r.done]
    if active:
        stopped = _train_active(active, model, sync, clock)
        if stopped:
            return None
    clock.stop()
    summaries = []
    for r in runs:
        with clock.phase("logging"):
            r.logger.finish()
        num_params = int(sum(x.size for x in jax.tree.leaves(r.state.params)))
        summaries.append(reporting.final_summary(r.checkpoints.workdir, r.run, num_params, r.config.train.select_on,
                                                 clock))
    return summaries


def _store(active: list, place) -> tuple[Any, bool]:
    """The runs' training data on the devices: one store when they all train on one split."""
    splits = {id(r.split): r.split for r in active}
    task = active[0].task
    if len(splits) == 1:
        return place.shared_store(task.store(active[0].split, train=True)), True
    stores = []
    for split in splits.values():  # each store on the host, then stacked: not kept on the devices twice
        stores.append(parallel.unreplicate(task.store(split, train=True)))
        split.cache.clear()
    by_split = {key: k for k, key in enumerate(splits)}
    return place.stacked_store(run_stack.stacked_store([stores[by_split[id(r.split)]] for r in active])), False


def _train_active(active: list, model, sync: str, clock: timing.RunClock) -> bool:
    """Rounds until every run is done; True when a stop was agreed (everything saved)."""
    first = active[0].config
    tcfg, optim = first.train, first.optim
    streaming = run_stream.is_streaming(active)  # host batches (run_stream): no store, one step per call
    # where the runs sit on the local devices; streaming runs stay inside (their host batches are split
    # over the devices as a run's alone)
    place = run_placement.Inside(len(active)) if streaming else run_placement.choose(tcfg, len(active))
    with clock.phase("data"):
        store, shared = (None, True) if streaming else _store(active, place)
    options_ = optimizer_options(optim)  # SGD or Adam (HTNet), as `make_optimizer` builds it alone
    optim_key = (float(optim.lr), float(optim.momentum), float(optim.weight_decay),
                 tuple(int(m) for m in optim.milestones), float(optim.gamma), options_["name"],
                 options_["b1"], options_["b2"], options_["eps"])
    task = active[0].task
    options = task.input_options(active[0].model_config, first.data)
    width = run_stack.resolve_vmap_width(int(tcfg.get("runs_vmap_width", -1)))
    chunk_fn = run_stream.runs_step_fn(task, model, optim_key, sync, width) if streaming else \
        place.chunk_fn(task, model, optim_key, options, sync, shared, width)
    per_call = 1 if streaming else steps_per_dispatch(tcfg.steps_per_dispatch, max(r.steps_per_epoch for r in active))
    predictor = Predictor(model, mode="streaming" if streaming else "resident", batch_size=first.eval.batch_size,
                          task=task, options=options)
    seeds = place.per_run([r.config.train.seed for r in active])
    spes = place.per_run([r.steps_per_epoch for r in active])
    replicated = place.put_states([r.state for r in active])
    with StopOnSignal() as stop:
        while not all(r.done for r in active):
            replicated, complete = _round(active, replicated, store, chunk_fn, seeds, spes, per_call, stop, clock,
                                          place)
            for k, state in enumerate(place.states(replicated)):
                active[k].state = state
            if not complete:
                with clock.phase("checkpoints"):
                    for r in _stepped(active):
                        r.run.partial = {"epoch": r.epoch, "step": r.step, **r.progress.snapshot()}
                        r.checkpoints.save(r.state, r.model_config, r.run, interrupted=True)
                log(f"\nreceived signal {stop.signal or 'on another process'}: saved every run mid-epoch ("
                    + ", ".join(f"{r.spec.name} step {r.step}" for r in active) + "); run the same command "
                    "again to resume")
                return True
            for r in active:
                if r.progress is not None:
                    _end_epoch(r, predictor, clock)
            if stop.agreed:
                log(f"\nreceived signal {stop.signal or 'on another process'}: every run saved its epoch; "
                    "run the same command again to resume")
                return True
    return False


def _stepped(active: list) -> list:
    """Runs that took steps in the unfinished round (the others' latest checkpoint is their state)."""
    return [r for r in active if r.progress is not None and r.step != r.round_start_step]


def _round(active, replicated, store, chunk_fn, seeds, spes, per_call: int, stop, clock, place):
    """One round: every unfinished run to the end of its epoch. Returns (state, ran to the end)."""
    tcfg = active[0].config.train
    plans, firsts = [], []
    for r in active:
        r.round_start_step = r.step
        r.progress = None
        if r.done:
            plans.append(None)
            firsts.append(0)
            continue
        epoch, first = r.epoch, r.step - r.epoch * r.steps_per_epoch
        order = r.train_ids[epoch_order(len(r.train_ids), seed=r.config.train.seed, epoch=epoch,
                                             shuffle=bool(r.config.train.get("shuffle", True)))]
        plans.append(batch_plan(order, global_batch=tcfg.global_batch, process_index=jax.process_index(),
                                process_count=jax.process_count()))
        firsts.append(first)
        earlier = r.run.partial if (first and r.run.partial.get("epoch") == epoch
                                    and r.run.partial.get("step") == r.step) else None
        r.progress = reporting.EpochProgress(epoch, tcfg.epochs, r.steps_per_epoch, first, tcfg.global_batch,
                                             enabled=False, resume=earlier, terms=r.task.terms)
        # Alone, the run would report its steps in calls of this many: its running sums add up alike.
        r.block = steps_per_dispatch(tcfg.steps_per_dispatch, r.steps_per_epoch)
        r.pending, r.position, r.round_epoch = [], first, epoch
    indices, valid, starts = run_stack.round_plan(plans, firsts)
    epochs = place.per_run([r.epoch if not r.done else 0 for r in active])
    length = indices.shape[1]
    bar = _bar(active, length)
    position, pending = 0, None
    streams = run_stream.RoundStreams(active, chunk_fn, indices, valid, starts, seeds, spes) if store is None else None
    with clock.phase("steps"):
        while position < length:
            if streams is not None:  # a streaming family: the runs' host batches, one step
                replicated, metrics = streams(replicated, position)
            else:
                plan_i, plan_v = place.chunk(indices, valid, position, per_call)
                replicated, metrics = chunk_fn(replicated, store, plan_i, plan_v, epochs, seeds, spes)
            if pending is not None:
                _consume(active, *pending, starts, length, bar, place)
            answer = parallel.any_process_async(stop.requested)
            decided = answer if isinstance(answer, bool) else (pending is not None and parallel.read_flag(pending[2]))
            pending = (metrics, position, answer)
            position += per_call
            clock.mark("first_step")
            if decided:
                stop.agreed = True
                break
        if pending is not None:
            _consume(active, *pending, starts, length, bar, place)
            if not stop.agreed and parallel.read_flag(pending[2]):
                stop.agreed = True
    bar.close()
    for r in active:
        _flush(r, final=True)
    return replicated, min(position, length) >= length


def _bar(active: list, length: int):
    from tqdm.auto import tqdm

    epochs = sorted({r.epoch + 1 for r in active if not r.done})
    return tqdm(total=length, desc=f"{sum(not r.done for r in active)} runs, epoch "
                f"{'/'.join(map(str, epochs))}/{active[0].config.train.epochs}", unit="step",
                disable=jax.process_index() != 0, dynamic_ncols=True, leave=True)


def _consume(active: list, metrics, position: int, answer, starts: list[int], length: int, bar, place) -> None:
    """Hand one call's per-run, per-step metrics to each run (blocks until the call is done)."""
    del answer
    metrics = place.metrics(metrics)  # name -> (K, steps)
    width = next(iter(metrics.values())).shape[1]
    for k, r in enumerate(active):
        if r.progress is None:
            continue
        columns = [j for j in range(width) if starts[k] <= position + j < length]
        for j in columns:
            r.pending.append({name: values[k, j] for name, values in metrics.items()})
        _flush(r, final=False)
    bar.update(min(width, length - position))


def _flush(r, final: bool) -> None:
    """Report a run's steps in the blocks it reports alone (its own calls), so its sums are the same."""
    if r.progress is None:
        return
    while r.pending and (len(r.pending) >= r.block or final):
        block, r.pending = r.pending[:r.block], r.pending[r.block:]
        stacked = {name: np.array([step[name] for step in block]) for name in block[0]}
        r.position += len(block)
        check_finite(stacked, r.round_epoch * r.steps_per_epoch + r.position)
        r.progress.update(stacked)


def _end_epoch(r, predictor: Predictor, clock: timing.RunClock) -> None:
    """The epoch's record, evaluation, best, checkpoint and logs: `pthnet train`'s order."""
    tcfg = r.config.train
    epoch = r.epoch - 1  # the epoch that just ended
    r.run.partial = {}
    record = {"epoch": epoch + 1, "step": r.step, "lr": float(r.schedule()(epoch * r.steps_per_epoch)),
              **r.progress.close()}
    if (epoch + 1) % tcfg.eval_every == 0 or epoch + 1 == tcfg.epochs:
        with clock.phase("eval"):
            started = time.perf_counter()
            variables = {"params": r.state.params, **r.state.model_state}
            for name, (split, ids) in r.eval_sets.items():
                logits, labels = predictor.predict(variables, split, ids)
                result = classification_metrics(logits, labels, split.num_classes)
                record[name] = {k: result[k] for k in r.task.metrics}
                keep = getattr(r.task, "keep_predictions", None)  # optional: a family keeps them (HTNet LOSO)
                if keep is not None and jax.process_index() == 0:
                    keep(r.checkpoints.workdir, name, epoch + 1, np.asarray(logits), ids)
            record["eval_seconds"] = time.perf_counter() - started
    is_best = _bookkeep(r.run, record, tcfg)
    save_started = time.perf_counter()
    # config.train.checkpoint_every N (many runs only): a checkpoint every N epochs and at the last;
    # config.train.save_best False: no best/ per improvement (HTNet's LOSO selects from kept predictions)
    if (epoch + 1) % int(tcfg.get("checkpoint_every", 1)) == 0 or epoch + 1 == tcfg.epochs:
        with clock.phase("checkpoints"):
            r.checkpoints.save(r.state, r.model_config, r.run, best=is_best and bool(tcfg.get("save_best", True)))
    record["save_seconds"] = time.perf_counter() - save_started
    with clock.phase("logging"):
        if jax.process_index() == 0:
            print(f"{r.spec.name}: ", end="")
        r.logger.epoch(record, r.run)
    r.progress = None
    r.done = r.epoch >= tcfg.epochs
