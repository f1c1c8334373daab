"""UF1/UAR: equal to an independent re-statement of the original's evaluation, skip and NaN cases included."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from pthnet_jax.families.htnet.metrics import pooled_metrics, uf1_uar

pytestmark = pytest.mark.filterwarnings("ignore:A single label was found")


def _original_style(truth, predicted):
    """The behaviour the reference describes, through sklearn's binary confusion matrix per class."""
    f1s, recalls = [], []
    for k in range(3):
        t = [int(x == k) for x in truth]
        p = [int(x == k) for x in predicted]
        cells = confusion_matrix(t, p).ravel() if t else np.zeros(1)
        if len(cells) != 4:  # a 1x1 matrix: the class is skipped
            continue
        tn, fp, fn, tp = (int(c) for c in cells)
        f1s.append(2 * tp / (2 * tp + fp + fn))
        support = sum(t)
        recalls.append(tp / support if support else math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(np.mean(f1s)) if f1s else math.nan, float(np.mean(recalls)) if recalls else math.nan


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-12


@pytest.mark.parametrize("seed", range(40))
def test_compat_equals_the_original_style_evaluation(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 12))
    classes = rng.choice(3, size=int(rng.integers(1, 4)), replace=False)
    truth = rng.choice(classes, size).tolist()
    predicted = rng.choice(rng.choice(3, size=int(rng.integers(1, 4)), replace=False), size).tolist()
    got = uf1_uar(truth, predicted)
    want = _original_style(truth, predicted)
    assert _same(got["UF1"], want[0]) and _same(got["UAR"], want[1]), (truth, predicted, got, want)


def test_skip_and_nan_cases():
    # Class 2 absent from truth and predictions: left out of both means.
    result = uf1_uar([0, 0, 1, 1], [0, 1, 1, 1])
    assert result["f1"][2] is None and result["UF1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert result["UAR"] == pytest.approx((0.5 + 1.0) / 2)
    # Class 2 predicted but never true: recall 0/0 -> UAR NaN (compat), left out (clean).
    assert math.isnan(uf1_uar([0, 1], [2, 1])["UAR"])
    assert uf1_uar([0, 1], [2, 1], mode="clean")["UAR"] == pytest.approx(0.5)
    # Every sample truly 0 and predicted 0: the original skips class 0 too, so nothing is left.
    assert math.isnan(uf1_uar([0, 0], [0, 0])["UF1"])
    assert uf1_uar([0, 0], [0, 0], mode="clean")["UF1"] == 1.0
    with pytest.raises(ValueError, match="mode"):
        uf1_uar([0], [0], mode="fast")


def test_pooled_and_per_database():
    truth = [0, 1, 2, 0, 1, 2, 0]
    predicted = [0, 1, 1, 0, 2, 2, 1]
    databases = ["smic", "smic", "smic", "samm", "samm", "samm", "casme2"]
    result = pooled_metrics(truth, predicted, databases)
    assert set(result) == {"all", "smic", "samm", "casme2"}
    assert result["all"]["UF1"] == pytest.approx(_original_style(truth, predicted)[0])
    assert result["smic"]["UAR"] == pytest.approx(_original_style(truth[:3], predicted[:3])[1])
    assert result["casme2"]["num_samples"] == 1 and math.isnan(result["casme2"]["UAR"])
