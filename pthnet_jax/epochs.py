"""Running one training epoch: the resident or streaming step runner, and stopping on a signal.

The trainer picks a runner once, from a small frozen `EpochSpec` (which holds the family's task and
its input options: the runners sample through `task.store`/`task.sample` or `task.stream`);
`run_epoch` drives it. The host
reads a device call's metrics only after it has dispatched the next call, so the device never waits
for Python (progress bar, finiteness check, the next plan).

Stopping: SIGTERM sets a flag on the process that received it. At every call boundary all processes
OR their flags together (`parallel.any_process_async`), and they all stop after the same call, so a
multi-process run never has one process waiting in a collective that another has left.
"""
from __future__ import annotations

import dataclasses
import signal
from typing import Any, Callable, Iterator

import jax
import numpy as np

from pthnet_jax import parallel, steps


class TrainingError(RuntimeError):
    """A run that cannot go on (bad data directory, NaN loss, class count mismatch...)."""


@dataclasses.dataclass(frozen=True)
class EpochSpec:
    """Everything that decides how an epoch's steps are run."""

    mode: str  # "resident" (features on the devices, sampled there) or "streaming" (records via grain)
    global_batch: int
    steps_per_epoch: int
    steps_per_call: int  # resident mode: training steps fused into one device call (lax.scan)
    seed: int
    task: Any  # the family (`pthnet_jax.task.Task`)
    options: Any  # the task's static input options (`task.input_options`)
    sync: str = "pmean"  # how the devices' mutable collections are combined (`steps.combine_model_state`)
    profile_steps: int = 0


class StopOnSignal:
    """SIGTERM (and SIGINT) handler for the duration of a run.

    `signal` is what this process received; `agreed` is set once every process knows that one of
    them did (`run_epoch` decides it at a call boundary).
    """

    SIGNALS = (signal.SIGTERM,)

    def __init__(self):
        self.signal: int | None = None
        self.agreed = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame) -> None:
        del frame
        self.signal = signum

    def __enter__(self) -> "StopOnSignal":
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _padded_chunk(indices: np.ndarray, valid: np.ndarray, start: int, length: int):
    """`length` steps from `start`; steps past the epoch's end are all padding (valid False)."""
    part_i, part_v = indices[start:start + length], valid[start:start + length]
    missing = length - len(part_i)
    if missing:
        part_i = np.concatenate([part_i, np.zeros((missing, part_i.shape[1]), part_i.dtype)])
        part_v = np.concatenate([part_v, np.zeros((missing, part_v.shape[1]), bool)])
    return part_i, part_v


class _Runner:
    """What both runners share: several processes compile the step, then meet, once."""

    def __init__(self, spec: EpochSpec):
        self.spec = spec
        self._met = jax.process_count() == 1

    def _compile_then_meet(self, function, args) -> None:
        """Compile the step first, then wait for every process, then run its collectives: on CPU,
        gloo gives the first collective ~30 s, less than a slower process may spend compiling."""
        if self._met:
            return
        function.lower(*args).compile()  # the call that follows finds it in the compilation cache
        parallel.wait_for_all_processes("training step compiled")
        self._met = True


class ResidentRunner(_Runner):
    """`steps_per_call` steps per device call, sampling from features resident on the devices."""

    def __init__(self, spec: EpochSpec, split, model, optimizer):
        super().__init__(spec)
        try:
            self.resident = spec.task.store(split, train=True)
        except Exception as err:  # noqa: BLE001 - array_record / TFDS decoding errors of a damaged shard
            raise TrainingError(f"{split.dataset_dir}: the records of split {split.name!r} cannot be read "
                                f"({type(err).__name__}: {str(err)[:300]}); the dataset is damaged: "
                                "import it again") from err
        self.chunk_fn = steps.pmapped(steps.train_chunk, donate_state=True, task=spec.task, model=model,
                                      optimizer=optimizer, options=spec.options, sync=spec.sync)

    def calls(self, replicated, epoch: int, plan, start: int) -> Iterator[tuple[Any, Any, int]]:
        """Yield (state, per-step metrics on the devices, number of real steps) per device call."""
        indices, valid = plan
        chunk, total = self.spec.steps_per_call, self.spec.steps_per_epoch
        epochs = np.full((parallel.local_device_count(),), epoch, np.int32)
        seeds = np.full((parallel.local_device_count(),), self.spec.seed, np.int32)  # traced: one program
        for position in range(start, total, chunk):
            plan_i, plan_v = _padded_chunk(indices, valid, position, chunk)
            args = (replicated, self.resident, parallel.split_for_devices(plan_i, axis=1),
                    parallel.split_for_devices(plan_v, axis=1), epochs, seeds)
            self._compile_then_meet(self.chunk_fn, args)
            replicated, metrics = self.chunk_fn(*args)
            yield replicated, metrics, min(chunk, total - position)


