"""classification_report and mean_std against hand-computed examples."""

from __future__ import annotations

import json

import pytest

from ser_dist.errors import ConfigError, UnknownNameError
from ser_dist.training.metrics import classification_report, mean_std

LABELS = ["angry", "happy", "sad", "neutral"]


def test_hand_computed_report_with_unpredicted_and_absent_classes():
    # angry: 3 true, 2 right (one called happy); happy: 2 true, 1 right (one called angry);
    # sad: 1 true, never predicted (called angry); neutral: absent from y_true, never predicted.
    y_true = ["angry", "angry", "angry", "happy", "happy", "sad"]
    y_pred = ["angry", "angry", "happy", "happy", "angry", "angry"]
    report = classification_report(y_true, y_pred, LABELS)

    assert report["n"] == 6
    assert report["labels"] == LABELS
    assert report["war"] == pytest.approx(3 / 6)
    # Recalls: angry 2/3, happy 1/2, sad 0; neutral has no true items and is left out of the mean.
    assert report["uar"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    # Precision: angry 2/4, happy 1/2, sad 0 (never predicted). F1 = 2PR/(P+R).
    f1_angry = 2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3)
    f1_happy = 0.5
    assert report["macro_f1"] == pytest.approx((f1_angry + f1_happy + 0.0) / 3)

    pc = report["per_class"]
    assert pc["angry"] == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": f1_angry, "support": 3})
    assert pc["happy"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert pc["sad"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert pc["neutral"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert sum(c["support"] for c in pc.values()) == report["n"]

    # rows = true, columns = predicted, in LABELS order
    assert report["confusion"] == [
        [2, 1, 0, 0],
        [1, 1, 0, 0],
        [1, 0, 0, 0],
        [0, 0, 0, 0],
    ]
    json.dumps(report)  # plain Python types only


def test_perfect_and_label_order():
    report = classification_report(["b", "a", "b"], ["b", "a", "b"], ["b", "a"])
    assert report["uar"] == report["war"] == report["macro_f1"] == 1.0
    assert report["confusion"] == [[2, 0], [0, 1]]


def test_uar_differs_from_war_on_imbalance():
    y_true = ["a"] * 8 + ["b"] * 2
    y_pred = ["a"] * 10
    report = classification_report(y_true, y_pred, ["a", "b"])
    assert report["war"] == pytest.approx(0.8)
    assert report["uar"] == pytest.approx(0.5)


def test_bad_inputs_raise():
    with pytest.raises(UnknownNameError, match="expected one of a, b"):
        classification_report(["a", "c"], ["a", "a"], ["a", "b"])
    with pytest.raises(UnknownNameError):
        classification_report(["a", "b"], ["a", "z"], ["a", "b"])
    with pytest.raises(ConfigError):
        classification_report(["a"], ["a", "b"], ["a", "b"])
    with pytest.raises(ConfigError):
        classification_report([], [], ["a", "b"])


def test_mean_std():
    assert mean_std([0.5, 0.7]) == pytest.approx({"mean": 0.6, "std": 0.1, "n": 2})
    assert mean_std([0.3]) == {"mean": 0.3, "std": 0.0, "n": 1}
    with pytest.raises(ConfigError):
        mean_std([])
    with pytest.raises(ConfigError):
        mean_std([0.1, float("nan")])
