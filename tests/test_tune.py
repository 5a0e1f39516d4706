"""Hyperparameter sweep: search space, nested objective that never reads a test fold, Ray Tune run and resume."""

from __future__ import annotations

import json
import math
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ser_dist.configuration import from_mapping, load_config_file
from ser_dist.errors import ConfigError, FeatureStoreError
from ser_dist.training.config import AugmentOptions, ModelOptions, TrainConfig
from ser_dist.training.splits import make_folds
from ser_dist.tuning import SearchSpace, TuneConfig, best_train_config, run_sweep
from ser_dist.tuning.sweep import LockStepFolds, inner_fold_data, sweep_rows

REPO_ROOT = Path(__file__).resolve().parents[1]
SPEAKERS = ["EMODB_03", "EMODB_08", "EMODB_11", "EMODB_14"]


def synthetic_table(n_speakers: int = 6, per_class: int = 3) -> pd.DataFrame:
    rows = [
        {"utterance_id": f"s{s}_{label}_{k}", "speaker": f"SYN_{s}", "session": f"Ses{s % 3}", "label": label}
        for s in range(n_speakers) for label in ("angry", "happy", "neutral", "sad") for k in range(per_class)
    ]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- unit tests, no Ray


def test_search_space_rejects_bad_ranges():
    with pytest.raises(ConfigError, match="lr"):
        SearchSpace(lr=(1e-2, 1e-3))
    with pytest.raises(ConfigError, match="log-uniform"):
        SearchSpace(weight_decay=(0.0, 0.1))
    with pytest.raises(ConfigError, match="label_smoothing"):
        SearchSpace(label_smoothing=(0.0, 1.0))
    with pytest.raises(ConfigError, match="width"):
        SearchSpace(width=())
    with pytest.raises(ConfigError, match="normalization takes"):
        SearchSpace(normalization=("per_utterance",))
    with pytest.raises(ConfigError, match="inner_folds"):
        TuneConfig(features_path="x", inner_folds=0)


def test_param_space_fixes_single_values():
    from ray import tune

    space = SearchSpace(lr=(1e-3, 1e-3), width=(8,), n_blocks=(2, 4)).param_space(("a", "b"))
    assert space["lr"] == 1e-3 and space["width"] == 8
    assert isinstance(space["n_blocks"], tune.search.sample.Categorical)
    assert isinstance(space["features"], tune.search.sample.Categorical)
    assert SearchSpace().param_space(("only",))["features"] == "only"
    assert SearchSpace().param_space(("only",))["normalization"] == "train_global"
    both = SearchSpace(normalization=("train_global", "per_speaker")).param_space(("only",))["normalization"]
    assert isinstance(both, tune.search.sample.Categorical) and set(both.categories) == {"train_global", "per_speaker"}


def test_best_train_config_maps_searched_keys():
    base = TrainConfig(epochs=60, patience=7, model=ModelOptions(width=64, kernel_size=3))
    params = {"lr": 3e-3, "weight_decay": 0.02, "label_smoothing": 0.05, "batch_size": np.int64(16),
              "dropout": 0.3, "width": 96, "n_blocks": 6, "features": "some/path", "normalization": "per_speaker"}
    config = best_train_config(base, params, epochs=30)
    assert (config.lr, config.weight_decay, config.label_smoothing, config.batch_size, config.epochs) == (3e-3, 0.02, 0.05, 16, 30)
    assert type(config.batch_size) is int and config.normalization == "per_speaker"
    assert (config.model.dropout, config.model.width, config.model.n_blocks) == (0.3, 96, 6)
    assert config.patience == 7 and config.model.kernel_size == 3  # not searched: kept from base


@pytest.mark.parametrize("protocol, n_folds", [("loso", None), ("speaker_kfold", 3), ("kfold", 4)])
def test_sweep_rows_never_include_a_test_fold(protocol, n_folds):
    table = synthetic_table()
    folds = make_folds(table, protocol=protocol, n_folds=n_folds, seed=1, val_fraction=0.2)
    for inner_folds in (1, 2):
        rows, inner = sweep_rows(folds, inner_folds)
        if inner_folds == 1:  # the first fold's test part is not even shipped to the trials
            assert not np.isin(folds[0].test, rows).any()
        for fold, view in zip(folds, inner, strict=False):
            assert np.array_equal(rows[view.train], fold.train) and np.array_equal(rows[view.val], fold.val)
            assert not np.isin(rows[np.concatenate([view.train, view.val])], fold.test).any()
    with pytest.raises(ConfigError, match="exceeds"):
        sweep_rows(folds, len(folds) + 1)


