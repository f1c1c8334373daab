"""UF1 / UAR of the micro-expression protocols, pooled over all samples and per database (reference §4).

Per class k, a one-vs-rest table: F1_k = 2TP / (2TP + FP + FN), recall_k = TP / (number of true k);
UF1 and UAR are their means over classes.

- mode="compat" reproduces the original's evaluation exactly, quirks included: a class whose
  one-vs-rest truth and prediction are both constant and equal (absent from both, or every sample
  truly k and predicted k) is left out of both means (the original's binary confusion matrix is then
  1x1 and the class is skipped); a class predicted but never true gives recall 0/0 = NaN, so UAR is
  NaN; no class left gives NaN for both.
- mode="clean": F1 over the classes with 2TP + FP + FN > 0, recall over the classes present in the
  truth (the usual UAR); an empty mean is NaN.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

MODES = ("compat", "clean")


def _per_class(labels: np.ndarray, predictions: np.ndarray, k: int) -> tuple[int, int, int, int]:
    truth, guess = labels == k, predictions == k
    return (int(np.sum(truth & guess)), int(np.sum(~truth & guess)), int(np.sum(truth & ~guess)), int(truth.sum()))


def uf1_uar(labels: Sequence[int], predictions: Sequence[int], num_classes: int = 3,
            mode: str = "compat") -> dict[str, Any]:
    """{"UF1", "UAR", "f1" (per class, None when left out), "recall", "num_samples"}; floats may be NaN."""
    if mode not in MODES:
        raise ValueError(f"unknown metrics mode {mode!r}; known: {MODES}")
    labels, predictions = np.asarray(labels).reshape(-1), np.asarray(predictions).reshape(-1)
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.size} labels but {predictions.size} predictions")
    count = labels.size
    f1: list[float | None] = []
    recall: list[float | None] = []
    for k in range(num_classes):
        tp, fp, fn, support = _per_class(labels, predictions, k)
        if mode == "compat":
            constant = (support in (0, count)) and (tp + fp in (0, count)) and support == tp + fp
            f1.append(None if constant else 2 * tp / (2 * tp + fp + fn))
            recall.append(None if constant else (tp / support if support else float("nan")))
        else:
            f1.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None)
            recall.append(tp / support if support else None)

    def mean(values: list[float | None]) -> float:
        kept = [v for v in values if v is not None]
        return float(np.mean(kept)) if kept else float("nan")

    return {"UF1": mean(f1), "UAR": mean(recall), "f1": f1, "recall": recall, "num_samples": int(count)}


def pooled_metrics(labels: Sequence[int], predictions: Sequence[int], databases: Sequence[str] | None = None,
                   num_classes: int = 3, mode: str = "compat") -> dict[str, Any]:
    """{"all": uf1_uar of every sample, <database>: uf1_uar of its samples, ...} (databases sorted)."""
    result = {"all": uf1_uar(labels, predictions, num_classes, mode)}
    if databases is not None:
        databases = np.asarray(databases).reshape(-1)
        labels, predictions = np.asarray(labels).reshape(-1), np.asarray(predictions).reshape(-1)
        if databases.shape != labels.shape:
            raise ValueError(f"{databases.size} database names for {labels.size} samples")
        for name in sorted(set(databases.tolist())):
            keep = databases == name
            result[str(name)] = uf1_uar(labels[keep], predictions[keep], num_classes, mode)
    return result


__all__ = ["MODES", "pooled_metrics", "uf1_uar"]
