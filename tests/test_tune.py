"""Hyperparameter sweep: search space, nested sweeps whose trials never read their outer fold's test part, the shared
mode's report of what it read, step-based trials, Ray Tune runs and resume."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ser_dist.configuration import from_mapping, load_config_file
from ser_dist.errors import ConfigError, FeatureStoreError
from ser_dist.runs import RunFolder, RunFolds
from ser_dist.training.config import AugmentOptions, ModelOptions, TrainConfig
from ser_dist.training.kfold import KFoldConfig
from ser_dist.training.splits import make_folds
from ser_dist.tuning import SearchSpace, TuneConfig, best_train_config, run_sweep
from ser_dist.tuning import sweep as sweep_module
from ser_dist.tuning.sweep import (
    inner_fold_data,
    nested_inner_folds,
    step_inner_folds,
    sweep_rows,
    train_overrides,
    unseen_by_sweep,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SPEAKERS = ["EMODB_03", "EMODB_09", "EMODB_10", "EMODB_11"]  # each has all seven emotions


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
    with pytest.raises(ConfigError, match="sweep mode"):
        TuneConfig(features_path="x", mode="nestd")
    with pytest.raises(ConfigError, match="limits a nested sweep"):
        TuneConfig(features_path="x", mode="shared", outer_folds=(0,))
    with pytest.raises(ConfigError, match="needs mode 'shared'"):
        TuneConfig(features_path="x", space=SearchSpace(features=("other",)))
    assert TuneConfig(features_path="x").mode == "nested" and TuneConfig(features_path="x", outer_folds=[2, 0, 2]).outer_folds == (0, 2)
    assert TuneConfig(features_path="x", mode="shared").run_name("D") == "D_loso_tune_shared"


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


@pytest.mark.parametrize("protocol, n_folds", [("loso", None), ("speaker_kfold", 3), ("kfold", 3)])
def test_nested_inner_folds_stay_on_the_outer_training_side(protocol, n_folds):
    table = synthetic_table().assign(duplicate_group=lambda t: np.arange(len(t)))
    for outer in make_folds(table, protocol=protocol, n_folds=n_folds, seed=1, val_fraction=0.2):
        rows, inner = nested_inner_folds(table, outer, protocol=protocol, inner_folds=2, seed=1)
        assert np.array_equal(np.sort(rows), np.sort(np.concatenate([outer.train, outer.val])))
        assert not np.isin(rows, outer.test).any()  # the outer test part is not among the rows a trial gets
        assert len(inner) == 2
        for fold in inner:
            assert len(fold.train) and len(fold.val) and not np.intersect1d(fold.train, fold.val).size
            assert max(fold.train.max(), fold.val.max()) < len(rows)
            if protocol != "kfold":  # speaker protocols: inner held-out speakers are unseen by the inner training part
                train_speakers = set(table["speaker"].iloc[rows[fold.train]])
                assert not train_speakers & set(fold.val_speakers)
                assert set(table["speaker"].iloc[rows[fold.val]]) == set(fold.val_speakers)
    outer = make_folds(table, protocol="loso", seed=1, val_fraction=0.2)[0]
    with pytest.raises(ConfigError, match="exceeds"):
        nested_inner_folds(table, outer, protocol="loso", inner_folds=6, seed=1)  # 5 training-side speakers


class FakeTrainer:
    """Stands in for FoldTrainer: logs its epochs, stops after `epochs`."""

    def __init__(self, name: str, epochs: int, log: list):
        self.name, self.epochs, self.epoch, self.log = name, epochs, 0, log

    @property
    def should_stop(self) -> bool:
        return self.epoch >= self.epochs

    def train_epoch(self) -> float:
        self.epoch += 1
        self.log.append((self.name, self.epoch))
        return 0.0

    def validate(self) -> dict:
        return {"epoch": self.epoch, "best_val_uar": self.epoch / 10}


def test_step_inner_folds_steps_every_fold_one_epoch_at_a_time():
    log = []
    steps = list(step_inner_folds([FakeTrainer("a", 3, log), FakeTrainer("b", 1, log), FakeTrainer("c", 2, log)]))
    assert log == [("a", 1), ("b", 1), ("c", 1), ("a", 2), ("c", 2), ("a", 3)]  # epoch e of every fold before e + 1
    assert [sorted(s) for s in steps] == [[0, 1, 2], [0, 2], [0]]  # a stopped fold is no longer stepped
    assert steps[1][2] == {"epoch": 2, "best_val_uar": 0.2}
    assert list(step_inner_folds([])) == []


def test_fold_train_overrides_per_fold_and_fingerprint():
    base = TrainConfig(lr=2e-3, model=ModelOptions(width=64, kernel_size=3))
    plain = KFoldConfig(features_path="x", train=base)
    overrides = train_overrides({"lr": 1e-3, "width": np.int64(32), "normalization": "per_speaker", "features": "x"})
    assert overrides == {"lr": 1e-3, "normalization": "per_speaker", "model": {"width": 32}}
    per_fold = KFoldConfig(features_path="x", train=base, fold_train={"1": overrides})  # keys from JSON/YAML become ints
    assert per_fold.fold_train == {1: overrides}
    assert per_fold.train_for(1).lr == 1e-3 and per_fold.train_for(1).model.width == 32 and per_fold.train_for(1).model.kernel_size == 3
    assert per_fold.train_for(0) == base
    assert per_fold.fingerprint() != plain.fingerprint()
    assert plain.fingerprint() == KFoldConfig(features_path="x", train=base, fold_train={}).fingerprint()
    with pytest.raises(ConfigError, match=r"fold_train\[0\].*unknown training options"):
        KFoldConfig(features_path="x", fold_train={0: {"learning_rate": 1.0}})
    with pytest.raises(ConfigError, match="resources"):
        KFoldConfig(features_path="x", fold_train={0: {"num_workers": 2}})


def test_unseen_by_sweep_nested_and_shared():
    table = synthetic_table(n_speakers=4, per_class=2)
    folds = make_folds(table, protocol="loso", seed=0, val_fraction=0.3)
    ids = table["utterance_id"].tolist()
    speaker_of = dict(zip(table["utterance_id"], table["speaker"], strict=True))
    nested = RunFolds.from_folds(folds, ids, protocol={"protocol": "loso"}, seed=0, val_fraction=0.3,
                                 extra={"mode": "nested", "swept_folds": [0, 1, 2, 3]})
    report = unseen_by_sweep(nested, speaker_of)
    assert report["folds"] == [0, 1, 2, 3] and report["share_of_test_speakers_unseen"] == 1.0
    assert report["test_utterances_read"] == 0 and report["test_speakers_read"] == [] and report["folds_read"] == []
    shared = RunFolds.from_folds(folds, ids, protocol={"protocol": "loso"}, seed=0, val_fraction=0.3, extra={"inner_folds": [0]})
    report = unseen_by_sweep(shared, speaker_of)
    others = [f for f in folds if f.index != 0]
    assert report["folds"] == [0] and report["folds_read"] == [1, 2, 3]  # fold 0's training side is the others' test parts
    assert report["test_speakers_read"] == sorted(s for f in others for s in f.test_speakers)
    assert report["test_utterances_read"] == sum(len(f.test) for f in others) and report["share_of_test_speakers_unseen"] == 0.25


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


def outer_folds(manifest: pd.DataFrame, protocol: str = "loso", n_folds: int | None = None):
    """The outer folds as the sweep makes them (rows sorted by utterance_id as stored; no duplicate recordings here)."""
    return make_folds(manifest, protocol=protocol, n_folds=n_folds, seed=0, val_fraction=0.15)


def stored_manifest(emodb_logmel) -> pd.DataFrame:
    return emodb_logmel[0].sort_values("utterance_id").reset_index(drop=True)


@pytest.mark.parametrize("mode", ["nested", "shared"])
def test_sweep_refuses_poisoned_training_rows(emodb_logmel, tmp_path, mode):
    """Negative control for the poisoned runs below: a NaN row the sweep does train on is caught before any trial."""
    manifest = stored_manifest(emodb_logmel)
    fold = outer_folds(manifest)[0]
    features = store_poisoned(tmp_path / "features", emodb_logmel, {manifest["utterance_id"].iloc[fold.train[0]]})
    config = TuneConfig(features_path=str(features), mode=mode, inner_folds=1, num_samples=2, epochs=2, space=TINY_SPACE,
                        base=tiny_base(), out=str(tmp_path / "runs"), name="sweep", final_run=False)
    with pytest.raises(FeatureStoreError, match="non-finite"):
        run_sweep(config)


@pytest.mark.ray
@pytest.mark.slow
def test_nested_sweep_never_gives_a_trial_its_outer_test_fold_and_resumes(ray_cluster, emodb_logmel, tmp_path, monkeypatch):
    """Every outer fold gets its own search; the rows its trials receive are checked against its test part, and built
    from a copy of the table whose test rows for that fold are NaN (a trial that read one would fail or score NaN).
    Two speaker folds of 2 speakers each (as configs/tiny_emodb.yaml), so that the final run stays short."""
    pytest.importorskip("optuna")
    manifest = stored_manifest(emodb_logmel)
    folds = outer_folds(manifest, "speaker_kfold", 2)
    ids = manifest["utterance_id"].to_numpy()
    features = store_poisoned(tmp_path / "features", emodb_logmel, set())
    shipped: dict[int, set[str]] = {}
    real_payload = sweep_module._payload

    def poisoned_payload(table, rows, labels):
        (fold,) = [f for f in folds if set(rows) == set(np.concatenate([f.train, f.val]))]
        shipped[fold.index] = set(table.meta["utterance_id"].iloc[rows])
        poisoned = [np.full_like(m, np.nan) if i in set(fold.test) else m for i, m in enumerate(table.features)]
        return real_payload(type(table)(table.meta, poisoned, table.metadata, table.path), rows, labels)

    monkeypatch.setattr(sweep_module, "_payload", poisoned_payload)
    config = TuneConfig(features_path=str(features), protocol="speaker_kfold", n_folds=2, inner_folds=2, num_samples=2, epochs=2,
                        grace_period=1, space=TINY_SPACE, base=tiny_base(), out=str(tmp_path / "runs"), name="nested")
    summary = run_sweep(config)

    assert sorted(shipped) == [f.index for f in folds]  # one search per outer fold
    for fold in folds:
        assert not shipped[fold.index] & set(ids[fold.test])
        assert shipped[fold.index] == set(ids[np.concatenate([fold.train, fold.val])])
    run_dir = tmp_path / "runs" / "nested"
    results = pd.read_csv(run_dir / "tune_results.csv")
    assert len(results) == 2 * len(folds) and sorted(results["outer_fold"].unique()) == [f.index for f in folds]
    assert (results["status"] != "error").all(), results.to_dict("records")
    assert results["val_uar"].between(0, 1).all() and np.isfinite(results["train_loss"]).all()
    assert summary["mode"] == "nested" and summary["swept_folds"] == [0, 1] and summary["not_swept_folds"] == []
    for choice in summary["outer_folds"]:
        assert choice["test_utterances_read"] == 0 and len(choice["inner_folds"]) == 2
        assert not set(choice["test_speakers"]) & {s for i in choice["inner_folds"] for s in i["val_speakers"]}
        assert set(choice["train_overrides"]) >= {"lr", "weight_decay", "label_smoothing", "model"}

    final = summary["final_summary"]
    unseen = final["unseen_by_sweep"]
    assert unseen["folds"] == [0, 1] and unseen["share_of_test_speakers_unseen"] == 1.0
    assert unseen["test_speakers_unseen"] == unseen["test_speakers_total"] == 4 and unseen["test_utterances_read"] == 0
    assert unseen["same_folds_as_sweep"] and unseen["n_test"] == final["n_test"] == len(manifest)
    assert unseen["uar"] == pytest.approx(final["uar"])  # every fold unseen: the pooled outer UAR is the unseen one
    final_run = RunFolder(tmp_path / "runs" / "nested_final")
    final_summary = final_run.read_summary()
    assert final_summary["sweep"]["unseen_by_sweep"]["folds"] == [0, 1] and final_summary["uar"] == final["uar"]
    for choice in summary["outer_folds"]:  # each fold trained once with its own search's config, recorded per fold
        k = choice["fold"]
        assert final_run.read_result(k)["train_overrides"] == choice["train_overrides"]
        assert next(f for f in final_summary["folds"] if f["fold"] == k)["train_overrides"] == choice["train_overrides"]
        assert final_summary["sweep"]["fold_configs"][str(k)]["train_overrides"] == choice["train_overrides"]
    assert json.loads((run_dir / "tune_summary.json").read_text())["final_summary"]["uar"] == final["uar"]

    # a rerun of the same name skips the finished searches and the finished final folds
    shipped.clear()
    again = run_sweep(config)
    assert shipped == {} and set(pd.read_csv(run_dir / "tune_results.csv")["trial_id"]) == set(results["trial_id"])
    assert again["final_summary"]["uar"] == final["uar"] and final_run.read_summary()["folds_trained_this_run"] == 0
    with pytest.raises(ConfigError, match="different configuration"):
        run_sweep(replace(config, num_samples=3))


@pytest.mark.ray
@pytest.mark.slow
def test_poisoned_test_speaker_nested_and_shared(ray_cluster, emodb_logmel, tmp_path):
    """The stored features of outer fold 0's test speaker are NaN. A nested sweep of fold 0 and a shared sweep on fold 0's
    training side both finish with finite scores; the shared one reports the other folds' test speakers it read."""
    pytest.importorskip("optuna")
    manifest = stored_manifest(emodb_logmel)
    folds = outer_folds(manifest)
    test_ids = set(manifest["utterance_id"].iloc[folds[0].test])
    assert len(test_ids) and len(set(manifest["speaker"].iloc[folds[0].test])) == 1
    features = store_poisoned(tmp_path / "features", emodb_logmel, test_ids)
    common = {"features_path": str(features), "protocol": "loso", "num_samples": 2, "epochs": 2, "grace_period": 1,
              "space": TINY_SPACE, "base": tiny_base(), "out": str(tmp_path / "runs"), "final_run": False}

    nested = run_sweep(TuneConfig(**common, mode="nested", inner_folds=2, outer_folds=(0,), name="nested"))
    results = pd.read_csv(tmp_path / "runs" / "nested" / "tune_results.csv")
    assert len(results) == 2 and (results["status"] != "error").all() and results["val_uar"].between(0, 1).all()
    assert nested["swept_folds"] == [0] and nested["not_swept_folds"] == [1, 2, 3]
    assert nested["fold_configs"][1]["source"].startswith("base config")
    assert nested["unseen_by_sweep"]["folds"] == [0, 1, 2, 3] and nested["outer_folds"][0]["utterances_read"] == len(manifest) - len(test_ids)

    shared = run_sweep(TuneConfig(**common, mode="shared", inner_folds=1, name="shared"))
    results = pd.read_csv(tmp_path / "runs" / "shared" / "tune_results.csv")
    assert len(results) == 2 and (results["status"] != "error").all() and np.isfinite(results["train_loss"]).all()
    assert math.isfinite(shared["best_val_uar"]) and shared["best_val_uar"] == results["val_uar"].max()
    others = sorted(s for f in folds[1:] for s in f.test_speakers)
    assert shared["test_read"]["folds_read"] == [1, 2, 3] and shared["test_read"]["test_speakers_read"] == others
    assert shared["test_read"]["test_utterances_read"] == sum(len(f.test) for f in folds[1:])
    assert shared["unseen_by_sweep"]["folds"] == [0] and "never read" not in shared["objective"]
    assert all(s in shared["objective"] for s in others)
    assert shared["utterances_read"] == len(manifest) - len(test_ids) and shared["inner_folds"] == [0]
    best = TrainConfig.from_dict(shared["best_config"])
    assert best.epochs == 2 and best.model.width == 8 and best.patience == tiny_base().patience
