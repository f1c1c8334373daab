"""LOSO pieces: splits, the compat batch order, selection rules (incl. the original's oracle), pooling."""
from __future__ import annotations

import numpy as np
import pytest

from pthnet_jax.families.htnet.protocol import Selection, batches, combine, epoch_order, loso_splits


def test_splits_and_batches():
    subjects = np.array(["b", "a", "b", "c", "a"])
    splits = loso_splits(subjects)
    assert [s for s, _, _ in splits] == ["a", "b", "c"]
    assert splits[0][1].tolist() == [0, 2, 3] and splits[0][2].tolist() == [1, 4]
    sizes = [len(b) for b in batches(np.arange(441))]
    assert sizes == [256, 185]


def test_compat_order_is_label_then_file_name_and_fixed():
    labels = np.array([2, 0, 1, 0, 2])
    names = ["x_2", "b_1", "a", "a_9", "x_10"]
    order = epoch_order(np.arange(5), labels, names)
    assert order.tolist() == [3, 1, 2, 4, 0]  # (0: a_9 < b_1), (1: a), (2: x_10 < x_2)
    assert np.array_equal(epoch_order(np.arange(5), labels, names, epoch=7), order)
    shuffled = [epoch_order(np.arange(50), np.zeros(50), [str(i) for i in range(50)], "shuffle", 1, e)
                for e in (0, 1)]
    assert sorted(shuffled[0].tolist()) == list(range(50)) and not np.array_equal(*shuffled)
    with pytest.raises(ValueError, match="batch order"):
        epoch_order(np.arange(2), labels, names, "random")


def test_selection_rules():
    truth = np.array([0, 1, 2])
    offers = [(1, [0, 0, 0]), (2, [0, 1, 2]), (3, [0, 1, 0]), (4, [0, 1, 2]), (5, [1, 1, 1])]
    kept = {}
    for rule in ("last", "best_on_test", 3):
        selection = Selection(rule)
        for epoch, predictions in offers:
            selection.update(epoch, np.array(predictions), truth)
        kept[selection.name] = (selection.epoch, selection.predictions.tolist())
    assert kept == {"last": (5, [1, 1, 1]), "best_on_test": (4, [0, 1, 2]), "epoch_3": (3, [0, 1, 0])}
    with pytest.raises(ValueError, match="selection"):
        Selection("best")


def test_combine_pools_every_subject_and_names_the_selection():
    subjects = np.array(["a", "a", "b", "b"])
    labels = np.array([0, 1, 1, 2])
    splits = loso_splits(subjects)
    selections = {"a": Selection("last"), "b": Selection("last")}
    selections["a"].update(3, np.array([0, 1]), labels[:2])
    selections["b"].update(3, np.array([1, 1]), labels[2:])
    result = combine(selections, splits, labels, np.array(["smic", "smic", "samm", "samm"]))
    assert result["selection"] == "last" and result["epochs"] == {"a": 3, "b": 3}
    assert result["all"]["UAR"] == pytest.approx((1 + 1 + 0) / 3)
    assert set(result) >= {"smic", "samm"}
    selections["b"] = Selection("best_on_test")
    with pytest.raises(ValueError, match="differently"):
        combine(selections, splits, labels)
