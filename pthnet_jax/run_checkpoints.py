"""A training run's checkpoints: every epoch's step directory (Orbax `CheckpointManager`), `best/`,
and the bookkeeping saved with them (`RunState`). The directory format is `checkpoint.py`'s.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import orbax.checkpoint as ocp

from pthnet_jax.checkpoint import (INFO_ITEM, MODEL_STATE_ITEM, PARAMS_ITEM, CheckpointError, read_info,
                                   save_args, save_checkpoint, split_variables, task_and_config)
from pthnet_jax.orbax_errors import QuietOrbaxErrors, describe_failure
from pthnet_jax.task import DEFAULT_FAMILY

# A training workdir holds `checkpoints/<step>/` (a checkpoint directory's items plus `optimizer`: the
# step counter and the optimiser state, written by an Orbax CheckpointManager) and `best/` (a model
# checkpoint directory of the best epoch so far).

CHECKPOINTS, BEST = "checkpoints", "best"
OPTIMIZER_ITEM = "optimizer"
# Step directories written before 2026-11-23 hold the whole train state (params included, a second
# copy) in this item; they still restore.
LEGACY_TRAIN_STATE_ITEM = "train_state"


@dataclasses.dataclass
class RunState:
    """Bookkeeping saved with every checkpoint (in the `pthnet` JSON item).

    Everything a workdir shows about finished epochs (`history.json`, `best/`, TensorBoard, the
    curves, `summary.json`) is derived from this, so a run killed between a checkpoint and those
    files repairs them on resume (`TrainCheckpoints.ensure_best`, `reporting.Logger.sync`).
    """

    epoch: int = 0  # epochs completed
    history: list = dataclasses.field(default_factory=list)
    best: dict = dataclasses.field(default_factory=dict)
    # An epoch stopped mid-way: {"epoch", "step", "totals" (running metric sums), "seconds"}, so the
    # resumed epoch's record covers all its steps.
    partial: dict = dataclasses.field(default_factory=dict)


class TrainCheckpoints:
    """The checkpoints of one training run: every epoch (keep the last `keep`, and always the best
    epoch's step, from which `best/` can be rebuilt) and `best/`.

    Every process of a multi-process run calls every method (the saves and deletions are
    collective); only process 0 moves `best/` into place. `identity` (config and dataset
    fingerprint) is saved with every step so that a resume can check it runs the same experiment.
    """

    def __init__(self, workdir: str | os.PathLike, keep: int, identity: Mapping[str, Any] | None = None,
                 family: str = DEFAULT_FAMILY):
        self.workdir = Path(workdir).absolute()
        self.family = family
        self.keep = max(1, int(keep))
        self.identity = dict(identity or {})
        options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True, cleanup_tmp_directories=True,
                                               enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.workdir / CHECKPOINTS, options=options,
                                             item_names=(PARAMS_ITEM, INFO_ITEM, OPTIMIZER_ITEM,
                                                         MODEL_STATE_ITEM, LEGACY_TRAIN_STATE_ITEM))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def step_dir(self, step: int) -> Path:
        return self.workdir / CHECKPOINTS / str(step)

    def latest_info(self) -> dict[str, Any]:
        """The `pthnet` JSON item of the latest step (CheckpointError when it is unreadable)."""
        return read_info(self.step_dir(self.manager.latest_step()))

    def restore(self, state: Any) -> tuple[Any, RunState]:
        """The latest step's train state and its bookkeeping; `state` gives the tree, shapes and dtypes
        (arrays or `jax.ShapeDtypeStruct`s); the arrays land on the first local device."""
        import jax

        step = self.manager.latest_step()
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state)
        legacy = (self.step_dir(step) / LEGACY_TRAIN_STATE_ITEM).is_dir()
        if legacy:
            items = {LEGACY_TRAIN_STATE_ITEM: ocp.args.StandardRestore(target)}
        else:
            items = {PARAMS_ITEM: ocp.args.StandardRestore(target.params),
                     OPTIMIZER_ITEM: ocp.args.StandardRestore(_optimizer_item(target))}
            if target.model_state:  # absent = none (every checkpoint of a family without mutable state)
                items[MODEL_STATE_ITEM] = ocp.args.StandardRestore(dict(target.model_state))
        items[INFO_ITEM] = ocp.args.JsonRestore()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            if legacy:
                restored_state = restored[LEGACY_TRAIN_STATE_ITEM]
            else:
                rest = restored[OPTIMIZER_ITEM]
                restored_state = target.replace(step=rest["step"], params=restored[PARAMS_ITEM],
                                                opt_state=rest["opt_state"],
                                                model_state=dict(restored.get(MODEL_STATE_ITEM) or {}))
            info = restored[INFO_ITEM]["provenance"]
            run = RunState(int(info["epoch"]), list(info["history"]), dict(info["best"]),
                           dict(info.get("partial") or {}))
        except Exception as err:  # noqa: BLE001 - Orbax/TensorStore raise many kinds; name the path
            raise CheckpointError(f"{self.step_dir(step)}: cannot restore this checkpoint into the "
                                  f"model and optimiser of this run ({type(err).__name__}: {err}). It is "
                                  "damaged or from another config: move it away to resume from the "
                                  "previous step, or use another --workdir") from err
        return restored_state, run

    def save(self, state: Any, model_config: Any, run: RunState, *, best: bool = False,
             interrupted: bool = False) -> None:
        """A step directory with `params`, `pthnet` and `optimizer`; and `best/` when `best`.

        A failure (disk full, permissions) raises CheckpointError naming the directory, removes the
        half-written step and leaves the earlier checkpoints as they were.
        """
        step = int(state.step)
        provenance = {"source": "pthnet-jax training", "run": str(self.workdir), "step": step,
                      "epoch": run.epoch, "history": run.history, "best": run.best,
                      "best_acc": run.best.get("value"), "interrupted": interrupted,
                      "partial": run.partial if interrupted else {}, **self.identity}
        items = save_args(state.params, model_config, provenance, family=self.family,
                          model_state=state.model_state)
        items[OPTIMIZER_ITEM] = ocp.args.StandardSave(_optimizer_item(state))
        try:
            with QuietOrbaxErrors():  # we report a failed save ourselves, in one line
                self.manager.save(step, args=ocp.args.Composite(**items), force=True)
                self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001
            self._remove_unfinished(step)
            raise CheckpointError(f"{self.step_dir(step)}: could not save the checkpoint of step {step} "
                                  f"({describe_failure(err)}); the earlier checkpoints are intact: free space "
                                  "or fix the permissions, then run the same command again to resume") from err
        if best:
            self._replace_best({"params": state.params, **state.model_state}, model_config, provenance)
        self._prune(run)

    def _remove_unfinished(self, step: int) -> None:
        import jax

        from pthnet_jax.fsutil import remove_path

        if jax.process_index() != 0:
            return
        # The failed item's error can come back while other items' array writes are still in flight
        # (TensorStore's threads): a file they add mid-removal keeps its directory. Remove until a
        # short pause finds nothing left (the writes fail fast on the same full disk); the last removal
        # follows the longest pause.
        for pause in (0.05, 0.2, 0.5, 1.0, 2.0, 0.0):
            leftovers = list((self.workdir / CHECKPOINTS).glob(f"{step}.orbax-checkpoint-tmp*"))
            if step not in _finalized_steps(self.workdir / CHECKPOINTS) and self.step_dir(step).exists():
                leftovers.append(self.step_dir(step))
            if not leftovers:
                return
            for path in leftovers:
                remove_path(path)
            time.sleep(pause)

    def _prune(self, run: RunState) -> None:
        """Keep the last `keep` steps and the best epoch's step; delete the others."""
        steps = sorted(self.manager.all_steps())
        keep = set(steps[-self.keep:])
        if run.best.get("step") is not None:
            keep.add(int(run.best["step"]))
        for step in steps:
            if step not in keep:
                self.manager.delete(step)

    def best_is_current(self, run: RunState) -> bool:
        """`best/` holds the step `run.best` names (or there is no best yet)."""
        want = run.best.get("step")
        if want is None:
            return True
        try:
            return read_info(self.workdir / BEST)["provenance"].get("step") == want
        except (CheckpointError, KeyError, AttributeError):
            return False

    def ensure_best(self, run: RunState) -> str | None:
        """Re-create `best/` from the best epoch's step when a kill left it missing or stale.

        Returns what was done (for the log), or None when `best/` was already right.
        """
        import jax

        from pthnet_jax.fsutil import remove_stale_staging

        current = self.best_is_current(run)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            current = bool(multihost_utils.broadcast_one_to_all(np.int32(current)))
        if jax.process_index() == 0:
            remove_stale_staging(self.workdir / BEST)
        if current:
            return None
        step = int(run.best["step"])
        if step not in self.manager.all_steps():
            return (f"warning: {self.workdir / BEST} does not hold the best epoch {run.best.get('epoch')} "
                    f"(step {step}) and that step's checkpoint is gone; it cannot be rebuilt")
        info = read_info(self.step_dir(step))
        task, config = task_and_config(self.step_dir(step), info)
        params_target, state_target = split_variables(task.abstract_variables(config))
        items = {PARAMS_ITEM: ocp.args.StandardRestore(params_target)}
        if state_target:
            items[MODEL_STATE_ITEM] = ocp.args.StandardRestore(state_target)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        variables = {"params": restored[PARAMS_ITEM], **dict(restored.get(MODEL_STATE_ITEM) or {})}
        self._replace_best(variables, config, info["provenance"])
        return f"rebuilt {self.workdir / BEST} from the checkpoint of the best epoch {run.best.get('epoch')}"

    def _replace_best(self, variables: Mapping[str, Any], model_config: Any, provenance: Mapping[str, Any]) -> None:
        """Write the new best beside the old one, then swap: a crash leaves one complete copy.

        The staging name is the same on every process (the save is collective); a leftover from a
        killed run is removed first.
        """
        import jax
        from jax.experimental import multihost_utils

        from pthnet_jax.fsutil import remove_path, swap_in

        staging = self.workdir / ".best-staging"
        if jax.process_index() == 0:
            remove_path(staging)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("pthnet best: staging clean")
        try:
            params, model_state = split_variables(variables)
            save_checkpoint(staging, params, model_config, provenance, family=self.family, model_state=model_state)
            if jax.process_index() == 0:
                swap_in(staging, self.workdir / BEST)
        except Exception as err:  # noqa: BLE001
            if jax.process_index() == 0:
                remove_path(staging)
            raise CheckpointError(f"{self.workdir / BEST}: could not write the best checkpoint "
                                  f"({describe_failure(err)}); the run's checkpoints are intact and a re-run "
                                  "rebuilds it") from err
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("pthnet best: swapped")

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _optimizer_item(state: Any) -> dict[str, Any]:
    """What a train state (`steps.TrainState`) holds besides its params and its model state."""
    return {"step": state.step, "opt_state": state.opt_state}


def _finalized_steps(directory: Path) -> set[int]:
    return {int(p.name) for p in directory.iterdir() if p.name.isdigit()} if directory.is_dir() else set()
