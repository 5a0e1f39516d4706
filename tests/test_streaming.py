"""Streaming folds (KFoldConfig.data_loading="stream") against the in-memory path, on tiny synthetic stores."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from ser_dist.errors import ConfigError
from ser_dist.features.store import (
    features_to_table,
    load_feature_index,
    load_features,
    write_metadata,
    write_part_atomically,
)
from ser_dist.training.config import AugmentOptions, ModelOptions, TrainConfig
from ser_dist.training.data import Standardizer
from ser_dist.training.kfold import KFoldConfig, duplicate_groups, run_kfold
from ser_dist.training.splits import make_folds
from ser_dist.training.streaming import StreamSource, streamed_duplicate_groups

LABELS = ["angry", "happy", "neutral"]


def write_store(directory, *, n=36, dim=6, dtype="float32", seed=0):
    """n utterances of 6 speakers in 3 parts; two rows duplicate another's matrix."""
    rng = np.random.default_rng(seed)
    rows = pd.DataFrame({
        "utterance_id": [f"u{i:03d}" for i in range(n)], "corpus": "SYN", "speaker": [f"s{i % 6}" for i in range(n)],
        "gender": "f", "session": "1", "label": [LABELS[(i // 6) % 3] for i in range(n)],
    })
    matrices = [(rng.standard_normal((int(rng.integers(5, 40)), dim)) * 3 + 2 + i % 3).astype(np.float32) for i in range(n)]
    matrices[7] = matrices[1].copy()
    matrices[13] = matrices[1].copy()  # duplicates stay within one speaker (s1)
    for chunk in np.array_split(np.arange(n)[::-1], 3):  # parts not in id order
        write_part_atomically(directory, features_to_table(rows.iloc[chunk], [matrices[i] for i in chunk], dtype))
    write_metadata(directory, {"status": "complete", "completed_at": "now", "dim": dim, "dataset_name": "SYN_LOGMEL",
                               "feature_config": {"storage_dtype": dtype}})
    return directory


class FakeShard:
    """Stands in for a Ray DataIterator: yields the rows of a pyarrow table in batches."""

    def __init__(self, table):
        self.table = table

    def iter_batches(self, *, batch_size, batch_format, **_):
        for start in range(0, self.table.num_rows, batch_size):
            yield self.table.slice(start, batch_size)


def test_row_index_and_duplicate_groups_match_the_in_memory_table(tmp_path):
    for dtype in ("float32", "float16"):
        directory = write_store(tmp_path / dtype, dtype=dtype)
        table, index = load_features(directory), load_feature_index(directory)
        pd.testing.assert_frame_equal(table.meta, index.meta)
        groups = streamed_duplicate_groups(index, batch_rows=5)
        np.testing.assert_array_equal(groups, duplicate_groups(table))
        assert len(set(groups)) == len(groups) - 2
        folds_memory = make_folds(table.meta.assign(duplicate_group=duplicate_groups(table)), protocol="speaker_kfold", n_folds=3,
                                  seed=1, val_fraction=0.2, groups="duplicate_group")
        folds_stream = make_folds(index.meta.assign(duplicate_group=groups), protocol="speaker_kfold", n_folds=3, seed=1,
                                  val_fraction=0.2, groups="duplicate_group")
        for a, b in zip(folds_memory, folds_stream, strict=True):
            for part in ("train", "val", "test"):
                np.testing.assert_array_equal(getattr(a, part), getattr(b, part))


def test_stream_source_batches_and_predictions(tmp_path):
    directory = write_store(tmp_path / "s")
    table = load_features(directory)
    import pyarrow.parquet as pq

    raw = pq.read_table([p.path for p in load_feature_index(directory).parts][0])  # 12 rows, ids in descending order
    ids = raw.column("utterance_id").to_pylist()
    train_stats = Standardizer.fit(table.features[:10])
    spec = {"labels": LABELS, "input_dim": 6, "buffer_rows": 5, "mean": train_stats.mean.tolist(), "std": train_stats.std.tolist(),
            "train_labels": [0, 1, 2] * 4, "part_sizes": {"train": 12, "val": 12, "test": 0}}
    source = StreamSource(spec, {"train": FakeShard(raw), "val": FakeShard(raw)})
    batches = list(source.train_batches(1, batch_size=4, seed=0, rank=0, world_size=1))
    assert len(batches) == source.steps_per_epoch(4, 1) == math.ceil(12 / 4)  # buffer rounded up to whole batches
    seen = [float(m[0, 0]) for matrices, _ in batches for m in matrices]
    by_id = dict(zip(table.meta["utterance_id"], table.features, strict=True))
    assert sorted(seen) == sorted(float(train_stats.apply(by_id[u])[0, 0]) for u in ids)
    probs, y, order = source.predict("val", lambda ms: np.tile([[m.shape[0], 0.0, 0.0] for m in ms], 1))
    assert order == sorted(ids)
    assert probs[:, 0].tolist() == [by_id[u].shape[0] for u in order]
    assert y.tolist() == [LABELS.index(table.meta.set_index("utterance_id").loc[u, "label"]) for u in order]
    assert source.part_size("test") == 0 and source.predict("test", lambda ms: None)[0].shape == (0, 3)
    with pytest.raises(RuntimeError, match="expected 13"):
        StreamSource(spec | {"part_sizes": {"train": 12, "val": 13, "test": 0}}, {"val": FakeShard(raw)}).predict("val", lambda ms: np.zeros((len(ms), 3)))


def test_stream_refuses_per_speaker_with_a_clear_error(tmp_path):
    directory = write_store(tmp_path / "s")
    config = KFoldConfig(features_path=str(directory), protocol="speaker_kfold", n_folds=2, out=str(tmp_path / "runs"),
                         data_loading="stream", train=TrainConfig(normalization="per_speaker"))
    with pytest.raises(ConfigError, match="per_speaker"):
        run_kfold(config)
    with pytest.raises(ConfigError, match="data_loading"):
        KFoldConfig(features_path=str(directory), data_loading="lazy")


def test_streamed_train_statistics_match_the_in_memory_standardizer(ray_cluster, tmp_path):
    from ser_dist.training.streaming import StreamedFolds, part_dataset, train_statistics

    for dtype in ("float32", "float16"):
        directory = write_store(tmp_path / dtype, dtype=dtype)
        table, index = load_features(directory), load_feature_index(directory)
        train = np.array([0, 2, 3, 5, 8, 13, 21, 22, 30, 35])
        streamed = train_statistics(part_dataset(StreamedFolds(index, LABELS).dataset, index.meta["utterance_id"].iloc[train].tolist()), 6)
        reference = Standardizer.fit([table.features[i] for i in train])
        np.testing.assert_allclose(streamed.mean, reference.mean, atol=1e-5)
        np.testing.assert_allclose(streamed.std, reference.std, atol=1e-5)


def test_streaming_kfold_end_to_end(ray_cluster, tmp_path):
    directory = write_store(tmp_path / "store")
    train = TrainConfig(epochs=2, batch_size=8, warmup_epochs=1, patience=5, class_weights=True,
                        model=ModelOptions(width=8, n_blocks=2, time_pool=4), augment=AugmentOptions(time_masks=0, feature_masks=0))
    config = KFoldConfig(features_path=str(directory), protocol="speaker_kfold", n_folds=2, out=str(tmp_path / "runs"), name="stream",
                         data_loading="stream", stream_buffer_rows=10, train=train)
    summary = run_kfold(config)
    run = tmp_path / "runs" / "stream"
    folds = json.loads((run / "folds.json").read_text())
    table = load_features(directory)
    memory_folds = make_folds(table.meta.assign(duplicate_group=duplicate_groups(table)), protocol="speaker_kfold", n_folds=2, seed=0,
                              val_fraction=0.15, groups="duplicate_group")
    assert summary["n_test"] == len(table.meta)
    for fold in memory_folds:
        result = json.loads((run / f"fold_{fold.index}" / "result.json").read_text())
        assert (result["n_train"], result["n_val"], result["n_test"]) == (len(fold.train), len(fold.val), len(fold.test))
        predictions = pd.read_csv(run / f"fold_{fold.index}" / "predictions.csv")
        assert sorted(predictions["utterance_id"]) == sorted(table.meta["utterance_id"].iloc[fold.test])
        from safetensors.numpy import load_file

        tensors = load_file(str(run / f"fold_{fold.index}" / "checkpoint" / "model.safetensors"))
        reference = Standardizer.fit([table.features[i] for i in fold.train])
        norm = {k: v for k, v in tensors.items() if k.endswith(".mean") or k.endswith(".std")}
        assert norm, f"no normalisation tensors in the checkpoint: {sorted(tensors)[:5]}"
        for key, value in norm.items():
            np.testing.assert_allclose(value, reference.mean if key.endswith(".mean") else reference.std, atol=1e-5)
    assert folds


def test_the_command_line_and_the_pipeline_pass_data_loading_through(tmp_path, capsys):
    """`ser-dist train --data-loading stream` reaches KFoldConfig: per_speaker is then refused before any training."""
    from ser_dist.cli import main
    from ser_dist.pipeline import PipelineConfig

    directory = write_store(tmp_path / "s")
    code = main(["train", "--features-dir", str(directory), "--corpus", "EMODB", "--protocol", "speaker_kfold", "--folds", "2",
                 "--normalization", "per_speaker", "--data-loading", "stream", "--out", str(tmp_path / "runs")])
    assert code == 2
    assert "per_speaker" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("result.json"))
    assert PipelineConfig(data_loading="stream").data_loading == "stream"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_batch_moments_in_chunks_equal_the_moments_of_all_frames(tmp_path, monkeypatch, dtype):
    import ser_dist.training.streaming as streaming

    directory = write_store(tmp_path / "s", dtype=dtype)
    table = load_features(str(directory))
    frames = np.concatenate(table.features).astype(np.float64)
    monkeypatch.setattr(streaming, "MOMENT_CHUNK_FRAMES", 7)  # many chunks, the last one partial
    arrow = features_to_table(table.meta, table.features, dtype)
    got = np.asarray(streaming.batch_moments(arrow, dim=table.dim).column("moments")[0].as_py())
    assert got[0] == frames.shape[0]
    np.testing.assert_allclose(got[1 : 1 + table.dim], frames.sum(axis=0), rtol=1e-9)
    np.testing.assert_allclose(got[1 + table.dim :], np.square(frames).sum(axis=0), rtol=1e-9)
    empty = np.asarray(streaming.batch_moments(arrow.slice(0, 0), dim=table.dim).column("moments")[0].as_py())
    assert not empty.any()


def test_stream_refuses_a_pool_and_auto_keeps_small_stores_in_memory(tmp_path):
    from ser_dist.training.kfold import resolve_data_loading

    one, two = write_store(tmp_path / "a"), write_store(tmp_path / "b", seed=1)
    pooled = KFoldConfig(features_path=str(one), pool=(str(two),), out=str(tmp_path / "runs"), data_loading="stream")
    with pytest.raises(ConfigError, match="pool"):
        run_kfold(pooled)
    assert resolve_data_loading(KFoldConfig(features_path=str(one), data_loading="auto")) == ("memory", None)
    assert resolve_data_loading(KFoldConfig(features_path=str(one), data_loading="memory")) == ("memory", None)
    mode, index = resolve_data_loading(KFoldConfig(features_path=str(one), data_loading="stream"))
    assert mode == "stream" and len(index.meta) == 36
