"""Pooled training data (training/pool.py), leave-one-corpus-out folds and per_corpus normalisation; no Ray,
tiny synthetic stores written as the extractor writes them. One slow end-to-end pooled run on the Ray fixture."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ser_dist.errors import ConfigError, UnknownNameError
from ser_dist.features.config import FeatureConfig, LogMelConfig
from ser_dist.features.spec import FeatureSpec
from ser_dist.features.store import features_to_table, write_metadata, write_part_atomically
from ser_dist.training.data import Standardizer, corpus_statistics, normalise
from ser_dist.training.kfold import KFoldConfig, normalization_description
from ser_dist.training.pool import build_pool
from ser_dist.training.splits import make_folds

DIM = 6


def write_store(root, corpus: str, labels_by_speaker: dict[str, list[str]], *, dim: int = DIM, offset: float = 0.0,
                config: FeatureConfig | None = None, ids: list[str] | None = None):
    """A complete store of one corpus: rows of (5, dim) frames around `offset` (so corpora differ in level)."""
    rows, matrices = [], []
    rng = np.random.default_rng(abs(hash(corpus)) % 2**32)
    k = 0
    for speaker, labels in labels_by_speaker.items():
        for label in labels:
            uid = ids[k] if ids else f"{corpus.lower()}_{speaker}_{k:03d}"
            rows.append({"utterance_id": uid, "corpus": corpus, "speaker": speaker, "gender": "F", "session": "", "label": label})
            matrices.append((offset + rng.standard_normal((5, dim))).astype(np.float32))
            k += 1
    config = config or FeatureConfig()
    directory = root / f"{corpus}_LOGMEL" / f"v_{config.version()}"
    write_part_atomically(directory, features_to_table(pd.DataFrame(rows), matrices, "float32"))
    write_metadata(directory, {"status": "complete", "completed_at": "now", "corpus": corpus, "dim": dim,
                               "feature_config": config.to_dict(), "feature_spec": FeatureSpec(config).to_json(),
                               "dataset_name": f"{corpus}_LOGMEL"})
    return directory


EMO = ["angry", "sad", "boredom", "neutral"] * 2  # EMODB-like: boredom -> neutral under the default mapping
RAV = ["angry", "sad", "calm", "surprise", "happy"] * 2  # RAVDESS-like: calm, surprise -> neutral; happy only here


@pytest.fixture
def stores(tmp_path):
    a = write_store(tmp_path, "EMODB", {"03": EMO, "08": EMO, "09": EMO}, offset=5.0)
    b = write_store(tmp_path, "RAVDESS", {"RAVDESS_01": RAV, "RAVDESS_02": RAV, "RAVDESS_03": RAV}, offset=-5.0)
    return str(a), str(b)


def test_pool_keeps_shared_classes_and_namespaces_speakers(stores):
    table = build_pool(list(stores))
    pool = table.metadata["pool"]
    assert pool["corpora"] == ["EMODB", "RAVDESS"]
    assert pool["classes"] == ["angry", "neutral", "sad"]  # happy is RAVDESS only; boredom/calm/surprise map to neutral
    assert sorted(table.meta["label"].unique()) == pool["classes"]
    rav = next(m for m in pool["members"] if m["corpus"] == "RAVDESS")
    assert rav["dropped"] == {"happy": 6} and rav["n_read"] == 30 and rav["n_kept"] == 24
    assert rav["label_counts"] == {"angry": 6, "neutral": 12, "sad": 6}
    # original labels kept beside the shared ones
    merged = table.meta[table.meta["original_label"].isin(["calm", "surprise", "boredom"])]
    assert set(merged["label"]) == {"neutral"}
    # EMODB "03" gets its corpus prefix; RAVDESS_01 (already namespaced) is left alone
    assert sorted(table.meta["speaker"].unique()) == ["EMODB_03", "EMODB_08", "EMODB_09", "RAVDESS_01", "RAVDESS_02", "RAVDESS_03"]
    assert len(table.features) == len(table.meta) == 24 + 24
    assert table.meta["utterance_id"].is_unique and table.metadata["dataset_name"] == "EMODB+RAVDESS_LOGMEL"
    # rows and matrices stay aligned: EMODB rows are the ones around +5
    levels = np.array([m.mean() for m in table.features])
    assert (levels[table.meta["corpus"].to_numpy() == "EMODB"] > 2).all() and (levels[table.meta["corpus"].to_numpy() == "RAVDESS"] < -2).all()


def test_pool_with_a_mapping_file_and_classes(stores, tmp_path):
    mapping = tmp_path / "m.yaml"
    mapping.write_text("boredom: null\ncalm: null\nsurprise: null\n")
    table = build_pool(list(stores), mapping_file=str(mapping))
    assert table.metadata["pool"]["classes"] == ["angry", "sad"]  # neutral: EMODB only now
    assert next(m for m in table.metadata["pool"]["members"] if m["corpus"] == "EMODB")["dropped"] == {"boredom": 6, "neutral": 6}
    # a pool of one store restricted to the pool's classes: the per-corpus baseline
    single = build_pool([stores[0]], classes=["angry", "neutral"])
    assert sorted(single.meta["label"].unique()) == ["angry", "neutral"] and len(single.meta) == 18
    with pytest.raises(ConfigError, match=r"classes \['happy'\] are not shared"):
        build_pool(list(stores), classes=["happy", "sad"])


def test_pool_refuses_fewer_than_two_classes_mismatched_features_and_repeats(tmp_path):
    a = write_store(tmp_path / "a", "EMODB", {"03": ["angry", "sad"], "08": ["angry", "sad"]})
    b = write_store(tmp_path / "b", "RAVDESS", {"01": ["angry", "happy"], "02": ["angry", "happy"]})
    with pytest.raises(ConfigError, match=r"shares \['angry'\] class\(es\).*at least two"):
        build_pool([str(a), str(b)])
    wide = write_store(tmp_path / "c", "CREMAD", {"01": ["angry", "sad"], "02": ["angry", "sad"]}, dim=DIM + 1)
    with pytest.raises(ConfigError, match="feature dim 7"):
        build_pool([str(a), str(wide)])
    other = FeatureConfig(logmel=LogMelConfig(hop_length=320))
    hop = write_store(tmp_path / "d", "SAVEE", {"01": ["angry", "sad"], "02": ["angry", "sad"]}, config=other)
    with pytest.raises(ConfigError, match="logmel.hop_length: 160 vs 320"):
        build_pool([str(a), str(hop)])
    with pytest.raises(ConfigError, match="more than once"):
        build_pool([str(a), str(a)])


def test_pool_namespaces_clashing_utterance_ids(tmp_path):
    ids = ["x1", "x2", "x3", "x4"]
    a = write_store(tmp_path / "a", "EMODB", {"03": ["angry", "sad"], "08": ["angry", "sad"]}, ids=ids)
    b = write_store(tmp_path / "b", "TESS", {"01": ["angry", "sad"], "02": ["angry", "sad"]}, ids=ids)
    table = build_pool([str(a), str(b)])
    assert table.meta["utterance_id"].is_unique and set(table.meta["utterance_id"]) >= {"EMODB/x1", "TESS/x1"}


def test_leave_one_corpus_out_keeps_test_corpus_out_of_train_and_val(stores):
    table = build_pool(list(stores))
    folds = make_folds(table.meta, protocol="leave_one_corpus_out", seed=0, val_fraction=0.34)
    corpus = table.meta["corpus"].to_numpy()
    assert len(folds) == 2
    for fold in folds:
        tested = set(corpus[fold.test])
        assert len(tested) == 1 and len(fold.val) > 0
        assert not tested & set(corpus[fold.train]) and not tested & set(corpus[fold.val])
        assert not set(table.meta["speaker"].iloc[fold.val]) & set(table.meta["speaker"].iloc[fold.train])
    assert sorted(np.concatenate([f.test for f in folds])) == list(range(len(table.meta)))
    # LOSO over the pool: one fold per namespaced speaker of either corpus
    assert len(make_folds(table.meta, protocol="loso", seed=0)) == 6
    with pytest.raises(ConfigError, match="'corpus' column"):
        make_folds(table.meta.drop(columns="corpus"), protocol="leave_one_corpus_out")


def test_per_corpus_statistics_never_read_test_rows_except_a_corpus_without_training_rows(stores):
    table = build_pool(list(stores))
    corpora = table.meta["corpus"].tolist()
    folds = make_folds(table.meta, protocol="loso", seed=0)
    fold = folds[0]
    stats = corpus_statistics(table.features, corpora, fold.train)
    for corpus in ("EMODB", "RAVDESS"):
        rows = [i for i in fold.train if corpora[i] == corpus]
        expected = Standardizer.fit([table.features[i] for i in rows])
        np.testing.assert_allclose(stats[corpus].mean, expected.mean, rtol=1e-6)
    # changing a test row (or a validation row) changes nothing
    poisoned = list(table.features)
    for i in [*fold.test, *fold.val]:
        poisoned[i] = poisoned[i] + 1000.0
    again = corpus_statistics(poisoned, corpora, fold.train)
    for corpus in stats:
        np.testing.assert_allclose(again[corpus].mean, stats[corpus].mean, rtol=1e-6)
    # each corpus is centred on its own level: both around 0 after normalising, though they sit at +5 and -5
    normalised, global_stats = normalise(table.features, table.meta["speaker"].tolist(), train_positions=fold.train, mode="per_corpus",
                                         corpora=corpora)
    for corpus in ("EMODB", "RAVDESS"):
        frames = np.concatenate([normalised[i] for i in fold.train if corpora[i] == corpus])
        assert abs(frames.mean()) < 0.05
    assert abs(global_stats.mean.mean()) < 1.5  # the checkpoint's pooled statistics mix both levels
    # leave-one-corpus-out: the held-out corpus has no training rows, so its own frames set its statistics
    lo = make_folds(table.meta, protocol="leave_one_corpus_out", seed=0)[0]
    held_out = corpora[lo.test[0]]
    own = corpus_statistics(table.features, corpora, lo.train)[held_out]
    every = Standardizer.fit([m for m, c in zip(table.features, corpora, strict=True) if c == held_out])
    np.testing.assert_allclose(own.mean, every.mean, rtol=1e-6)
    with pytest.raises(ValueError, match="needs one corpus per utterance"):
        normalise(table.features, table.meta["speaker"].tolist(), train_positions=fold.train, mode="per_corpus")


def test_normalization_description_and_config():
    assert normalization_description("per_corpus")["transductive"] is False
    described = normalization_description("per_corpus", own_statistics={1: ["EMODB"]})
    assert described["transductive"] is True and described["own_statistics"] == {"1": ["EMODB"]}
    plain = KFoldConfig(features_path="a")
    pooled = KFoldConfig(features_path="a", pool=["b"])
    assert not plain.pooled and pooled.pooled and pooled.pool == ("b",)
    assert plain.fingerprint() != pooled.fingerprint()
    with pytest.raises(ConfigError, match="candidate_features"):
        KFoldConfig(features_path="a", pool=("b",), candidate_features=("c",))


def test_plain_runs_keep_their_fingerprint():
    """Runs from before pooling are resumed, not refused: the new fields leave the hash alone when unset."""
    import hashlib
    import json
    from dataclasses import asdict

    config = KFoldConfig(features_path="data/features/LOGMEL/EMODB_LOGMEL")
    new_fields = ("fold_train", "pool", "pool_classes", "mapping_file", "checkpoint_every", "data_loading", "stream_buffer_rows")
    blob = {k: v for k, v in asdict(config).items() if k not in ("out", "name", *new_fields)}
    blob["train"] = {k: v for k, v in blob["train"].items() if k not in ("max_concurrent_folds", "cpus_per_worker")}
    assert config.fingerprint() == hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


def test_split_corpora_and_pipeline_config_pools(tmp_path):
    from ser_dist.corpora import split_corpora
    from ser_dist.pipeline import CrossCorpusStep, PipelineConfig, SweepStep

    assert split_corpora("EMODB") == ["EMODB"]
    assert split_corpora(" emodb , RAVDESS") == ["emodb", "RAVDESS"]
    with pytest.raises(ConfigError, match="more than once"):
        split_corpora("EMODB,emodb")
    with pytest.raises(ConfigError, match="empty entry"):
        split_corpora("EMODB,")
    with pytest.raises(UnknownNameError, match="expected one of"):
        split_corpora("EMODB,EMODB2")
    config = PipelineConfig(corpus="EMODB,RAVDESS", classes=["angry", "sad"])
    assert config.corpora == ["EMODB", "RAVDESS"] and config.pooled and config.classes == ("angry", "sad")
    assert not PipelineConfig(corpus="EMODB").pooled
    with pytest.raises(ConfigError, match="training corpus RAVDESS"):
        PipelineConfig(corpus="EMODB,RAVDESS", cross_corpus=CrossCorpusStep(targets=("RAVDESS",)))
    with pytest.raises(ConfigError, match="sweep"):
        PipelineConfig(corpus="EMODB,RAVDESS", sweep=SweepStep(enabled=True))
    # a table corpus is extracted under the name the user gave (table:PATH), its label map passed to tables only
    table = tmp_path / "clips.csv"
    table.write_text("path,label,speaker\n")
    config = PipelineConfig(corpus=f"EMODB,table:{table}", label_map="m.yaml")
    assert config.extract_config(f"table:{table}").label_map == "m.yaml" and config.extract_config("EMODB").label_map is None


def test_cli_train_resolves_one_store_per_pool_member(tmp_path):
    from ser_dist.cli import _features_path, build_parser

    args = build_parser().parse_args(["train", "--corpus", "EMODB,RAVDESS", "--features-dir", str(tmp_path), "--protocol",
                                      "leave_one_corpus_out", "--normalization", "per_corpus", "--classes", "angry,sad"])
    assert _features_path(args, "RAVDESS").endswith("LOGMEL/RAVDESS_LOGMEL")
    store = write_store(tmp_path, "EMODB", {"03": ["angry", "sad"], "08": ["angry", "sad"]})
    args.features_dir = str(store.parent)  # one corpus's dataset folder cannot serve a pool
    with pytest.raises(ConfigError, match="one corpus's dataset folder"):
        _features_path(args, "RAVDESS")
