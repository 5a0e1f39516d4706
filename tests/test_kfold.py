"""k-fold training on a local Ray cluster: isolation, training-only statistics, exact checkpoints, resume,
the folds recorded in folds.json, the normalisation block, and LMMD that changes what is learned."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ser_dist.audio import load_audio
from ser_dist.corpora import prepare
from ser_dist.errors import ConfigError
from ser_dist.features.compute import FeatureComputer
from ser_dist.features.config import FeatureConfig
from ser_dist.features.store import features_to_table, load_features, write_metadata, write_part_atomically
from ser_dist.runs import RunFolder
from ser_dist.training.checkpoint import load_checkpoint
from ser_dist.training.config import AugmentOptions, ModelOptions, TrainConfig
from ser_dist.training.data import Standardizer, collate
from ser_dist.training.kfold import KFoldConfig, duplicate_groups, run_kfold
from ser_dist.training.splits import make_folds

pytestmark = pytest.mark.ray

SPEAKERS = ["EMODB_03", "EMODB_08", "EMODB_11", "EMODB_14"]


@pytest.fixture(scope="module")
def small_features(tmp_path_factory, emodb_root):
    """LOGMEL of one utterance per class for 4 EMODB speakers, stored as the extractor stores them."""
    manifest = prepare("EMODB", emodb_root)
    manifest = manifest[manifest["speaker"].isin(SPEAKERS)].groupby(["speaker", "label"]).head(1).reset_index(drop=True)
    config = FeatureConfig()
    directory = tmp_path_factory.mktemp("features") / "LOGMEL" / "EMODB_LOGMEL" / f"v_{config.version()}"
    matrices = FeatureComputer(config).compute([load_audio(p) for p in manifest["path"]])
    write_part_atomically(directory, features_to_table(manifest, matrices, "float32"))
    write_metadata(directory, {"status": "complete", "completed_at": "now", "feature_config": config.to_dict(), "dataset_name": "EMODB_LOGMEL"})
    return directory


def store_small(directory, manifest):
    config = FeatureConfig()
    matrices = FeatureComputer(config).compute([load_audio(p) for p in manifest["path"]])
    write_part_atomically(directory, features_to_table(manifest, matrices, "float32"))
    write_metadata(directory, {"status": "complete", "completed_at": "now", "feature_config": config.to_dict()})
    return directory


def tiny_train(**changes) -> TrainConfig:
    base = dict(epochs=4, batch_size=8, lr=5e-3, warmup_epochs=1, patience=10, class_weights=False,
                model=ModelOptions(width=8, n_blocks=2, time_pool=4, dropout=0.0, input_dropout=0.0),
                augment=AugmentOptions(time_masks=0, feature_masks=0, mixup_alpha=0.0))
    return TrainConfig(**(base | changes))


def test_speaker_kfold_end_to_end(ray_cluster, small_features, tmp_path):
    config = KFoldConfig(features_path=str(small_features), protocol="speaker_kfold", n_folds=2, out=str(tmp_path), name="run", train=tiny_train())
    summary = run_kfold(config)
    run_dir = tmp_path / "run"
    table = load_features(small_features)

    # every utterance is tested exactly once; the report counts test utterances only
    assert summary["n_test"] == len(table.meta) == sum(f["n_test"] for f in summary["folds"])
    assert sum(c["support"] for c in summary["per_class"].values()) == len(table.meta)
    assert summary["protocol"]["speaker_independent"] is True
    for key in ("uar", "war", "macro_f1", "per_class", "folds"):
        assert key in summary

    folds = make_folds(table.meta.assign(duplicate_group=duplicate_groups(table)), protocol="speaker_kfold", n_folds=2, seed=0,
                       val_fraction=0.15, groups="duplicate_group")
    recorded = RunFolder(run_dir).read_folds()  # folds.json: the same splits, by utterance id
    assert recorded.protocol == summary["protocol"] and recorded.seed == 0 and len(recorded.folds) == len(folds)
    utterances = table.meta["utterance_id"]
    for fold in folds:
        fold_dir = run_dir / f"fold_{fold.index}"
        speakers = table.meta["speaker"].to_numpy()
        # fold isolation: no test speaker (and no test utterance) in the train or validation part
        assert not set(speakers[fold.test]) & set(speakers[np.concatenate([fold.train, fold.val])])
        predictions = pd.read_csv(fold_dir / "predictions.csv", dtype={"utterance_id": str})
        assert set(predictions["utterance_id"]) == set(utterances.iloc[fold.test])
        record = recorded.fold(fold.index)
        assert (set(record.train), set(record.val), set(record.test)) == tuple(set(utterances.iloc[p]) for p in (fold.train, fold.val, fold.test))
        assert record.test_speakers == fold.test_speakers == tuple(summary["folds"][fold.index]["test_speakers"])

        # normalisation statistics are those of the training part alone
        loaded = load_checkpoint(fold_dir / "checkpoint", expected_feature_type="LOGMEL")
        expected = Standardizer.fit([table.features[i] for i in fold.train])
        np.testing.assert_allclose(loaded.standardizer.mean, expected.mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(loaded.standardizer.std, expected.std, rtol=1e-5, atol=1e-5)
        everything = Standardizer.fit(table.features)
        assert not np.allclose(loaded.standardizer.mean, everything.mean, atol=1e-4)

        # the checkpoint reproduces the saved test predictions exactly
        ids = table.meta["utterance_id"].tolist()
        order = [ids.index(u) for u in predictions["utterance_id"]]
        normalised = [loaded.standardizer.apply(table.features[i]) for i in order]
        with torch.no_grad():
            for k, row in enumerate(predictions.itertuples(index=False)):
                x, lengths = collate(normalised, np.array([k]))
                probs = torch.softmax(loaded.model(x, lengths), -1)[0].numpy()
                stored = np.array([getattr(row, f"p_{c}") for c in loaded.labels])
                np.testing.assert_allclose(probs, stored, atol=1e-5)
                assert loaded.labels[int(probs.argmax())] == row.pred

        history = pd.read_csv(fold_dir / "history.csv")
        assert len(history) == 4
        assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]  # loss falls

    # a rerun skips the finished folds (and takes its folds from folds.json)
    again = run_kfold(config)
    assert again["folds_trained_this_run"] == 0 and again["uar"] == summary["uar"]
    # the same run name with another configuration is refused instead of mixed
    with pytest.raises(ConfigError, match="different configuration"):
        run_kfold(KFoldConfig(**{**config.__dict__, "train": tiny_train(epochs=3)}))
    assert json.loads((run_dir / "summary.json").read_text())["run"] == "run"


def test_per_speaker_run_is_transductive_and_folds_json_matches_predictions(ray_cluster, small_features, tmp_path):
    config = KFoldConfig(features_path=str(small_features), protocol="speaker_kfold", n_folds=2, out=str(tmp_path), name="ps",
                         train=tiny_train(epochs=1, normalization="per_speaker"))
    summary = run_kfold(config)
    # test speakers' unlabelled audio set their own statistics: the summary says so
    assert summary["normalization"]["mode"] == "per_speaker" and summary["normalization"]["transductive"] is True
    assert "test speakers" in summary["normalization"]["statistics"]
    run = RunFolder(tmp_path / "ps")
    recorded = run.read_folds()
    assert [f.index for f in recorded.folds] == [0, 1]
    all_ids = set(load_features(small_features).meta["utterance_id"])
    assert set().union(*(set(f.test) for f in recorded.folds)) == all_ids  # every utterance tested once
    for record in recorded.folds:
        tested = run.read_predictions(record.index)["utterance_id"]
        assert len(tested) == len(record.test) and set(tested) == set(record.test)
        assert not set(record.test) & set(record.train) and not set(record.test) & set(record.val)
        assert set(record.train) | set(record.val) | set(record.test) == all_ids


def test_full_corpus_model_with_lmmd_adaptation(ray_cluster, small_features, tmp_path, ravdess_root):
    """LMMD (weight > 0) changes the learned weights and embedding against weight 0 under the same seed.

    No validation part (the last epoch's weights are kept, so epoch selection cannot differ), no random
    crops or mixup (the generator LMMD draws target batches from is used by nothing else): the two runs
    differ only by the LMMD gradient, and two runs without it are identical (the control)."""
    ravdess = prepare("RAVDESS", ravdess_root)
    ravdess = ravdess[ravdess["speaker"].isin(["RAVDESS_01", "RAVDESS_02"])].groupby("label").head(1)
    target = store_small(tmp_path / "RAVDESS_LOGMEL" / "v_x", ravdess.reset_index(drop=True))
    quiet = AugmentOptions(time_masks=0, feature_masks=0, mixup_alpha=0.0, max_frames=None)

    def train(name: str, weight: float):
        config = KFoldConfig(features_path=str(small_features), protocol="full", out=str(tmp_path), name=name, val_fraction=0.0,
                             adapt_to=str(target) if weight else None,
                             train=tiny_train(epochs=2, patience=None, augment=quiet, lmmd_weight=weight))
        return run_kfold(config), load_checkpoint(tmp_path / name / "fold_0" / "checkpoint")

    summary, adapted = train("lmmd", 1.0)
    assert summary["protocol"]["protocol"] == "full" and summary["folds"][0]["n_test"] == 0
    assert adapted.labels == sorted(load_features(small_features).meta["label"].unique())
    history = pd.read_csv(tmp_path / "lmmd" / "fold_0" / "history.csv")
    assert len(history) == 2 and np.isfinite(history["train_loss"]).all()
    _, plain = train("plain", 0.0)
    _, plain_again = train("plain_again", 0.0)

    def parameters(loaded) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy() for k, v in loaded.model.named_parameters()}

    def embeddings(loaded) -> np.ndarray:
        features = load_features(target).features
        x, lengths = collate([loaded.standardizer.apply(m) for m in features], np.arange(len(features)))
        with torch.no_grad():
            return loaded.model.eval().embed(x, lengths).numpy()

    base, again, moved = parameters(plain), parameters(plain_again), parameters(adapted)
    for name in base:  # control: without LMMD the same seed gives the same weights
        np.testing.assert_allclose(again[name], base[name], rtol=0, atol=1e-6, err_msg=name)
    shift = max(float(np.abs(moved[name] - base[name]).max()) for name in base)
    assert shift > 1e-3, f"LMMD (weight 1.0) left the weights where weight 0 put them (largest change {shift:.2e})"
    assert np.abs(embeddings(adapted) - embeddings(plain)).mean() > 1e-3
    np.testing.assert_allclose(embeddings(plain_again), embeddings(plain), atol=1e-5)
    with pytest.raises(ConfigError, match="lmmd_weight"):
        run_kfold(KFoldConfig(features_path=str(small_features), protocol="full", out=str(tmp_path), name="x", adapt_to=str(target), train=tiny_train()))