class StreamingRunner(_Runner):
    """One pmapped step per host batch, the records read through grain."""

    def __init__(self, spec: EpochSpec, split, train_ids: np.ndarray, model, optimizer):
        super().__init__(spec)
        self.split, self.train_ids = split, train_ids
        self.step_fn = steps.pmapped(steps.seeded_train_step, donate_state=True, task=spec.task, model=model,
                                     optimizer=optimizer, sync=spec.sync)

    def calls(self, replicated, epoch: int, plan, start: int) -> Iterator[tuple[Any, Any, int]]:
        del plan  # the task's stream plans the same epoch from (seed, epoch)
        spec = self.spec
        batches = spec.task.stream(self.split, train=True, global_batch=spec.global_batch, seed=spec.seed,
                                   epoch=epoch, options=spec.options, num_devices=parallel.local_device_count(),
                                   clip_subset=self.train_ids, shuffle=True, start_step=start,
                                   stop_step=spec.steps_per_epoch)
        seeds = np.full((parallel.local_device_count(),), spec.seed, np.int32)
        for batch in batches:
            args = (replicated, parallel.shard(batch), seeds)
            self._compile_then_meet(self.step_fn, args)
            replicated, metrics = self.step_fn(*args)
            yield replicated, metrics, 1


def make_runner(spec: EpochSpec, split, train_ids: np.ndarray, model, optimizer):
    if spec.mode == "resident":
        return ResidentRunner(spec, split, model, optimizer)
    return StreamingRunner(spec, split, train_ids, model, optimizer)


def run_epoch(runner, replicated, epoch: int, plan, start: int, stop: StopOnSignal,
              on_metrics: Callable[[dict[str, np.ndarray], int], Any]) -> tuple[Any, bool]:
    """Run the epoch's steps from `start`; returns (state, True when the epoch ran to its end).

    Stops early, after the same call on every process, when a stop was agreed.
    """
    spec = runner.spec
    position, pending = start, None
    for replicated, metrics, num_steps in runner.calls(replicated, epoch, plan, start):
        position += num_steps
        if pending is not None:
            _consume(*pending[:3], on_metrics)
        answer = parallel.any_process_async(stop.requested)
        # One process: the answer is known now. Several: read the previous call's answer (one call
        # behind, like the metrics), which every process reads at the same boundary.
        decided = answer if isinstance(answer, bool) else (pending is not None and parallel.read_flag(pending[3]))
        pending = (metrics, num_steps, epoch * spec.steps_per_epoch + position, answer)
        if decided:
            stop.agreed = True
            break
    if pending is not None:
        _consume(*pending[:3], on_metrics)
        if not stop.agreed and parallel.read_flag(pending[3]):
            stop.agreed = True
    return replicated, position >= spec.steps_per_epoch


def _consume(metrics: Any, num_steps: int, last_step: int, on_metrics) -> None:
    """Fetch one call's per-step metrics (blocks until that call is done), check and report them."""
    metrics = jax.tree.map(lambda x: np.atleast_1d(x)[:num_steps], parallel.unreplicate(metrics))
    check_finite(metrics, last_step)
    on_metrics(metrics, num_steps)


def check_finite(metrics: dict[str, np.ndarray], step: int) -> None:
    for name in ("total", "grad_norm"):
        values = np.asarray(metrics[name])
        if not np.isfinite(values).all():
            bad = int(np.argmax(~np.isfinite(values)))
            raise TrainingError(
                f"{'loss' if name == 'total' else 'gradient norm'} is {values[bad]} at step "
                f"{step - len(values) + bad + 1}: training diverged. Hint: lower --config.optim.lr, check "
                "the features for extreme values, or use float32 (--config.model_dtype=float32)")
