"""Choosing among candidate feature sets (e.g. encoder layers) per fold, on validation data only.

A cheap proxy decides: mean+std pooled features, standardised on the fold's training part, an SVM
trained on the training part and scored (UAR) on the validation part. The test part is never read.
"""

from __future__ import annotations

import numpy as np
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ser_dist.training.metrics import classification_report


def pooled_statistics(matrices: list[np.ndarray]) -> np.ndarray:
    """(N, 2D): per-utterance mean and standard deviation over frames."""
    return np.stack([np.concatenate([m.mean(axis=0), m.std(axis=0)]) for m in matrices]).astype(np.float32)


def svm_validation_uar(pooled: np.ndarray, labels: np.ndarray, train: np.ndarray, val: np.ndarray, *, C: float = 1.0) -> float:
    scaler = StandardScaler().fit(pooled[train])
    model = SVC(C=C, kernel="rbf", class_weight="balanced").fit(scaler.transform(pooled[train]), labels[train])
    predicted = model.predict(scaler.transform(pooled[val]))
    return classification_report(list(labels[val]), list(predicted), sorted(set(labels)))["uar"]


def select_candidate(pooled_candidates: list[np.ndarray], labels: np.ndarray, train: np.ndarray, val: np.ndarray) -> tuple[int, list[float]]:
    """Index of the candidate with the best validation UAR (first wins ties) and every candidate's score."""
    scores = [svm_validation_uar(p, labels, train, val) for p in pooled_candidates]
    return int(np.argmax(scores)), scores
