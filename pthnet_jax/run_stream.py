"""Many runs in one program for streaming families: K runs' host batches stacked on the run axis.

A resident family's batches are sampled on the device from a store (`run_stack.runs_chunk`); a
streaming family's come from the host (`task.stream`: LSTPNet's grain clip reader, PTH-Net's records
when its features do not fit). Here every run of a round reads its own stream (its split or clip
subset, seed and epoch, from the step it stopped at), exactly the batches `epochs.StreamingRunner`
gives it alone; per step the K runs' batches are stacked on a run axis, (devices, K, per_device, ...),
and the single-run step (`steps.seeded_train_step`) is mapped over it inside pmap (`jax.vmap`, or
`lax.map` one run after another as `config.train.runs_vmap_width` says), one step per call as alone.

A run with fewer steps left in the round gets all-invalid batches in front (where `round_plan` pads
the resident plans): the step's result is discarded for it (a per-run select), so such a batch changes
nothing (no weight decay, momentum, step count or BatchNorm statistics). Each run has its own
iterator (its own decoding threads), opened and primed when the round starts, so the K streams decode
side by side while the device runs the previous step.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pthnet_jax import parallel, run_stack, steps


def is_streaming(runs: Sequence[Any]) -> bool:
    """True when the runs read their training data through `task.stream` (checked alike by runs.py)."""
    first = runs[0]
    return first.task.choose_mode(first.split, first.config.data.mode) == "streaming"


def runs_step(state, batch, seeds, steps_per_epoch, *, task, model, optim: tuple, sync: str, vmap_width: int = 0):
    """`steps.seeded_train_step` mapped over the run axis (inside pmap); per-step metrics (K, 1).

    `optim` and `vmap_width` as `run_stack.runs_chunk` takes them (width 1: one run after another,
    `lax.map`, each run's step compiled as alone; 0: one `vmap` of every run)."""
    def one_run(state, batch, seed, per_epoch):
        optimizer = run_stack.traced_optimizer(*optim[:5], per_epoch, *optim[5:])
        new, metrics = steps.seeded_train_step(state, batch, seed, task=task, model=model, optimizer=optimizer,
                                               sync=sync)
        # A padding step (no valid row on any device) keeps the state as it was: no weight decay,
        # momentum, step count or statistics. The decision is a global sum, the same on every device.
        real = parallel.global_sum(jnp.any(batch["valid"]).astype(jnp.int32)) > 0
        new = jax.tree.map(lambda a, b: jnp.where(real, a, b), new, state)
        return new, jax.tree.map(lambda x: x[None], metrics)

    if vmap_width == 0 or vmap_width >= seeds.shape[0]:
        return jax.vmap(one_run)(state, batch, seeds, steps_per_epoch)
    return jax.lax.map(lambda args: one_run(*args), (state, batch, seeds, steps_per_epoch),
                       batch_size=None if vmap_width == 1 else vmap_width)


def runs_step_fn(task, model, optim: tuple, sync: str, vmap_width: int = 0):
    """The pmapped multi-run streaming step (cached: one trace per setting)."""
    return steps.pmapped(runs_step, donate_state=True, task=task, model=model, optim=optim, sync=sync,
                         vmap_width=int(vmap_width))


class RoundStreams:
    """One round's host batches: `__call__(replicated, position)` runs round step `position`.

    indices/valid/starts: the round plan (`run_stack.round_plan`); the streams must give the same
    clips (checked where a batch names them, `index`), `starts[k]` is where run k's real steps begin.
    """

    def __init__(self, active: Sequence[Any], step_fn, indices: np.ndarray, valid: np.ndarray,
                 starts: Sequence[int], seeds: np.ndarray, steps_per_epoch: np.ndarray):
        self.active, self.step_fn, self.seeds, self.spes = list(active), step_fn, seeds, steps_per_epoch
        self.indices, self.valid, self.starts = indices, valid, list(starts)
        self.length = indices.shape[1]
        self.streams: list[Iterator[dict] | None] = []
        self.ahead: list[dict | None] = []
        for k, r in enumerate(self.active):
            left = self.length - self.starts[k]
            stream = None
            if r.progress is not None and left:
                tcfg = r.config.train
                # epochs.StreamingRunner's call, argument for argument: the batches the run reads alone
                stream = iter(r.task.stream(
                    r.split, train=True, global_batch=int(tcfg.global_batch), seed=int(tcfg.seed),
                    epoch=r.round_epoch, options=r.task.input_options(r.model_config, r.config.data),
                    num_devices=parallel.local_device_count(), clip_subset=r.train_ids, shuffle=True,
                    start_step=r.steps_per_epoch - left, stop_step=r.steps_per_epoch))
            self.streams.append(stream)
            # The first batch now: every run's decoding starts together, and padding has a template.
            self.ahead.append(None if stream is None else self._next(k, stream))
        template = next((b for b in self.ahead if b is not None), None)
        self.padding = None if template is None else _padding(template)

    def _next(self, k: int, stream) -> dict:
        try:
            return next(stream)
        except StopIteration:
            raise RuntimeError(f"run {self.active[k].spec.name}: its data stream ended before the epoch's "
                               f"{self.active[k].steps_per_epoch} steps") from None

    def _batch(self, k: int, position: int) -> dict:
        if position < self.starts[k] or self.streams[k] is None:
            return self.padding
        batch = self.ahead[k]
        self.ahead[k] = None if position + 1 >= self.length else self._next(k, self.streams[k])
        if "index" in batch:  # the stream and the round plan name the same clips
            keep = self.valid[k, position]
            if not np.array_equal(np.asarray(batch["index"]).reshape(-1)[keep], self.indices[k, position][keep]):
                raise RuntimeError(f"run {self.active[k].spec.name}: its data stream and its epoch plan differ "
                                   f"at round step {position}")
        return batch

    def __call__(self, replicated, position: int):
        batches = [self._batch(k, position) for k in range(len(self.active))]
        stacked = {key: np.stack([np.asarray(b[key]) for b in batches], axis=1) for key in batches[0]}
        return self.step_fn(replicated, parallel.shard(stacked), self.seeds, self.spes)


def _padding(template: dict) -> dict:
    """An all-invalid batch shaped like `template` (zeros: what the stream gives on padding rows)."""
    return {key: np.zeros(np.shape(value), np.asarray(value).dtype) for key, value in template.items()}
