"""Storage locations: local paths, file:// URIs and s3:// URIs (a moto S3 server on 127.0.0.1).

The S3 tests run the real code paths against an S3 API: Ray Data workers write feature parts to the
bucket, k-fold and sweep runs keep their files and Ray Train/Tune storage there, a rerun resumes from
what the bucket holds, and the cross-corpus evaluator reads a run from it.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest

from ser_dist.errors import ConfigError, FeatureStoreError
from ser_dist.storage import Location, StagedDirectory, as_location, is_uri

BUCKET = "ser-dist-test"


# ------------------------------------------------------------------------------- Location basics


def test_local_paths_and_file_uris_name_the_same_place(tmp_path):
    local = as_location(tmp_path / "a")
    assert local.is_local and local.scheme == "" and local == tmp_path / "a" and local == str(tmp_path / "a")
    assert as_location(f"file://{tmp_path}/a") == local and as_location(f"file://{tmp_path}/a").is_local
    child = local / "b" / "c.txt"
    assert child.name == "c.txt" and child.parent.parent == local and child.parents[1] == local
    child.write_text("hello")
    assert (tmp_path / "a" / "b" / "c.txt").read_text() == "hello" and child.is_file() and child.parent.is_dir()
    assert [p.name for p in (local / "b").glob("c*")] == ["c.txt"] and not (local / "nothing").exists()
    assert not list((tmp_path / "a" / "b").glob(".tmp-*"))  # the temp name was renamed away


def test_uris_keep_their_options_and_hide_credentials():
    loc = Location.parse("s3://key:secret@bucket/features?region=eu-west-1&scheme=http")
    assert not loc.is_local and loc.scheme == "s3" and loc.path == "bucket/features"
    child = loc / "LOGMEL" / "EMODB_LOGMEL"
    assert child.uri == "s3://key:secret@bucket/features/LOGMEL/EMODB_LOGMEL?region=eu-west-1&scheme=http"
    assert "secret" not in child.redacted() and child.redacted().startswith("s3://***@bucket/")
    assert child.parent.parent == loc and child.name == "EMODB_LOGMEL"
    assert pickle.loads(pickle.dumps(child)) == child
    assert is_uri("gs://b/x") and not is_uri("data/features") and not is_uri("/abs/path")
    with pytest.raises(TypeError, match="not on a local filesystem"):
        Path(child)
    with pytest.raises(ConfigError, match="no bucket"):
        Location.parse("s3://")


# ------------------------------------------------------------------------------- an S3 server


@pytest.fixture(scope="module")
def s3_root():
    """`s3://…` root URI on a moto S3 server in this process (Ray workers reach it over 127.0.0.1)."""
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    root = f"s3://testing:testing@{BUCKET}/root?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    filesystem, _ = pafs.FileSystem.from_uri(root + "&allow_bucket_creation=true")
    filesystem.create_dir(BUCKET)
    yield root
    server.stop()


def s3(root: str, *parts: str) -> Location:
    location = as_location(root)
    for part in parts:
        location = location / part
    return location


def test_staged_directory_mirrors_a_remote_folder(s3_root):
    target = s3(s3_root, "staged")
    with StagedDirectory(target, exclude=("ray",)) as staged:
        (staged.local / "fold_0").mkdir()
        (staged.local / "fold_0" / "result.json").write_text('{"ok": 1}')
        (staged.local / "ray").mkdir()
        (staged.local / "ray" / "skip.txt").write_text("Ray writes here itself")
        staged.sync()
        assert json.loads((target / "fold_0" / "result.json").read_text()) == {"ok": 1}
        local = staged.local
    assert not local.exists()  # the mirror is removed
    assert not (target / "ray" / "skip.txt").exists()
    with StagedDirectory(target) as again:  # a rerun sees what the store holds
        assert json.loads((again.local / "fold_0" / "result.json").read_text()) == {"ok": 1}


def test_feature_store_round_trip_on_s3(s3_root):
    from ser_dist.features.config import FeatureConfig
    from ser_dist.features.store import (
        features_to_table,
        load_features,
        part_files,
        resolve_version,
        stored_utterance_ids,
        version_dir,
        write_metadata,
        write_part_atomically,
    )

    config = FeatureConfig()
    directory = version_dir(s3(s3_root, "store"), config, "EMODB")
    rows = pd.DataFrame({"utterance_id": ["u2", "u1"], "corpus": "EMODB", "speaker": ["s1", "s2"], "gender": "f",
                         "session": "", "label": ["angry", "sad"]})
    matrices = [np.arange(6, dtype=np.float32).reshape(3, 2), np.ones((2, 2), np.float32)]
    write_part_atomically(directory, features_to_table(rows, matrices, "float32"))
    with pytest.raises(FeatureStoreError, match="no complete feature version"):
        resolve_version(directory.parent)
    write_metadata(directory, {"status": "complete", "completed_at": "now"})
    assert resolve_version(directory.parent) == directory and len(part_files(directory)) == 1
    assert stored_utterance_ids(directory) == {"u1", "u2"}
    table = load_features(directory.parent.uri)
    assert table.meta["utterance_id"].tolist() == ["u1", "u2"] and table.path == directory
    np.testing.assert_array_equal(table.features[1], matrices[0])


# ------------------------------------------------------------------------------- on a local Ray cluster


@pytest.fixture(scope="module")
def emodb_subset(emodb_root):
    from ser_dist.corpora import prepare

    manifest = prepare("EMODB", emodb_root)
    speakers = ["EMODB_03", "EMODB_08", "EMODB_11", "EMODB_14"]
    return manifest[manifest["speaker"].isin(speakers)].groupby(["speaker", "label"]).head(1).reset_index(drop=True)


@pytest.mark.ray
def test_extraction_training_and_evaluation_on_s3(ray_cluster, s3_root, emodb_subset):
    from ser_dist.evaluation.cross_corpus import EvaluationConfig, evaluate_cross_corpus
    from ser_dist.features.config import FeatureConfig
    from ser_dist.features.extract import ExtractionOptions, exclusive_writer, extract_features
    from ser_dist.features.store import load_features
    from ser_dist.training.config import AugmentOptions, ModelOptions, TrainConfig
    from ser_dist.training.kfold import KFoldConfig, run_kfold

    features_root = s3(s3_root, "features")
    half = emodb_subset.iloc[: len(emodb_subset) // 2]
    first = extract_features(half, FeatureConfig(), features_root, corpus="EMODB", options=ExtractionOptions(num_workers=2, batch_size=4))
    assert not first.directory.is_local and first.n_extracted == len(half)
    # the rest on a rerun: what the bucket holds is kept, only the missing utterances are extracted
    second = extract_features(emodb_subset, FeatureConfig(), features_root, corpus="EMODB", options=ExtractionOptions(num_workers=2, batch_size=4))
    assert second.n_already_done == len(half) and second.n_extracted == len(emodb_subset) - len(half)
    assert not (second.directory / ".lease").exists()  # the writer's lease is released
    (second.directory / ".lease").write_text("pid 1 on another-node")
    with pytest.raises(FeatureStoreError, match="another extraction"), exclusive_writer(second.directory):
        pass
    (second.directory / ".lease").unlink()
    table = load_features(second.directory)
    assert len(table.meta) == len(emodb_subset) and table.dim == 128

    train = TrainConfig(epochs=2, batch_size=8, warmup_epochs=1, patience=10, class_weights=False,
                        model=ModelOptions(width=8, n_blocks=2, time_pool=4, dropout=0.0, input_dropout=0.0),
                        augment=AugmentOptions(time_masks=0, feature_masks=0, mixup_alpha=0.0))
    runs = s3(s3_root, "runs")
    config = KFoldConfig(features_path=second.directory.uri, protocol="speaker_kfold", n_folds=2, out=runs.uri, name="run", train=train)
    summary = run_kfold(config)
    run = runs / "run"
    assert summary["run"] == "run" and "secret" not in summary["location"] and summary["n_test"] == len(emodb_subset)
    for fold in (0, 1):
        assert (run / f"fold_{fold}" / "result.json").is_file() and (run / f"fold_{fold}" / "checkpoint" / "model.safetensors").is_file()
        assert (run / "ray" / f"fold_{fold}").is_dir()  # Ray Train's own storage_path followed the URI
    assert (run / "summary.json").is_file() and (run / "report.xlsx").is_file() and (run / "report.json").is_file()
    stored = json.loads((run / "summary.json").read_text())
    assert stored["uar"] == summary["uar"]

    again = run_kfold(config)  # a rerun fetches the finished folds from the bucket and trains nothing
    assert again["folds_trained_this_run"] == 0 and again["uar"] == summary["uar"]

    report = evaluate_cross_corpus(EvaluationConfig(source_run=run.uri, target_features=second.directory.uri, out=(runs / "eval").uri))
    assert report["summary"]["n"] == len(emodb_subset)
    assert json.loads((runs / "eval" / "report.json").read_text())["summary"]["uar"] == report["summary"]["uar"]
    assert (runs / "eval" / "report.xlsx").is_file()


@pytest.mark.ray
def test_sweep_state_and_results_live_on_s3(ray_cluster, s3_root, emodb_subset):
    pytest.importorskip("optuna")
    from ser_dist.audio import load_audio
    from ser_dist.features.compute import FeatureComputer
    from ser_dist.features.config import FeatureConfig
    from ser_dist.features.store import features_to_table, version_dir, write_metadata, write_part_atomically
    from ser_dist.training.config import AugmentOptions, ModelOptions, TrainConfig
    from ser_dist.tuning import SearchSpace, TuneConfig, run_sweep

    config = FeatureConfig()
    directory = version_dir(s3(s3_root, "sweep-features"), config, "EMODB")
    matrices = FeatureComputer(config).compute([load_audio(p) for p in emodb_subset["path"]])
    write_part_atomically(directory, features_to_table(emodb_subset, matrices, "float32"))
    write_metadata(directory, {"status": "complete", "completed_at": "now", "feature_config": config.to_dict(), "dataset_name": "EMODB_LOGMEL"})
    base = TrainConfig(batch_size=8, warmup_epochs=1, patience=10, class_weights=False,
                       model=ModelOptions(width=8, n_blocks=2, time_pool=4, dropout=0.0, input_dropout=0.0),
                       augment=AugmentOptions(time_masks=0, feature_masks=0, mixup_alpha=0.0))
    space = SearchSpace(lr=(1e-3, 1e-2), weight_decay=(1e-4, 1e-2), dropout=(0.0, 0.1), width=(8,), n_blocks=(2,),
                        batch_size=(8,), label_smoothing=(0.0, 0.1))
    runs = s3(s3_root, "sweeps")
    tune = TuneConfig(features_path=directory.uri, protocol="loso", inner_folds=1, outer_folds=(0,), num_samples=2, epochs=1,
                      grace_period=1, space=space, base=base, out=runs.uri, name="sweep", final_run=False)  # nested, outer fold 0
    summary = run_sweep(tune)
    sweep = runs / "sweep"
    results = pd.read_csv(io.BytesIO((sweep / "tune_results.csv").read_bytes()))
    assert len(results) == 2 and (results["status"] != "error").all()
    assert (sweep / "tune_summary.json").is_file() and (sweep / "sweep_config.json").is_file()
    assert (sweep / "tune" / "outer_fold_0").is_dir()  # Ray Tune's experiment state followed the URI
    assert (sweep / "outer_fold_0" / "choice.json").is_file() and (sweep / "folds.json").is_file()
    again = run_sweep(tune)  # restored from the bucket: the same trials, none new
    rerun = pd.read_csv(io.BytesIO((sweep / "tune_results.csv").read_bytes()))
    assert set(rerun["trial_id"]) == set(results["trial_id"]) and again["best_val_uar"] == summary["best_val_uar"]
