"""Evaluation for every family: a model's logits (`task.predict`) for every clip of a split, the
paper's metrics, the checks of what a checkpoint and a dataset are, and fusion where the family
defines it (PTH-Net's forward/backward fusion: `families/pthnet/fusion.py`).

The library behind `pthnet evaluate` (`pthnet_jax.commands.evaluate`, which writes the files and
plots) and behind the trainer's per-epoch evaluation.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pthnet_jax import parallel, steps
from pthnet_jax.metrics import classification_metrics
from pthnet_jax.plan import batch_plan


class Predictor:
    """Evaluation logits (`task.predict`) for every clip of a split (or a subset), in list order,
    padded batches exact."""

    def __init__(self, model: Any, mode: str = "auto", batch_size: int = 0, task: Any = None, options: Any = None):
        if task is None:  # PTH-Net, as before families existed
            from pthnet_jax.task import get_task

            task = get_task()
        self.task, self.model, self.mode = task, model, mode
        self.options = task.input_options(model.config) if options is None else options
        self.devices = parallel.local_device_count() * jax.process_count()
        if batch_size < 0:
            raise ValueError(f"evaluation batch size must be >= 0 (0 = auto), got {batch_size}")
        batch_size = batch_size or default_eval_batch()
        self.batch_size = max(self.devices, (batch_size // self.devices) * self.devices)
        self._resident_fn = steps.pmapped(steps.predict_resident, task=task, model=model, options=self.options)
        self._batch_fn = steps.pmapped(steps.predict, task=task, model=model)

    def predict(self, variables: Any, split, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (logits (n, C), labels (n,)) for clips `ids` (default: all, list order). `variables`:
        {"params", *model_state}, or the params alone."""
        ids = np.arange(split.num_clips) if ids is None else np.asarray(ids)
        replicated = parallel.replicate(steps._as_variables(variables))
        devices = parallel.local_device_count()
        # No batch larger than the split: 500 clips in a batch of 2048 would compute 4x the work.
        batch_size = min(self.batch_size, -(-len(ids) // self.devices) * self.devices)
        # Every process keeps its whole share, padded rows included, so that the shares it gathers
        # from the other processes have the same shape (a collective needs that); then filter.
        collected_index, collected_valid, collected_logits = [], [], []
        if self.task.choose_mode(split, self.mode) == "resident":
            resident = self.task.store(split, train=False)
            indices, valid = batch_plan(ids, global_batch=batch_size, process_index=jax.process_index(),
                                        process_count=jax.process_count())
            # Every batch is dispatched before any result is read: the host never stalls the device.
            outputs = [self._resident_fn(replicated, resident, parallel.split_for_devices(step_indices),
                                         parallel.split_for_devices(step_valid))
                       for step_indices, step_valid in zip(indices, valid)]
            for step_indices, step_valid, logits in zip(indices, valid, outputs):
                collected_index.append(step_indices)
                collected_valid.append(step_valid)
                collected_logits.append(np.asarray(logits).reshape(len(step_indices), -1))
        else:
            for batch in self.task.stream(split, train=False, global_batch=batch_size, seed=0, epoch=0,
                                          options=self.options, num_devices=devices, clip_subset=ids,
                                          shuffle=False):
                logits = np.asarray(self._batch_fn(replicated, parallel.shard(batch)))
                collected_index.append(batch["index"].reshape(-1))
                collected_valid.append(batch["valid"].reshape(-1))
                collected_logits.append(logits.reshape(collected_valid[-1].shape[0], -1))
        keep = parallel.all_gather_hosts(np.concatenate(collected_valid))
        index = parallel.all_gather_hosts(np.concatenate(collected_index))[keep]
        logits = parallel.all_gather_hosts(np.concatenate(collected_logits))[keep]
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
    """Logits and metrics of one checkpoint (directory or .pth) on one split, by its family's task."""
    from pthnet_jax import load_variables

    task, config, variables = load_variables(checkpoint)
    split = task.open(data_dir, split_name)
    classes = getattr(config, "num_classes", split.num_classes)
    if classes != split.num_classes:
        raise ValueError(f"{checkpoint} predicts {classes} classes but {data_dir} "
                         f"({split.dataset_info.get('benchmark')}) has {split.num_classes}")
    try:
        task.check_fits(config, split)
    except ValueError as err:
        raise ValueError(f"{checkpoint} does not fit {data_dir}: {err}") from err
    model = task.model(config)
    predictor = Predictor(model, mode, batch_size, task=task, options=task.input_options(config))
    logits, labels = predictor.predict(variables, split)
    return {"split": split, "logits": logits, "labels": labels,
            "metrics": classification_metrics(logits, labels, split.num_classes)}


# ---- which data a checkpoint and a dataset are: refuse silent mix-ups -------------------------------
# Datasets record benchmark, fold, label set, face and direction (`pthnet import-features`); a run of
# `pthnet train` records its dataset in WORKDIR/data.json (and WORKDIR/config.json names it).

RECORD_KEYS = ("benchmark", "fold", "label_set", "face", "reverse")
DATA_RECORD = "data.json"


class DataMismatch(ValueError):
    """A checkpoint or dataset that is not what the evaluation needs (direction, benchmark, fold...)."""


def dataset_record(data_dir: str | os.PathLike, task: Any = None) -> dict[str, Any]:
    """What an imported dataset is: its metadata's RECORD_KEYS, class names, list checksums and
    directory (`task.dataset_dir` finds it; default PTH-Net's)."""
    if task is None:
        from pthnet_jax.task import get_task

        task = get_task()
    dataset_dir = task.dataset_dir(data_dir)
    meta_file = dataset_dir / "metadata.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    record = {key: meta[key] for key in RECORD_KEYS if key in meta}
    return {**record, "variant": meta.get("variant"), "list_sha256": meta.get("list_sha256"),
            "class_names": meta.get("class_names"), "data_dir": str(dataset_dir)}


def write_data_record(workdir: str | os.PathLike, data_dir: str | os.PathLike, task: Any = None) -> None:
    """Record a run's training data in WORKDIR/data.json (what `training_data_record` reads first)."""
    from pthnet_jax.fsutil import atomic_write_json

    if jax.process_index() == 0:
        atomic_write_json(Path(workdir) / DATA_RECORD, dataset_record(data_dir, task))


def training_data_record(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The record of the data a checkpoint was trained on; None when it carries none (a `.pth`)."""
    from pthnet_jax.checkpoint import CheckpointError, read_info

    path = Path(checkpoint)
    if path.is_file():
        return None
    if not (path / "pthnet").exists() and (path / "best").exists():
        path = path / "best"
    try:
        provenance = read_info(path).get("provenance") or {}
    except CheckpointError:
        return None
    if isinstance(provenance.get("data"), dict):  # recorded in the checkpoint itself
        return provenance["data"]
    runs = [path.parent, path.parent.parent] + ([Path(provenance["run"])] if provenance.get("run") else [])
    for run in runs:
        if (run / DATA_RECORD).is_file():
            return json.loads((run / DATA_RECORD).read_text())
    for run in runs:  # a run started from Python: its config names the dataset (and the family)
        if (run / "config.json").is_file():
            from pthnet_jax.task import get_task

            saved = json.loads((run / "config.json").read_text())
            data_dir = saved.get("data", {}).get("data_dir")
            try:
                return dataset_record(data_dir, get_task(saved.get("family"))) if data_dir else None
            except (FileNotFoundError, ValueError):
                continue
    return None


def describe(record: dict[str, Any]) -> str:
    """'DFEW fold 2 backward (time-reversed)'-style name of a data record."""
    parts = [str(record.get("benchmark", "?"))]
    if record.get("label_set"):
        parts.append(f"({record['label_set']} labels)")
    if record.get("fold") is not None:
        parts.append(f"fold {record['fold']}")
    if record.get("face"):
        parts.append("face crops")
    if "reverse" in record:
        parts.append("backward (time-reversed)" if record["reverse"] else "forward")
    return " ".join(parts)


def check_checkpoint_data(role: str, checkpoint, data: dict[str, Any], checks: dict[str, list],
                          allow_unrecorded: bool, required: bool) -> None:
    """Refuse a checkpoint whose recorded training data differs from `data` in RECORD_KEYS."""
    trained = training_data_record(checkpoint)
    if trained is None:
        text = (f"the {role} checkpoint {checkpoint} carries no record of its training data (an imported "
                f".pth or a moved run), so that it fits {data['data_dir']} ({describe(data)}) is not checked")
        if required and not allow_unrecorded:
            raise DataMismatch(f"{text}; pass --allow-unrecorded to fuse anyway")
        checks["unchecked"].append(text)
        return
    diffs = [f"{key} {trained[key]!r} vs {data[key]!r}" for key in RECORD_KEYS
             if key in trained and key in data and trained[key] != data[key]]
    if diffs:
        raise DataMismatch(f"the {role} checkpoint {checkpoint} was trained on {describe(trained)} but "
                           f"{data['data_dir']} is {describe(data)} ({'; '.join(diffs)}); pass the matching "
                           "--checkpoint/--data (--rv-checkpoint/--rv-data for the backward model)")
    checks["verified"].append(f"the {role} checkpoint was trained on {describe(trained)} = the data")


def evaluate(checkpoint, data_dir, split: str = "test", rv_checkpoint=None, rv_data=None, mu: float = 0.7,
             sweep: bool = False, mode: str = "auto", batch_size: int = 0, allow_unrecorded: bool = False
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics of a checkpoint on a split, fused with a backward model when `rv_checkpoint` is given.

    Before any work, what the checkpoints and datasets record is checked: a checkpoint trained here
    must match its data (benchmark, fold, label set, face, direction); for fusion the forward data
    must be forward and `rv_data` reversed, and a checkpoint without a record (an imported `.pth`)
    needs `allow_unrecorded`. Returns (result, arrays): the JSON-able metrics (with the per-model
    ones, the mu sweep when fused, and `checks`: what was verified and what could not be) and the
    arrays behind them (clip ids, labels, logits).
    """
    if sweep and rv_checkpoint is None:  # checked before any work
        raise ValueError("--mu-sweep needs --rv-checkpoint (it sweeps the fusion weight)")
    if rv_checkpoint is not None and rv_data is None:
        raise ValueError("--rv-checkpoint needs --rv-data: the backward model must see the time-reversed "
                         "features (`pthnet import-features ... --reverse`), not the forward ones")
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"--mu must be in [0, 1], got {mu}")
    checks: dict[str, list] = {"verified": [], "unchecked": []}
    task = checkpoint_task(checkpoint)
    if rv_checkpoint is not None:
        if task.fusion is None:
            raise ValueError(f"--rv-checkpoint: {checkpoint} is a {task.display_name} model, and that family "
                             "defines no forward/backward fusion")
        return task.fusion.evaluate_fused(task, checkpoint, data_dir, split, rv_checkpoint, rv_data, mu, sweep, mode,
                                          batch_size, allow_unrecorded, checks)
    data = dataset_record(data_dir, task)
    check_checkpoint_data("evaluated", checkpoint, data, checks, allow_unrecorded, False)
    forward = evaluate_checkpoint(checkpoint, data_dir, split, mode, batch_size)
    result = dict(forward["metrics"])
    arrays = {"clip_ids": forward["split"].clip_ids, "labels": forward["labels"], "logits": forward["logits"]}
    return finish_result(result, forward, checkpoint, split, checks), arrays


def finish_result(result: dict[str, Any], evaluated: dict[str, Any], checkpoint, split: str,
                  checks: dict[str, list]) -> dict[str, Any]:
    """What every evaluation result names: split, checkpoint, class names (the checkpoint's when it
    records them: they must be the data's) and the checks."""
    data_names = list(evaluated["split"].class_names)
    names = checkpoint_class_names(checkpoint)
    if names is not None and data_names and list(names) != data_names:
        raise DataMismatch(f"{checkpoint} was trained on the classes {list(names)} but the data's are "
                           f"{data_names} (another benchmark or class order)")
    result.update(split=split, checkpoint=str(checkpoint), class_names=list(names or data_names), checks=checks)
    return result


def checkpoint_task(checkpoint) -> Any:
    """The task of the family a checkpoint (directory, training workdir or .pth) holds."""
    from pthnet_jax.task import get_task

    return get_task(_checkpoint_info(checkpoint).get("family"))


def checkpoint_class_names(checkpoint) -> list[str] | None:
    """The class names a checkpoint records (None: it records none, e.g. an imported .pth)."""
    from pthnet_jax.checkpoint import class_names

    return class_names(_checkpoint_info(checkpoint))


def _checkpoint_info(checkpoint) -> dict[str, Any]:
    from pthnet_jax.checkpoint import CheckpointError, read_info

    path = Path(checkpoint)
    if not path.is_dir():
        return {}  # a file (an imported PyTorch checkpoint: PTH-Net's), or missing (reported later)
    if not (path / "pthnet").exists() and (path / "best").exists():
        path = path / "best"
    try:
        return read_info(path)
    except CheckpointError:
        return {}
