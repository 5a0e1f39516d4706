"""bench/references.py: SVM references on given folds (C chosen without the test rows) and openSMILE functionals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from bench import references
from bench.references import (
    DEFAULT_C_GRID,
    PROTOCOL_NOTE,
    Kernel,
    Normalization,
    opensmile_functionals,
    pooled_svm_on_folds,
    svm_on_folds,
)
from ser_dist.errors import ConfigError, UnknownNameError
from ser_dist.training.selection import pooled_statistics
from ser_dist.training.splits import Fold, make_folds
from tests.conftest import write_tone

CLASSES = ("angry", "neutral", "sad")


def separable_problem(*, per_class: int = 10, speakers: int = 3, dim: int = 12, spread: float = 0.5, seed: int = 0):
    """(table, X, labels): `speakers` speakers x 3 classes x per_class rows, class means 3 apart."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, size=(len(CLASSES), dim))
    rows, vectors = [], []
    for s in range(speakers):
        offset = rng.normal(0.0, 0.3, size=dim)  # a small speaker shift
        for c, label in enumerate(CLASSES):
            for i in range(per_class):
                rows.append({"utterance_id": f"s{s}_{label}_{i}", "speaker": f"S{s}", "label": label, "session": ""})
                vectors.append(centres[c] + offset + rng.normal(0.0, spread, size=dim))
    table = pd.DataFrame(rows)
    return table, np.asarray(vectors), table["label"].to_numpy()


@pytest.fixture(scope="module")
def problem():
    table, X, labels = separable_problem()
    folds = make_folds(table, protocol="loso", seed=0, val_fraction=0.15)
    assert len(folds) == 3 and all(len(f.val) for f in folds)
    return X, labels, folds


def test_svm_on_folds_scores_a_separable_problem(problem):
    X, labels, folds = problem
    result = svm_on_folds(X, labels, folds)
    assert result["uar"] > 0.95 and result["war"] > 0.95 and result["macro_f1"] > 0.95
    assert [row["fold"] for row in result["folds"]] == [0, 1, 2]
    for row, fold in zip(result["folds"], folds, strict=True):
        assert row["C"] in DEFAULT_C_GRID
        assert 0.0 <= row["val_uar"] <= 1.0
        assert row["n_test"] == len(fold.test)
        assert set(row) >= {"fold", "C", "val_uar", "uar", "war", "n_test"}
    assert result["fold_uar"]["n"] == 3 and result["fold_war"]["n"] == 3
    assert result["n_test"] == len(labels)  # LOSO: every row is tested exactly once
    assert set(result["per_class"]) == set(CLASSES)
    assert result["protocol_note"] == PROTOCOL_NOTE
    assert result["n_features"] == X.shape[1]


def test_test_rows_never_reach_a_fit_or_the_choice_of_C(problem, monkeypatch):
    """Spy on the one place that fits: which rows did each scaler/SVM fit see, which rows were scored."""
    X, labels, folds = problem
    position = {row.tobytes(): i for i, row in enumerate(X)}
    calls: list[tuple[set[int], set[int], int]] = []
    real_fit_predict = references._fit_predict

    def spy(X_fit, y_fit, X_predict, C_values, kernel, normalization):
        fit_positions = [position[row.tobytes()] for row in X_fit]
        assert list(y_fit) == list(labels[fit_positions])  # labels travel with their rows
        calls.append((set(fit_positions), {position[row.tobytes()] for row in X_predict}, len(C_values)))
        return real_fit_predict(X_fit, y_fit, X_predict, C_values, kernel, normalization)

    monkeypatch.setattr(references, "_fit_predict", spy)
    result = svm_on_folds(X, labels, folds)

    assert len(calls) == 2 * len(folds)  # per fold: the C grid on train -> val, then the chosen C on train+val -> test
    for k, fold in enumerate(folds):
        train, val, test = set(fold.train.tolist()), set(fold.val.tolist()), set(fold.test.tolist())
        (select_fit, select_scored, n_select), (final_fit, final_scored, n_final) = calls[2 * k], calls[2 * k + 1]
        assert select_fit == train and select_scored == val and n_select == len(DEFAULT_C_GRID)
        assert final_fit == train | val and final_scored == test and n_final == 1
        assert not test & (select_fit | select_scored | final_fit)
    assert [row["C"] for row in result["folds"]] == [row["C"] for row in svm_on_folds(X, labels, folds)["folds"]]


def test_choice_of_C_ignores_the_test_rows(problem):
    """Black-box: scramble one fold's test rows (features and labels); that fold's C and val UAR stay put."""
    X, labels, folds = problem
    reference = svm_on_folds(X, labels, folds)
    rng = np.random.default_rng(1)
    for k, fold in enumerate(folds):
        X_changed, labels_changed = X.copy(), labels.copy()
        X_changed[fold.test] = rng.normal(0.0, 50.0, size=(len(fold.test), X.shape[1]))
        labels_changed[fold.test] = rng.permutation(labels[fold.test])
        changed = svm_on_folds(X_changed, labels_changed, folds)["folds"][k]
        assert changed["C"] == reference["folds"][k]["C"]
        assert changed["val_uar"] == reference["folds"][k]["val_uar"]


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_precomputed_kernel_matches_sklearn_svc(kernel):
    _, X, labels = separable_problem(spread=3.0, seed=2)  # overlapping classes: predictions are not trivial
    fit, predict = np.arange(0, 60), np.arange(60, 90)
    Z = StandardScaler().fit(X[fit])
    for C in (0.1, 10.0):
        expected = SVC(C=C, kernel=kernel, gamma="scale", class_weight="balanced").fit(Z.transform(X[fit]), labels[fit])
        got = references._fit_predict(X[fit], labels[fit], X[predict], (C,), Kernel(kernel), Normalization.TRAIN)[0]
        assert (got == expected.predict(Z.transform(X[predict]))).mean() >= 0.95


