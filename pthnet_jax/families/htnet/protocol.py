"""The leave-one-subject-out protocol's pure parts (reference §4-5): splits, batch order, selection, pooling.

- `loso_splits`: one (subject, train indices, test indices) per subject, subjects sorted.
- `epoch_order`: the order training samples are batched in. mode="compat": no shuffling, a fixed order
  sorted by label, then by file name (`<sample> .png`), the same every epoch (the original batches in
  directory order, which cannot be recovered); mode="shuffle": a permutation keyed by (seed, epoch).
- `batches`: consecutive slices of `batch_size`, the last partial batch kept (441 -> 256 + 185).
- `Selection`: which epoch's test predictions a run reports, kept in memory as the run goes (no
  checkpoint per improvement): "last" (default, honest), an epoch number (honest), or "best_on_test"
  (the original's choice: the epoch with the highest accuracy on the held-out subject, ties to the later
  epoch; selection on the test data, only to compare with the paper).
- `combine`: pooled UF1/UAR over all subjects' selected predictions, and per database, with the
  selection named in the result.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from pthnet_jax.families.htnet.metrics import pooled_metrics

ORDERS = ("compat", "shuffle")


def loso_splits(subjects: Sequence[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    subjects = np.asarray(subjects)
    return [(str(s), np.flatnonzero(subjects != s), np.flatnonzero(subjects == s)) for s in sorted(set(subjects.tolist()))]


def epoch_order(indices: np.ndarray, labels: np.ndarray, names: Sequence[str], mode: str = "compat",
                seed: int = 0, epoch: int = 0) -> np.ndarray:
    """`indices` (into the dataset) in the order one epoch batches them."""
    indices = np.asarray(indices)
    if mode == "compat":
        keys = sorted(indices.tolist(), key=lambda i: (int(labels[i]), f"{names[i]} .png"))
        return np.asarray(keys, dtype=indices.dtype)
    if mode == "shuffle":
        return np.random.default_rng([seed, epoch]).permutation(indices)
    raise ValueError(f"unknown batch order {mode!r}; known: {ORDERS}")


def batches(order: np.ndarray, batch_size: int = 256) -> list[np.ndarray]:
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def parse_selection(selection: str | int) -> str | int:
    """"last", "best_on_test", or a 1-based epoch number (an int or digits)."""
    if isinstance(selection, str) and selection in ("last", "best_on_test"):
        return selection
    if isinstance(selection, str) and selection.isdigit():
        selection = int(selection)
    if isinstance(selection, int) and not isinstance(selection, bool) and selection >= 1:
        return selection
    raise ValueError(f"selection {selection!r}: expected 'last', 'best_on_test' or an epoch number >= 1")


@dataclasses.dataclass
class Selection:
    """Keeps one run's selected test predictions; `update` after every evaluated epoch (1-based)."""

    selection: str | int = "last"
    epoch: int | None = None  # the epoch whose predictions are kept
    accuracy: float | None = None  # their accuracy on the held-out subject
    predictions: np.ndarray | None = None

    def __post_init__(self):
        self.selection = parse_selection(self.selection)

    def update(self, epoch: int, predictions: np.ndarray, labels: np.ndarray) -> bool:
        """Offer an epoch's predictions; returns whether they are now the kept ones."""
        predictions = np.asarray(predictions)
        accuracy = float(np.mean(predictions == np.asarray(labels))) if len(predictions) else 0.0
        if self.selection == "last":
            keep = self.epoch is None or epoch >= self.epoch
        elif self.selection == "best_on_test":
            keep = self.accuracy is None or accuracy >= self.accuracy  # ties go to the later epoch
        else:
            keep = epoch == self.selection
        if keep:
            self.epoch, self.accuracy, self.predictions = epoch, accuracy, predictions.copy()
        return keep

    @property
    def name(self) -> str:
        return self.selection if isinstance(self.selection, str) else f"epoch_{self.selection}"


def combine(selections: dict[str, Selection], splits: list[tuple[str, np.ndarray, np.ndarray]],
            labels: np.ndarray, databases: np.ndarray | None = None, mode: str = "compat") -> dict[str, Any]:
    """Pooled UF1/UAR over every sample's selected prediction, per database, and which epochs were used."""
    names = {selection.name for selection in selections.values()}
    if len(names) != 1:
        raise ValueError(f"runs selected their predictions differently ({sorted(names)}): not comparable")
    predictions = np.full(len(labels), -1, np.int64)
    for subject, _, test in splits:
        selected = selections.get(subject)
        if selected is None or selected.predictions is None:
            raise ValueError(f"subject {subject!r} has no selected predictions (its run did not reach the "
                             f"selected epoch {names.pop()!r}?)")
        predictions[test] = selected.predictions
    result = pooled_metrics(labels, predictions, databases, mode=mode)
    result["selection"] = names.pop()
    result["epochs"] = {subject: selections[subject].epoch for subject, _, _ in splits}
    result["metrics_mode"] = mode
    return result


__all__ = ["ORDERS", "Selection", "batches", "combine", "epoch_order", "loso_splits", "parse_selection"]
