"""Evaluation: H-level logits of every clip of a split, the paper's metrics, forward/backward fusion.

The library behind `pthnet evaluate` (`pthnet_jax.commands.evaluate`, which writes the files and
plots) and behind the trainer's per-epoch evaluation.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from pthnet_jax import parallel, steps
from pthnet_jax.data import batch_plan, choose_mode, iterate_batches, resident_features
from pthnet_jax.metrics import classification_metrics, fuse, mu_sweep
from pthnet_jax.models.pthnet import PTHNet


class Predictor:
    """H-level logits for every clip of a split (or a subset), in list order, padded batches exact."""

    def __init__(self, model: PTHNet, mode: str = "auto", batch_size: int = 0):
        self.model, self.mode = model, mode
        self.devices = parallel.local_device_count() * jax.process_count()
        if batch_size < 0:
            raise ValueError(f"evaluation batch size must be >= 0 (0 = auto), got {batch_size}")
        batch_size = batch_size or default_eval_batch()
        self.batch_size = max(self.devices, (batch_size // self.devices) * self.devices)
        self._resident_fn = steps.pmapped(steps.predict_resident, model=model, max_len=model.config.max_len)
        self._batch_fn = steps.pmapped(steps.predict, model=model)

    def predict(self, params: Any, split, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (logits (n, C), labels (n,)) for clips `ids` (default: all, list order)."""
        ids = np.arange(split.num_clips) if ids is None else np.asarray(ids)
        replicated = parallel.replicate(params)
        devices = parallel.local_device_count()
        # No batch larger than the split: 500 clips in a batch of 2048 would compute 4x the work.
        batch_size = min(self.batch_size, -(-len(ids) // self.devices) * self.devices)
        collected_index, collected_logits = [], []
        if choose_mode(split, self.mode) == "resident":
            resident = resident_features(split, levels=("H",))
            indices, valid = batch_plan(ids, global_batch=batch_size, process_index=jax.process_index(),
                                        process_count=jax.process_count())
            # Every batch is dispatched before any result is read: the host never stalls the device.
            outputs = [self._resident_fn(replicated, resident, parallel.split_for_devices(step_indices),
                                         parallel.split_for_devices(step_valid))
                       for step_indices, step_valid in zip(indices, valid)]
            for step_indices, step_valid, logits in zip(indices, valid, outputs):
                # Padded rows stay (index -1): every process must gather arrays of one shape.
                collected_index.append(np.where(step_valid, step_indices.astype(np.int64), -1))
                collected_logits.append(np.asarray(logits).reshape(len(step_indices), -1))
        else:
            for batch in iterate_batches(split, train=False, global_batch=batch_size, mode="streaming",
                                         max_len=self.model.config.max_len, levels=("H",),
                                         num_devices=devices, clip_subset=ids):
                logits = np.asarray(self._batch_fn(replicated, parallel.shard(batch)))
                keep = batch["valid"].reshape(-1)
                collected_index.append(np.where(keep, batch["index"].reshape(-1).astype(np.int64), -1))
                collected_logits.append(logits.reshape(keep.shape[0], -1))
        index = parallel.all_gather_hosts(np.concatenate(collected_index))
        logits = parallel.all_gather_hosts(np.concatenate(collected_logits))
        real = index >= 0
        index, logits = index[real], logits[real]
        order = np.argsort(index, kind="stable")
        index, logits = index[order], logits[order]
        if not np.array_equal(index, np.sort(ids)):
            raise RuntimeError("evaluation did not see every clip exactly once")
        return logits, np.asarray(split.labels)[index]


def default_eval_batch() -> int:
    """Evaluation batch for `batch_size=0`: 256 clips on CPU (cache-friendly), 4096 on accelerators."""
    return 256 if jax.devices()[0].platform == "cpu" else 4096


def evaluate_checkpoint(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, split_name: str = "test",
                        mode: str = "auto", batch_size: int = 0) -> dict[str, Any]:
    """Logits and metrics of one checkpoint (directory or .pth) on one split."""
    from pthnet_jax import load_model
    from pthnet_jax.data import open_split

    model, variables = load_model(checkpoint)
    split = open_split(data_dir, split_name)
    if model.config.num_classes != split.num_classes:
        raise ValueError(f"{checkpoint} predicts {model.config.num_classes} classes but {data_dir} "
                         f"({split.dataset_info.get('benchmark')}) has {split.num_classes}")
    if model.config.n_in != split.feature_dim:
        raise ValueError(f"{checkpoint} expects {model.config.n_in}-d features but {data_dir} has "
                         f"{split.feature_dim}-d")
    logits, labels = Predictor(model, mode, batch_size).predict(variables["params"], split)
    return {"split": split, "logits": logits, "labels": labels,
            "metrics": classification_metrics(logits, labels, split.num_classes)}


def evaluate(checkpoint, data_dir, split: str = "test", rv_checkpoint=None, rv_data=None, mu: float = 0.7,
             sweep: bool = False, mode: str = "auto", batch_size: int = 0
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics of a checkpoint on a split, fused with a backward model when `rv_checkpoint` is given.

    Returns (result, arrays): the JSON-able metrics (with the per-model ones and the mu sweep when
    fused) and the arrays behind them (clip ids, labels, logits).
    """
    if sweep and rv_checkpoint is None:  # checked before any work
        raise ValueError("--mu-sweep needs --rv-checkpoint (it sweeps the fusion weight)")
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"--mu must be in [0, 1], got {mu}")
    forward = evaluate_checkpoint(checkpoint, data_dir, split, mode, batch_size)
    split_info = forward["split"]
    result = dict(forward["metrics"])
    arrays = {"clip_ids": split_info.clip_ids, "labels": forward["labels"], "logits": forward["logits"]}
    if rv_checkpoint is not None:
        backward = evaluate_checkpoint(rv_checkpoint, rv_data or data_dir, split, mode, batch_size)
        if not np.array_equal(backward["split"].clip_ids.size, split_info.clip_ids.size) or \
                not np.array_equal(backward["labels"], forward["labels"]):
            raise ValueError("the backward data's clips/labels do not line up with the forward data's")
        fused = fuse(forward["logits"], backward["logits"], mu)
        result = classification_metrics(fused, forward["labels"], split_info.num_classes)
        result["mu"] = mu
        result["models"] = {"forward": forward["metrics"], "backward": backward["metrics"]}
        arrays.update(logits=fused, logits_forward=forward["logits"], logits_backward=backward["logits"])
        if sweep:
            result["mu_sweep"] = mu_sweep(forward["logits"], backward["logits"], forward["labels"],
                                          split_info.num_classes)
    result["split"] = split
    result["checkpoint"] = str(checkpoint)
    result["class_names"] = split_info.class_names
    return result, arrays