def test_svm_on_folds_checks_its_inputs(problem):
    X, labels, folds = problem
    no_val = [Fold(f.index, np.concatenate([f.train, f.val]), np.empty(0, np.int64), f.test, f.test_speakers) for f in folds]
    with pytest.raises(ConfigError, match="no validation rows"):
        svm_on_folds(X, labels, no_val)
    single = svm_on_folds(X, labels, no_val, C_grid=(1.0,))
    assert all(row["C"] == 1.0 and row["val_uar"] is None for row in single["folds"])
    leaky = [Fold(0, folds[0].train, folds[0].val, np.concatenate([folds[0].test, folds[0].train[:1]]), ())]
    with pytest.raises(ConfigError, match="both train and test"):
        svm_on_folds(X, labels, leaky)
    with pytest.raises(ConfigError, match="rows but there are"):
        svm_on_folds(X[:-1], labels, folds)
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ConfigError, match="non-finite"):
        svm_on_folds(bad, labels, folds)
    with pytest.raises(UnknownNameError, match="kernel"):
        svm_on_folds(X, labels, folds, kernel="poly")
    with pytest.raises(ConfigError, match="C_grid"):
        svm_on_folds(X, labels, folds, C_grid=(0.0, 1.0))


def test_pooled_svm_on_folds_pools_variable_length_matrices(problem):
    X, labels, folds = problem
    rng = np.random.default_rng(3)
    # (T_i, D): frames scattered around the utterance's vector, T from 1 to 20; half of them stored as float16
    matrices = [
        (x + rng.normal(0.0, 0.1, size=(int(rng.integers(1, 21)), X.shape[1]))).astype(np.float16 if i % 2 else np.float32)
        for i, x in enumerate(X)
    ]
    result = pooled_svm_on_folds(matrices, labels, folds, kernel="linear")
    assert result["n_features"] == 2 * X.shape[1]
    assert result["uar"] > 0.9
    direct = svm_on_folds(pooled_statistics([m.astype(np.float32) for m in matrices]), labels, folds)
    assert result["uar"] == direct["uar"] and [r["C"] for r in result["folds"]] == [r["C"] for r in direct["folds"]]

    with pytest.raises(ConfigError, match="differ in dimension"):
        pooled_svm_on_folds([*matrices[:-1], np.zeros((4, X.shape[1] + 1))], labels, folds)
    with pytest.raises(ConfigError, match="T >= 1"):
        pooled_svm_on_folds([*matrices[:-1], np.zeros((0, X.shape[1]))], labels, folds)
    with pytest.raises(ConfigError, match="T >= 1"):
        pooled_svm_on_folds([*matrices[:-1], np.zeros(X.shape[1])], labels, folds)
    with pytest.raises(ConfigError, match="labels"):
        pooled_svm_on_folds(matrices[:-1], labels, folds)


def test_opensmile_functionals_rejects_an_unknown_feature_set(tmp_path):
    with pytest.raises(UnknownNameError, match="eGeMAPSv02"):
        opensmile_functionals([str(tmp_path / "a.wav")], "GeMAPS_v9", cache_dir=None)


def tones(folder) -> list[str]:
    return [str(write_tone(folder / f"tone{i}.wav", 0.6 + 0.2 * i, freq=150.0 + 80 * i, seed=i)) for i in range(3)]


def test_opensmile_functionals_rows_and_cache(tmp_path):
    pytest.importorskip("opensmile", reason="opensmile is a bench extra (pip install 'ser-dist[bench]')")
    paths, cache = tones(tmp_path), tmp_path / "cache"
    X = opensmile_functionals(paths, "eGeMAPSv02", cache_dir=cache, n_workers=1)
    assert X.shape == (3, 88) and X.dtype == np.float32 and np.isfinite(X).all()
    assert not np.allclose(X[0], X[1])  # one row per file, in order
    (cached,) = cache.glob("eGeMAPSv02_*.npy")
    np.testing.assert_array_equal(np.load(cached), X)
    np.save(cached, X + 1.0)  # a marked cache: the next call must read it back instead of extracting again
    np.testing.assert_array_equal(opensmile_functionals(paths, "eGeMAPSv02", cache_dir=cache, n_workers=1), X + 1.0)
    np.testing.assert_array_equal(opensmile_functionals(paths[:2], "eGeMAPSv02", cache_dir=cache, n_workers=1), X[:2])
    assert len(list(cache.glob("*.npy"))) == 2  # another list of paths, another cache file


@pytest.mark.slow
def test_opensmile_functionals_in_worker_processes_keeps_the_order(tmp_path):
    pytest.importorskip("opensmile", reason="opensmile is a bench extra (pip install 'ser-dist[bench]')")
    paths = tones(tmp_path)
    X = opensmile_functionals(paths, "eGeMAPSv02", cache_dir=None, n_workers=1)
    spread = opensmile_functionals(paths[::-1], "eGeMAPSv02", cache_dir=None, n_workers=2)  # 2 spawned processes
    np.testing.assert_allclose(spread, X[::-1], rtol=1e-5, atol=1e-6)
