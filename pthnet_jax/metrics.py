"""The paper's metrics: WAR (accuracy), UAR (mean per-class recall), weighted F1; fusion and mu sweep."""
from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int,
                     valid: np.ndarray | None = None) -> np.ndarray:
    """(true, predicted) counts over the valid clips."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if valid is not None:
        labels, predictions = labels[np.asarray(valid, bool)], predictions[np.asarray(valid, bool)]
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def metrics_from_confusion(matrix: np.ndarray) -> dict[str, Any]:
    """WAR, UAR (percent; UAR over classes present in the labels), weighted F1, per-class recall."""
    support = matrix.sum(1)
    predicted = matrix.sum(0)
    correct = np.diag(matrix)
    total = support.sum()
    present = support > 0
    recall = np.divide(correct, support, out=np.zeros(len(support)), where=present)
    precision = np.divide(correct, predicted, out=np.zeros(len(support)), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(support)),
                   where=(precision + recall) > 0)
    return {
        "WAR": 100.0 * correct.sum() / max(total, 1),
        "UAR": 100.0 * recall[present].mean() if present.any() else 0.0,
        "weighted_f1": float((f1 * support).sum() / max(total, 1)),
        "per_class_recall": (100.0 * recall).tolist(),
        "confusion_matrix": matrix.tolist(),
        "num_clips": int(total),
    }


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int,
                           valid: np.ndarray | None = None) -> dict[str, Any]:
    return metrics_from_confusion(confusion_matrix(labels, np.argmax(logits, -1), num_classes, valid))


def fuse(logits_forward: np.ndarray, logits_backward: np.ndarray, mu: float) -> np.ndarray:
    """mu * forward + (1 - mu) * backward (the published FERv39k command uses mu = 0.7)."""
    return mu * np.asarray(logits_forward) + (1.0 - mu) * np.asarray(logits_backward)


def mu_sweep(logits_forward: np.ndarray, logits_backward: np.ndarray, labels: np.ndarray,
             num_classes: int, mus: np.ndarray | None = None) -> list[dict[str, float]]:
    mus = np.round(np.linspace(0.0, 1.0, 11), 1) if mus is None else mus
    rows = []
    for mu in mus:
        result = classification_metrics(fuse(logits_forward, logits_backward, mu), labels, num_classes)
        rows.append({"mu": float(mu), "UAR": result["UAR"], "WAR": result["WAR"]})
    return rows