def test_inner_fold_data_holds_no_test_part():
    table = synthetic_table()
    folds = make_folds(table, protocol="loso", seed=0, val_fraction=0.2)
    rows, inner = sweep_rows(folds, 1)
    rng = np.random.default_rng(0)
    payload = {
        "features": [rng.normal(size=(5 + i % 3, 4)).astype(np.float32) for i in range(len(rows))],
        "speakers": table["speaker"].iloc[rows].tolist(), "utterance_ids": table["utterance_id"].iloc[rows].tolist(),
        "y": np.zeros(len(rows), np.int64), "labels": ["angry", "happy", "neutral", "sad"],
    }
    data = inner_fold_data(payload, inner[0], "train_global")
    assert len(data.test) == 0
    assert len(data.features) == len(folds[0].train) + len(folds[0].val)
    assert set(data.utterance_ids) == set(table["utterance_id"].iloc[np.concatenate([folds[0].train, folds[0].val])])
    trained = np.concatenate([payload["features"][i] for i in inner[0].train])
    np.testing.assert_allclose(data.standardizer.mean, trained.mean(0), atol=1e-5)


def test_lock_step_folds_take_turns():
    log, running = [], threading.Lock()

    def fake_fit(name, epochs):
        def run(on_epoch):
            for epoch in range(1, epochs + 1):
                assert running.acquire(blocking=False), "two folds computed at once"
                log.append((name, epoch))
                running.release()
                on_epoch({"epoch": epoch})
            return name
        return run

    lock_step = LockStepFolds([fake_fit("a", 2), fake_fit("b", 1)])
    assert lock_step.step(0) == ("epoch", {"epoch": 1}) and lock_step.step(1) == ("epoch", {"epoch": 1})
    assert lock_step.step(0) == ("epoch", {"epoch": 2}) and lock_step.step(1) == ("done", "b")
    lock_step.close()  # fold "a" is unwound mid-training
    assert log == [("a", 1), ("b", 1), ("a", 2)]

    def failing(on_epoch):
        raise ValueError("boom")

    lock_step = LockStepFolds([failing])
    with pytest.raises(ValueError, match="boom"):
        lock_step.step(0)
    lock_step.close()


def test_tune_config_file_loads():
    config = from_mapping(TuneConfig, load_config_file(REPO_ROOT / "configs" / "tune_emodb.yaml"), where="tune_emodb.yaml")
    assert isinstance(config.space, SearchSpace) and isinstance(config.base, TrainConfig)
    assert isinstance(config.space.width, tuple) and config.inner_folds >= 1


# ---------------------------------------------------------------- on a local Ray cluster


def tiny_base() -> TrainConfig:
    return TrainConfig(batch_size=8, warmup_epochs=1, patience=10, class_weights=False,
                       model=ModelOptions(width=8, n_blocks=2, time_pool=4, dropout=0.0, input_dropout=0.0),
                       augment=AugmentOptions(time_masks=0, feature_masks=0, mixup_alpha=0.0))


TINY_SPACE = SearchSpace(lr=(1e-3, 1e-2), weight_decay=(1e-4, 1e-2), dropout=(0.0, 0.1), width=(8,), n_blocks=(2,),
                         batch_size=(8,), label_smoothing=(0.0, 0.1))


@pytest.fixture(scope="module")
def emodb_logmel(emodb_root):
    """LOGMEL of one utterance per class for 4 EMODB speakers (manifest rows, matrices, feature config)."""
    from ser_dist.audio import load_audio
    from ser_dist.corpora import prepare
    from ser_dist.features.compute import FeatureComputer
    from ser_dist.features.config import FeatureConfig

    manifest = prepare("EMODB", emodb_root)
    manifest = manifest[manifest["speaker"].isin(SPEAKERS)].groupby(["speaker", "label"]).head(1).reset_index(drop=True)
    config = FeatureConfig()
    return manifest, FeatureComputer(config).compute([load_audio(p) for p in manifest["path"]]), config


