"""Cross-corpus evaluation on two small real corpora (EMODB source, RAVDESS target) with tiny random models.

The source "runs" are written directly with `save_checkpoint` (untrained TIM-Nets, per-fold training
statistics), as run_kfold lays them out, so these tests need no training.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from ser_dist.audio import load_audio
from ser_dist.corpora import prepare
from ser_dist.errors import ConfigError, FeatureStoreError, ModelLoadError, UnknownNameError
from ser_dist.evaluation import (
    CrossCorpusEvaluator,
    EvaluationConfig,
    LabelMapping,
    common_label_space,
    cross_corpus_matrix,
    evaluate_cross_corpus,
    load_mapping,
    merge_probabilities,
    removed_counts,
    target_features_path,
)
from ser_dist.features.compute import FeatureComputer
from ser_dist.features.config import FeatureConfig
from ser_dist.features.store import features_to_table, load_features, write_metadata, write_part_atomically
from ser_dist.model.timnet import TimNet, TimNetConfig
from ser_dist.training.checkpoint import load_checkpoint, save_checkpoint
from ser_dist.training.data import Standardizer, collate

EMODB_SPEAKERS = ["EMODB_03", "EMODB_08"]
RAVDESS_SPEAKERS = ["RAVDESS_01", "RAVDESS_02"]


def store_features(root, corpus: str, manifest: pd.DataFrame, config: FeatureConfig):
    """LOGMEL of `manifest`, stored as the extractor stores them (<root>/LOGMEL/<CORPUS>_LOGMEL/v_<hash>)."""
    directory = root / "LOGMEL" / config.dataset_name(corpus) / f"v_{config.version()}"
    matrices = FeatureComputer(config).compute([load_audio(p) for p in manifest["path"]])
    write_part_atomically(directory, features_to_table(manifest, matrices, "float32"))
    write_metadata(directory, {"status": "complete", "completed_at": "now", "corpus": corpus, "feature_config": config.to_dict(),
                               "dataset_name": config.dataset_name(corpus), "encoder": {}, "dim": 128})
    return directory


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models: one thread is faster, and far faster on a busy 2-core machine (as the Ray actor gets)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, emodb_root, ravdess_root):
    """One utterance per class and speaker: EMODB (7 classes x 2 speakers), RAVDESS (8 classes x 2 speakers)."""
    root = tmp_path_factory.mktemp("features")
    config = FeatureConfig()
    out = {}
    for corpus, data, speakers in (("EMODB", emodb_root, EMODB_SPEAKERS), ("RAVDESS", ravdess_root, RAVDESS_SPEAKERS)):
        manifest = prepare(corpus, data)
        manifest = manifest[manifest["speaker"].isin(speakers)].groupby(["speaker", "label"]).head(1).reset_index(drop=True)
        out[corpus] = store_features(root, corpus, manifest, config)
    out["root"] = root
    return out


def make_run(run_dir, features_dir, *, n_folds: int = 2, uar: float = 0.5, seed: int = 0):
    """A k-fold run folder with untrained models: fold_<k>/checkpoint (own statistics), summary.json, run_config.json."""
    table = load_features(features_dir)
    labels = sorted(table.meta["label"].unique())
    speakers = sorted(table.meta["speaker"].unique())
    feature_config = table.metadata["feature_config"] | {"encoder": table.metadata.get("encoder", {})}
    for k in range(n_folds):
        torch.manual_seed(seed + k)
        model_config = TimNetConfig(input_dim=128, n_classes=len(labels), width=8, n_blocks=2, time_pool=4, dropout=0.0)
        model = TimNet(model_config)
        with torch.no_grad():  # confident random models, so that probabilities differ visibly between inputs
            model.classifier.weight.mul_(20.0)
        train = table.meta.index[table.meta["speaker"] != speakers[k % len(speakers)]]
        save_checkpoint(run_dir / f"fold_{k}" / "checkpoint", model_config=model_config, state_dict=model.state_dict(),
                        standardizer=Standardizer.fit([table.features[i] for i in train]), labels=labels,
                        feature_config=feature_config, extra={"fold": k, "normalization": "train_global", "corpus": table.metadata["corpus"]})
    (run_dir / "summary.json").write_text(json.dumps({"run": run_dir.name, "uar": uar, "labels": labels}))
    (run_dir / "run_config.json").write_text(json.dumps({"features": str(table.path), "feature_metadata": table.metadata, "labels": labels}))
    return run_dir


@pytest.fixture(scope="module")
def emodb_run(tmp_path_factory, stores):
    return make_run(tmp_path_factory.mktemp("runs") / "EMODB_LOGMEL_speaker_kfold2", stores["EMODB"], uar=0.61)


@pytest.fixture
def keep_surprise(tmp_path):
    """A mapping file that undoes surprise -> neutral: EMODB has no surprise, so RAVDESS surprise is dropped."""
    path = tmp_path / "mapping.yaml"
    path.write_text("surprise: surprise\n")
    return path


def direct_probabilities(run_dir, features: list[np.ndarray], *, standardizer: Standardizer | None = None) -> list[np.ndarray]:
    """Each fold model run by hand, one utterance at a time: (N, C) per fold."""
    out = []
    for k in range(2):
        loaded = load_checkpoint(run_dir / f"fold_{k}" / "checkpoint")
        stats = standardizer or loaded.standardizer
        rows = []
        with torch.no_grad():
            for matrix in features:
                x, lengths = collate([stats.apply(matrix)], np.array([0]))
                rows.append(torch.softmax(loaded.model(x, lengths), -1)[0].numpy())
        out.append(np.stack(rows))
    return out


# ------------------------------------------------------------------------------------ mapping (no Ray)


def test_mapping_table_file_and_merge(tmp_path):
    default = LabelMapping()
    assert default.shared("boredom") == "neutral" and default.shared("calm") == "neutral" and default.shared("surprise") == "neutral"
    assert default.shared("excited") == "happy" and default.shared("frustrated") == "angry" and default.shared("sad") == "sad"

    path = tmp_path / "m.yaml"
    path.write_text("Surprise: surprise\ndisgust: null\n")
    mapping = load_mapping(path)
    assert mapping.shared("surprise") == "surprise" and mapping.shared("disgust") is None
    assert mapping.shared("boredom") == "neutral"  # defaults stay
    assert mapping.overrides == {"surprise": "surprise", "disgust": None} and mapping.source == str(path)

    emodb = ["angry", "boredom", "disgust", "fear", "happy", "neutral", "sad"]
    ravdess = ["angry", "calm", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    assert common_label_space(emodb, ravdess, LabelMapping()) == ["angry", "disgust", "fear", "happy", "neutral", "sad"]
    common = common_label_space(emodb, ravdess, mapping)
    assert common == ["angry", "fear", "happy", "neutral", "sad"]
    assert removed_counts(["surprise", "calm", "disgust", "surprise", "sad"], common, mapping) == {"disgust": 1, "surprise": 2}

    probs = np.random.default_rng(0).dirichlet(np.ones(len(emodb)), size=5)  # (5, 7)
    merged = merge_probabilities(probs, emodb, common, mapping)
    np.testing.assert_allclose(merged[:, common.index("neutral")], probs[:, emodb.index("boredom")] + probs[:, emodb.index("neutral")])
    np.testing.assert_allclose(merged[:, common.index("angry")], probs[:, emodb.index("angry")])
    np.testing.assert_allclose(merged.sum(1), 1.0 - probs[:, emodb.index("disgust")])  # disgust's mass is dropped

    path.write_text("bordeom: neutral\n")
    with pytest.raises(UnknownNameError, match="bordeom.*expected one of.*boredom"):
        load_mapping(path)
    path.write_text("- boredom\n")
    with pytest.raises(ConfigError, match="one mapping"):
        load_mapping(path)


# ------------------------------------------------------------------------------------ the evaluator (no Ray)


def test_fold_ensemble_mapping_drops_a_class(stores, emodb_run, keep_surprise):
    evaluator = CrossCorpusEvaluator(emodb_run, mode="fold_ensemble")
    target = load_features(stores["RAVDESS"])
    labels = target.meta["label"].tolist()
    n_surprise = labels.count("surprise")
    assert n_surprise == 2 and "calm" in labels

    result = evaluator.evaluate(stores["RAVDESS"], mapping=load_mapping(keep_surprise))
    assert result["common_labels"] == ["angry", "disgust", "fear", "happy", "neutral", "sad"]
    assert result["removed"] == {"surprise": n_surprise} and result["n_removed"] == n_surprise
    assert result["report"]["n"] == len(labels) - n_surprise == len(result["predictions"])
    assert {p["label"] for p in result["predictions"]} == set(labels) - {"surprise"}
    assert result["source_classes_left_out"] == [] and result["source"]["n_models"] == 2

    # fold_ensemble = mean of each fold model's own probabilities (each with its own training statistics)
    ids = target.meta["utterance_id"].tolist()
    kept = [ids.index(p["utterance_id"]) for p in result["predictions"]]
    folds = direct_probabilities(emodb_run, [target.features[i] for i in kept])
    source = np.array([[p[f"source_p_{c}"] for c in evaluator.labels] for p in result["predictions"]])
    np.testing.assert_allclose(source, (folds[0] + folds[1]) / 2, atol=1e-5)
    assert not np.allclose(folds[0], folds[1], atol=1e-3)
    # boredom + neutral -> the shared neutral; calm is scored as neutral
    merged = np.array([p["p_neutral"] for p in result["predictions"]])
    np.testing.assert_allclose(merged, source[:, evaluator.labels.index("boredom")] + source[:, evaluator.labels.index("neutral")], atol=1e-6)
    assert all(p["true"] == "neutral" for p in result["predictions"] if p["label"] == "calm")
    assert all(p["pred"] == max(result["common_labels"], key=lambda c, p=p: p[f"p_{c}"]) for p in result["predictions"])
    assert [m["fold"] for m in result["members"]] == ["fold_0", "fold_1"]

    # the default mapping keeps surprise (as neutral): nothing is removed
    default = evaluator.evaluate(stores["RAVDESS"])
    assert default["removed"] == {} and default["report"]["n"] == len(labels)
    assert default["report"]["per_class"]["neutral"]["support"] == labels.count("neutral") + labels.count("calm") + n_surprise


def test_target_normalization_and_single_model(stores, emodb_run):
    evaluator = CrossCorpusEvaluator(emodb_run)
    target = load_features(stores["RAVDESS"])
    by_source = evaluator.evaluate(stores["RAVDESS"], normalization="source")
    by_target = evaluator.evaluate(stores["RAVDESS"], normalization="target")
    assert by_target["normalization_description"] == "target corpus statistics (transductive, unlabelled)"
    p_source = np.array([[p[f"source_p_{c}"] for c in evaluator.labels] for p in by_source["predictions"]])
    p_target = np.array([[p[f"source_p_{c}"] for c in evaluator.labels] for p in by_target["predictions"]])
    assert np.abs(p_source - p_target).max() > 1e-3
    # target statistics: one mean/std over all target features, shared by both fold models
    ids = target.meta["utterance_id"].tolist()
    kept = [ids.index(p["utterance_id"]) for p in by_target["predictions"]]
    folds = direct_probabilities(emodb_run, [target.features[i] for i in kept], standardizer=Standardizer.fit(target.features))
    np.testing.assert_allclose(p_target, (folds[0] + folds[1]) / 2, atol=1e-5)
    # per-speaker statistics: each target speaker's own frames (all of them, kept or not) set their mean/std
    by_speaker = evaluator.evaluate(stores["RAVDESS"], normalization="per_speaker")
    p_speaker = np.array([[p[f"source_p_{c}"] for c in evaluator.labels] for p in by_speaker["predictions"]])
    speakers = target.meta["speaker"].to_numpy()
    expected = []
    for i in kept:
        own = [target.features[j] for j in np.flatnonzero(speakers == speakers[i])]
        expected.append(Standardizer.fit(own).apply(target.features[i]))
    folds = direct_probabilities(emodb_run, expected, standardizer=Standardizer.identity(target.dim))
    np.testing.assert_allclose(p_speaker, (folds[0] + folds[1]) / 2, atol=1e-5)
    assert np.abs(p_speaker - p_target).max() > 1e-3

    single = CrossCorpusEvaluator(emodb_run / "fold_1" / "checkpoint", mode="single")
    one = single.evaluate(stores["RAVDESS"])
    assert one["source"]["n_models"] == 1 and one["mode"] == "single" and one["source"]["corpus"] == "EMODB"
    np.testing.assert_allclose([[p[f"source_p_{c}"] for c in single.labels] for p in one["predictions"]],
                               direct_probabilities(emodb_run, [target.features[i] for i in kept])[1], atol=1e-5)
    with pytest.raises(ModelLoadError, match="full/checkpoint"):
        CrossCorpusEvaluator(emodb_run, mode="single")
    with pytest.raises(ConfigError, match="mode 'single'"):
        CrossCorpusEvaluator(emodb_run / "fold_0" / "checkpoint", mode="fold_ensemble")
    with pytest.raises(UnknownNameError, match="fold_ensemble, single"):
        CrossCorpusEvaluator(emodb_run, mode="ensemble")


def test_mismatched_feature_config_raises(stores, emodb_run, tmp_path):
    other = tmp_path / "RAVDESS_LOGMEL" / "v_other"
    shutil.copytree(stores["RAVDESS"], other)
    metadata = json.loads((other / "metadata.json").read_text())
    metadata["feature_config"]["logmel"]["n_mels"] = 64
    write_metadata(other, metadata)
    evaluator = CrossCorpusEvaluator(emodb_run)
    with pytest.raises(ConfigError, match=r"logmel.n_mels: source 128, target 64") as error:
        evaluator.evaluate(other)
    assert str(emodb_run) in str(error.value) and str(other) in str(error.value)

    metadata["feature_config"] = FeatureConfig.from_dict({"feature_type": "HUBERT"}).to_dict()
    write_metadata(other, metadata)
    with pytest.raises(ConfigError, match="feature type: source 'LOGMEL', target 'HUBERT'"):
        evaluator.evaluate(other)


def test_target_features_path(stores, emodb_run):
    assert target_features_path(None, emodb_run, "ravdess") == str(stores["RAVDESS"])
    assert target_features_path(stores["root"], emodb_run / "fold_0" / "checkpoint", "RAVDESS") == str(stores["RAVDESS"])
    with pytest.raises(FeatureStoreError, match="ser-dist extract --corpus IEMOCAP --features LOGMEL"):
        target_features_path(None, emodb_run, "IEMOCAP")


# ------------------------------------------------------------------------------------ on Ray


@pytest.mark.ray
def test_evaluate_and_matrix_on_ray(ray_cluster, stores, emodb_run, keep_surprise, tmp_path):
    config = EvaluationConfig(source_run=str(emodb_run), target_features=str(stores["RAVDESS"]), normalization="target",
                              mapping_file=str(keep_surprise))
    report = evaluate_cross_corpus(config)
    out = emodb_run / "cross_RAVDESS_target-norm_map-mapping"
    saved = json.loads((out / "report.json").read_text())
    assert saved["summary"]["uar"] == pytest.approx(report["summary"]["uar"])
    protocol = saved["protocol"]
    assert protocol["protocol"] == "cross_corpus" and protocol["source_corpus"] == "EMODB" and protocol["target_corpus"] == "RAVDESS"
    assert protocol["normalization"] == "target corpus statistics (transductive, unlabelled)"
    assert protocol["mode"] == "fold_ensemble" and protocol["source_run"] == str(emodb_run)
    assert protocol["mapping"] == str(keep_surprise) and protocol["mapping_table"]["surprise"] == "surprise"
    assert protocol["removed_utterances"] == 2 and protocol["removed_by_label"] == {"surprise": 2}
    assert saved["summary"]["n_removed"] == 2 and len(saved["skipped"]) == 2
    assert (out / "report.xlsx").is_file() and (out / "confusion.png").is_file()
    assert len(pd.read_csv(out / "predictions.csv")) == saved["summary"]["n"]

    with pytest.raises(ModelLoadError, match="full/checkpoint"):  # checked before any actor starts
        evaluate_cross_corpus(EvaluationConfig(source_run=str(emodb_run), target_features=str(stores["RAVDESS"]), mode="single"))
    other = tmp_path / "RAVDESS_LOGMEL" / "v_other"  # an error inside the actor arrives as the library's own error
    shutil.copytree(stores["RAVDESS"], other)
    metadata = json.loads((other / "metadata.json").read_text())
    metadata["feature_config"]["logmel"]["hop_length"] = 320
    write_metadata(other, metadata)
    with pytest.raises(ConfigError, match="logmel.hop_length: source 160, target 320"):
        evaluate_cross_corpus(EvaluationConfig(source_run=str(emodb_run), target_features=str(other), out=str(tmp_path / "never")))
    assert not (tmp_path / "never").exists()

    ravdess_run = make_run(tmp_path / "RAVDESS_run", stores["RAVDESS"], uar=0.42, seed=10)
    matrix = cross_corpus_matrix({"EMODB": str(emodb_run), "RAVDESS": str(ravdess_run)},
                                 {"EMODB": str(stores["EMODB"]), "RAVDESS": str(stores["RAVDESS"])}, tmp_path / "matrix")
    assert matrix.loc["EMODB", "EMODB"] == pytest.approx(0.61) and matrix.loc["RAVDESS", "RAVDESS"] == pytest.approx(0.42)
    assert matrix.loc["EMODB", "RAVDESS"] == pytest.approx(
        json.loads((tmp_path / "matrix" / "EMODB_to_RAVDESS" / "report.json").read_text())["summary"]["uar"])
    assert np.isfinite(matrix.to_numpy()).all()
    assert (tmp_path / "matrix" / "matrix.png").stat().st_size > 0 and (tmp_path / "matrix" / "matrix.csv").is_file()
    meta = json.loads((tmp_path / "matrix" / "matrix.json").read_text())
    assert meta["cells"]["EMODB"]["EMODB"]["kind"].startswith("in-corpus") and meta["cells"]["EMODB"]["RAVDESS"]["kind"] == "cross-corpus"
    # RAVDESS -> EMODB: EMODB boredom is scored as neutral; RAVDESS calm and surprise (default mapping) feed neutral
    reverse = json.loads((tmp_path / "matrix" / "RAVDESS_to_EMODB" / "report.json").read_text())
    assert reverse["summary"]["n_removed"] == 0 and reverse["per_class"]["neutral"]["support"] == 4
