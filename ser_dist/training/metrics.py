"""Classification metrics for emotion recognition: UAR, WAR, macro-F1, per-class scores, confusion.

UAR (unweighted average recall) and macro-F1 average over the classes that occur in y_true: a class
absent from a test fold has no recall to average. Precision of a class that is never predicted, and
recall / F1 of a class with no true items, are reported as 0.0 (sklearn's zero_division=0); `support`
tells these cases apart. All numbers are plain Python types, ready for JSON.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from ser_dist.errors import ConfigError, UnknownNameError


def classification_report(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """uar, war, macro_f1, n, per_class {label: precision, recall, f1, support}, confusion, labels.

    `confusion[i][j]` counts items of true class labels[i] predicted as labels[j]. Every true and
    predicted label must be one of `labels` (raises UnknownNameError otherwise).
    """
    labels = [str(label) for label in labels]
    y_true = [str(y) for y in y_true]
    y_pred = [str(y) for y in y_pred]
    if len(set(labels)) != len(labels) or not labels:
        raise ConfigError(f"labels must be a non-empty list without repeats, got {labels}")
    if len(y_true) != len(y_pred):
        raise ConfigError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    if not y_true:
        raise ConfigError("no items to score: y_true is empty")
    known = set(labels)
    for name, values in (("true label", y_true), ("predicted label", y_pred)):
        unknown = sorted(set(values) - known)
        if unknown:
            raise UnknownNameError(name, unknown[0], labels)

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    present = support > 0
    confusion = confusion_matrix(y_true, y_pred, labels=labels)
    n = len(y_true)
    return {
        "uar": float(recall[present].mean()),
        "war": float(np.trace(confusion) / n),
        "macro_f1": float(f1[present].mean()),
        "n": n,
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion": confusion.astype(int).tolist(),
        "labels": labels,
    }


def mean_std(values: Sequence[float]) -> dict:
    """{'mean', 'std', 'n'} of values (e.g. per-fold UAR); std is the population std (ddof=0)."""
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        raise ConfigError("mean_std needs at least one value")
    if not np.all(np.isfinite(array)):
        raise ConfigError(f"mean_std got non-finite values: {array[~np.isfinite(array)].tolist()}")
    return {"mean": float(array.mean()), "std": float(array.std()), "n": int(array.size)}