def store_poisoned(root: Path, emodb_logmel, poisoned_ids: set[str]) -> Path:
    """Store the features with every matrix of `poisoned_ids` set to NaN: any trial that reads one fails."""
    from ser_dist.features.store import features_to_table, write_metadata, write_part_atomically

    manifest, matrices, config = emodb_logmel
    matrices = [np.full_like(m, np.nan) if u in poisoned_ids else m for u, m in zip(manifest["utterance_id"], matrices, strict=True)]
    directory = root / "LOGMEL" / "EMODB_LOGMEL" / f"v_{config.version()}"
    write_part_atomically(directory, features_to_table(manifest, matrices, "float32"))
    write_metadata(directory, {"status": "complete", "completed_at": "now", "feature_config": config.to_dict(), "dataset_name": "EMODB_LOGMEL"})
    return directory


def first_fold(manifest: pd.DataFrame):
    """Fold 0 as the sweep makes it (rows sorted by utterance_id as stored; duplicate groups never move speaker folds)."""
    return make_folds(manifest, protocol="loso", seed=0, val_fraction=0.15)[0]


def test_sweep_refuses_poisoned_training_rows(emodb_logmel, tmp_path):
    """Negative control for the spy below: a NaN row the sweep does train on is caught before any trial."""
    manifest = emodb_logmel[0].sort_values("utterance_id").reset_index(drop=True)
    fold = first_fold(manifest)
    features = store_poisoned(tmp_path / "features", emodb_logmel, {manifest["utterance_id"].iloc[fold.train[0]]})
    config = TuneConfig(features_path=str(features), inner_folds=1, num_samples=2, epochs=2, space=TINY_SPACE,
                        base=tiny_base(), out=str(tmp_path / "runs"), name="sweep", final_run=False)
    with pytest.raises(FeatureStoreError, match="non-finite"):
        run_sweep(config)


@pytest.mark.ray
def test_sweep_never_reads_the_test_fold_and_resumes(ray_cluster, emodb_logmel, tmp_path):
    pytest.importorskip("optuna")
    manifest = emodb_logmel[0].sort_values("utterance_id").reset_index(drop=True)
    fold = first_fold(manifest)
    test_ids = set(manifest["utterance_id"].iloc[fold.test])
    assert len(test_ids) and len(set(manifest["speaker"].iloc[fold.test])) == 1
    features = store_poisoned(tmp_path / "features", emodb_logmel, test_ids)  # the test speaker's features are NaN
    config = TuneConfig(features_path=str(features), protocol="loso", inner_folds=1, num_samples=2, epochs=2, grace_period=1,
                        space=TINY_SPACE, base=tiny_base(), out=str(tmp_path / "runs"), name="sweep", final_run=False)
    summary = run_sweep(config)

    run_dir = tmp_path / "runs" / "sweep"
    results = pd.read_csv(run_dir / "tune_results.csv")
    assert len(results) == 2 and (results["status"] != "error").all(), results.to_dict("records")
    assert results["val_uar"].between(0, 1).all() and np.isfinite(results["train_loss"]).all()
    assert set(results["epochs_run"]) <= {1, 2}
    assert {"lr", "weight_decay", "dropout", "label_smoothing", "width", "n_blocks", "batch_size"} <= set(results.columns)
    assert math.isfinite(summary["best_val_uar"]) and summary["best_val_uar"] == results["val_uar"].max()
    assert summary["utterances_read"] == len(manifest) - len(test_ids)
    assert summary["final_summary"] is None and summary["inner_folds"] == [0]
    best = TrainConfig.from_dict(summary["best_config"])
    assert best.epochs == 2 and best.model.width == 8 and best.patience == tiny_base().patience
    stored = json.loads((run_dir / "tune_summary.json").read_text())
    assert "never read" in stored["objective"] and stored["best_val_uar"] == summary["best_val_uar"]

    # a rerun restores the finished experiment: the same trials, no new ones
    again = run_sweep(config)
    rerun = pd.read_csv(run_dir / "tune_results.csv")
    assert set(rerun["trial_id"]) == set(results["trial_id"]) and again["best_val_uar"] == summary["best_val_uar"]
    # another configuration under the same name is refused instead of mixed in
    with pytest.raises(ConfigError, match="different configuration"):
        run_sweep(replace(config, num_samples=3))
