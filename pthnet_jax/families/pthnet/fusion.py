"""PTH-Net's forward/backward fusion (the paper's protocol): a model trained on time-reversed features
fused with the forward one, `mu * forward + (1 - mu) * backward`, with the checks that both models
and both datasets are what fusion needs (direction, benchmark, fold, the same clips in order).
`evaluation.evaluate` calls `evaluate_fused` for families whose task has this `fusion`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pthnet_jax.evaluation import (RECORD_KEYS, DataMismatch, check_checkpoint_data, dataset_record, describe,
                                   evaluate_checkpoint, finish_result)
from pthnet_jax.metrics import classification_metrics, fuse, mu_sweep


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


def evaluate_fused(task, checkpoint, data_dir, split: str, rv_checkpoint, rv_data, mu: float, sweep: bool, mode: str,
                   batch_size: int, allow_unrecorded: bool, checks: dict[str, list]
                   ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The fused metrics of a forward and a backward checkpoint of `task`'s family (see
    `evaluation.evaluate`)."""
    data, rv_record = dataset_record(data_dir, task), dataset_record(rv_data, task)
    check_directions(data, rv_record, checks, allow_unrecorded)
    check_checkpoint_data("forward", checkpoint, data, checks, allow_unrecorded, True)
    check_checkpoint_data("backward", rv_checkpoint, rv_record, checks, allow_unrecorded, True)
    check_clip_order(task.open(data_dir, split), task.open(rv_data, split))
    forward = evaluate_checkpoint(checkpoint, data_dir, split, mode, batch_size)
    backward = evaluate_checkpoint(rv_checkpoint, rv_data, split, mode, batch_size)
    split_info = forward["split"]
    logits = fuse(forward["logits"], backward["logits"], mu)
    result = classification_metrics(logits, forward["labels"], split_info.num_classes)
    result["mu"] = mu
    result["models"] = {"forward": forward["metrics"], "backward": backward["metrics"]}
    arrays = {"clip_ids": split_info.clip_ids, "labels": forward["labels"], "logits": logits,
              "logits_forward": forward["logits"], "logits_backward": backward["logits"]}
    if sweep:
        result["mu_sweep"] = mu_sweep(forward["logits"], backward["logits"], forward["labels"], split_info.num_classes)
    return finish_result(result, forward, checkpoint, split, checks), arrays
