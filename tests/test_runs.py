"""RunFolder and folds.json: round trip by utterance id, leaks refused, old runs (no folds.json) still read. No Ray."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ser_dist.errors import ConfigError, ModelLoadError
from ser_dist.runs import RunFolder, RunFolds
from ser_dist.training.splits import Fold, make_folds, protocol_description


def table(n_speakers: int = 4, per_speaker: int = 6) -> pd.DataFrame:
    rows = [{"utterance_id": f"s{s}_u{u}", "speaker": f"s{s}", "label": ["angry", "sad", "happy"][u % 3], "session": "1"}
            for s in range(n_speakers) for u in range(per_speaker)]
    return pd.DataFrame(rows)


def test_folds_round_trip_by_utterance_id(tmp_path):
    meta = table()
    folds = make_folds(meta, protocol="loso", seed=3, val_fraction=0.25)
    recorded = RunFolds.from_folds(folds, meta["utterance_id"], protocol=protocol_description("loso", len(folds), 3), seed=3,
                                   val_fraction=0.25, fingerprint="abc")
    run = RunFolder(tmp_path / "run")
    run.write_folds(recorded)
    stored = json.loads((tmp_path / "run" / "folds.json").read_text())
    assert stored["protocol"]["protocol"] == "loso" and stored["seed"] == 3 and stored["fingerprint"] == "abc"
    assert [f["test_speakers"] for f in stored["folds"]] == [[s] for s in ("s0", "s1", "s2", "s3")]

    loaded = run.read_folds()
    assert loaded == recorded
    for fold, record in zip(folds, loaded.folds, strict=True):
        assert set(record.test) == set(meta["utterance_id"].iloc[fold.test])
        assert not set(record.test) & (set(record.train) | set(record.val))
    # back to row positions of the same rows in another order
    shuffled = meta.sample(frac=1.0, random_state=0).reset_index(drop=True)
    for fold, again in zip(folds, loaded.positions(shuffled["utterance_id"]), strict=True):
        assert set(shuffled["utterance_id"].iloc[again.test]) == set(meta["utterance_id"].iloc[fold.test])
        assert set(shuffled["utterance_id"].iloc[again.train]) == set(meta["utterance_id"].iloc[fold.train])
    with pytest.raises(ConfigError, match="not in this table"):
        loaded.positions(meta["utterance_id"].iloc[1:])


def test_a_test_utterance_in_training_is_refused():
    ids = ["a", "b", "c", "d"]
    leaky = Fold(0, np.array([0, 1]), np.array([2]), np.array([2, 3]), ("x",))
    with pytest.raises(ConfigError, match="test utterance"):
        RunFolds.from_folds([leaky], ids, protocol={"protocol": "kfold"}, seed=0, val_fraction=0.2)


def test_fold_checkpoints_and_the_run_of_a_checkpoint(tmp_path):
    run = RunFolder(tmp_path / "run")
    for k in (10, 2, 0):  # numeric order, not text order
        (tmp_path / "run" / f"fold_{k}" / "checkpoint").mkdir(parents=True)
        (tmp_path / "run" / f"fold_{k}" / "checkpoint" / "checkpoint.json").write_text("{}")
    assert [name for name, _ in run.fold_checkpoints()] == ["fold_0", "fold_2", "fold_10"]
    assert RunFolder.of(tmp_path / "run" / "fold_2" / "checkpoint") == run
    assert RunFolder.of(tmp_path / "run") == run
    (tmp_path / "run" / "fold_11").mkdir()
    with pytest.raises(ModelLoadError, match="fold_11 of 4 folds have no checkpoint"):
        run.fold_checkpoints()
    assert RunFolder(tmp_path / "empty").fold_checkpoints() == []


def test_a_run_without_folds_json_still_reads(tmp_path):
    run = RunFolder(tmp_path / "old")
    run.write_predictions(0, [{"utterance_id": "007", "true": "sad", "pred": "sad"}])
    run.write_result(0, {"fold": 0, "n_test": 1})
    assert run.read_folds() is None
    assert run.test_ids(0) == {"007"}  # from predictions.csv, ids kept as text
    assert run.read_result(0)["n_test"] == 1 and run.read_run_config() == {}
    with pytest.raises(FileNotFoundError, match="summary.json"):
        run.read_summary()
