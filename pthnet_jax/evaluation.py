"""Evaluation: H-level logits of every clip of a split, the paper's metrics, forward/backward fusion.

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
        # Every process keeps its whole share, padded rows included, so that the shares it gathers
        # from the other processes have the same shape (a collective needs that); then filter.
        collected_index, collected_valid, collected_logits = [], [], []
        if choose_mode(split, self.mode) == "resident":
            resident = resident_features(split, levels=("H",))
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
            for batch in iterate_batches(split, train=False, global_batch=batch_size, mode="streaming",
                                         max_len=self.model.config.max_len, levels=("H",),
                                         num_devices=devices, clip_subset=ids):
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


# ---- which data a checkpoint and a dataset are: refuse silent mix-ups -------------------------------
# Datasets record benchmark, fold, label set, face and direction (`pthnet import-features`); a run of
# `pthnet train` records its dataset in WORKDIR/data.json (and WORKDIR/config.json names it).

RECORD_KEYS = ("benchmark", "fold", "label_set", "face", "reverse")
DATA_RECORD = "data.json"


class DataMismatch(ValueError):
    """A checkpoint or dataset that is not what the evaluation needs (direction, benchmark, fold...)."""


def dataset_record(data_dir: str | os.PathLike) -> dict[str, Any]:
    """What an imported dataset is: its metadata's RECORD_KEYS, list checksums and directory."""
    from pthnet_jax.data.builder import find_dataset_dir

    dataset_dir = find_dataset_dir(data_dir)
    meta_file = dataset_dir / "metadata.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    record = {key: meta[key] for key in RECORD_KEYS if key in meta}
    return {**record, "variant": meta.get("variant"), "list_sha256": meta.get("list_sha256"),
            "data_dir": str(dataset_dir)}


def write_data_record(workdir: str | os.PathLike, data_dir: str | os.PathLike) -> None:
    """Record a run's training data in WORKDIR/data.json (what `training_data_record` reads first)."""
    from pthnet_jax.fsutil import atomic_write_json

    if jax.process_index() == 0:
        atomic_write_json(Path(workdir) / DATA_RECORD, dataset_record(data_dir))


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
    for run in runs:  # a run started from Python: its config names the dataset
        if (run / "config.json").is_file():
            data_dir = json.loads((run / "config.json").read_text()).get("data", {}).get("data_dir")
            try:
                return dataset_record(data_dir) if data_dir else None
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


def check_directions(forward: dict[str, Any], backward: dict[str, Any], checks: dict[str, list],
                     allow_unrecorded: bool) -> None:
    """The forward data is forward, the backward data reversed, both the same benchmark/fold/labels."""
    for role, record, want in (("--data", forward, False), ("--rv-data", backward, True)):
        if "reverse" not in record:
            text = f"{role} {record['data_dir']} does not record its direction (imported by an older version)"
            if not allow_unrecorded:
                raise DataMismatch(f"{text}; re-import it, or pass --allow-unrecorded")
            checks["unchecked"].append(text)
        elif record["reverse"] != want:
            raise DataMismatch(f"{role} {record['data_dir']} holds the {describe(record)} features, but "
                               f"{role} needs the {'backward (--reverse)' if want else 'forward'} ones"
                               + (" (were --data and --rv-data swapped?)" if want is False else ""))
    diffs = [f"{key} {forward[key]!r} vs {backward[key]!r}" for key in RECORD_KEYS[:-1]
             if key in forward and key in backward and forward[key] != backward[key]]
    if diffs:
        raise DataMismatch(f"--data {forward['data_dir']} and --rv-data {backward['data_dir']} are not the "
                           f"same benchmark/fold/label set: {'; '.join(diffs)}")
    checks["verified"].append(f"--data is {describe(forward)}, --rv-data {describe(backward)}")


def forward_clip_id(clip_id: str) -> str:
    """A clip's path with the `_rv` of its level folder removed: the same clip in both directions."""
    return "/".join(part[:-3] if part.startswith("th14_vit_g_16") and part.endswith("_rv") else part
                    for part in str(clip_id).split("/"))


def check_clip_order(forward_split, backward_split) -> None:
    """Fusion adds logits row by row: both splits must list the same clips, in the same order."""
    a = [forward_clip_id(c) for c in forward_split.clip_ids]
    b = [forward_clip_id(c) for c in backward_split.clip_ids]
    if len(a) != len(b):
        raise DataMismatch(f"the forward split has {len(a)} clips but the backward one {len(b)}: "
                           "not the same list")
    bad = next((i for i in range(len(a)) if a[i] != b[i]
                or forward_split.labels[i] != backward_split.labels[i]), None)
    if bad is not None:
        raise DataMismatch(f"clip {bad + 1} of the forward list is {a[bad]} (label {forward_split.labels[bad]}) "
                           f"but of the backward list {b[bad]} (label {backward_split.labels[bad]}): "
                           "the lists are not the same clips in the same order")


def evaluate(checkpoint, data_dir, split: str = "test", rv_checkpoint=None, rv_data=None, mu: float = 0.7,
             sweep: bool = False, mode: str = "auto", batch_size: int = 0, allow_unrecorded: bool = False
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics of a checkpoint on a split, fused with a backward model when `rv_checkpoint` is given.

    Before any work, what the checkpoints and datasets record is checked: a checkpoint trained here
    must match its data (benchmark, fold, label set, face, direction); for fusion the forward data
    must be forward and `rv_data` reversed; a checkpoint without a record (an imported `.pth`) is
    fused when both datasets record their direction (what is not checked is in `checks`), and
    otherwise needs `allow_unrecorded`. Returns (result, arrays): the JSON-able metrics (with the per-model
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
    fused = rv_checkpoint is not None
    data = dataset_record(data_dir)
    # Fusing checkpoints without a record (the original's two .pth files) goes on, with what is not
    # checked in the output, when the data record their directions (--allow-unrecorded not needed).
    directions_known = False
    if fused:
        rv_record = dataset_record(rv_data)
        check_directions(data, rv_record, checks, allow_unrecorded)
        directions_known = "reverse" in data and "reverse" in rv_record
    check_checkpoint_data("forward" if fused else "evaluated", checkpoint, data, checks, allow_unrecorded,
                          fused and not directions_known)
    if fused:
        check_checkpoint_data("backward", rv_checkpoint, rv_record, checks, allow_unrecorded, not directions_known)
        from pthnet_jax.data import open_split

        check_clip_order(open_split(data_dir, split), open_split(rv_data, split))
    forward = evaluate_checkpoint(checkpoint, data_dir, split, mode, batch_size)
    split_info = forward["split"]
    result = dict(forward["metrics"])
    arrays = {"clip_ids": split_info.clip_ids, "labels": forward["labels"], "logits": forward["logits"]}
    if fused:
        backward = evaluate_checkpoint(rv_checkpoint, rv_data, split, mode, batch_size)
        logits = fuse(forward["logits"], backward["logits"], mu)
        result = classification_metrics(logits, forward["labels"], split_info.num_classes)
        result["mu"] = mu
        result["models"] = {"forward": forward["metrics"], "backward": backward["metrics"]}
        arrays.update(logits=logits, logits_forward=forward["logits"], logits_backward=backward["logits"])
        if sweep:
            result["mu_sweep"] = mu_sweep(forward["logits"], backward["logits"], forward["labels"],
                                          split_info.num_classes)
    result["split"] = split
    result["checkpoint"] = str(checkpoint)
    result["class_names"] = split_info.class_names
    result["checks"] = checks
    return result, arrays
