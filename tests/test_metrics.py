"""Metrics against scikit-learn, with a padded last batch; fusion and the mu sweep."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, recall_score

from pthnet_jax.metrics import classification_metrics, fuse, mu_sweep


def test_metrics_match_sklearn_with_padding_rows():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 203)
    logits = rng.normal(size=(203, 5)) + 2.0 * np.eye(5)[labels] * (rng.random(203) < 0.6)[:, None]
    # Pad to 256 rows the way a padded evaluation batch does: junk rows, valid False.
    pad = 256 - 203
    padded_logits = np.concatenate([logits, rng.normal(size=(pad, 5))])
    padded_labels = np.concatenate([labels, np.zeros(pad, int)])
    valid = np.arange(256) < 203
    result = classification_metrics(padded_logits, padded_labels, 5, valid)
    predictions = logits.argmax(1)
    assert result["num_clips"] == 203
    assert result["WAR"] == pytest.approx(100 * accuracy_score(labels, predictions))
    assert result["UAR"] == pytest.approx(100 * balanced_accuracy_score(labels, predictions))
    assert result["weighted_f1"] == pytest.approx(f1_score(labels, predictions, average="weighted"))
    np.testing.assert_allclose(result["per_class_recall"], 100 * recall_score(labels, predictions, average=None))
    np.testing.assert_array_equal(result["confusion_matrix"], confusion_matrix(labels, predictions))


def test_fusion_and_mu_sweep():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 50)
    forward, backward = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    np.testing.assert_allclose(fuse(forward, backward, 0.7), 0.7 * forward + 0.3 * backward)
    rows = mu_sweep(forward, backward, labels, 3)
    assert [r["mu"] for r in rows] == pytest.approx([i / 10 for i in range(11)])
    assert rows[-1]["WAR"] == pytest.approx(100 * accuracy_score(labels, forward.argmax(1)))
    assert rows[0]["UAR"] == pytest.approx(100 * balanced_accuracy_score(labels, backward.argmax(1)))
    mid = 0.4 * forward + 0.6 * backward
    assert rows[4]["WAR"] == pytest.approx(100 * accuracy_score(labels, mid.argmax(1)))
