"""Resuming a fold from its last checkpoint (ser_dist.training.resume): no Ray, a few seconds.

A fold stopped after epoch k and continued from the state folder it saved must end exactly where the
uninterrupted fold ends: the same history, the same selected epoch and weights, the same test predictions.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ser_dist.errors import ModelLoadError
from ser_dist.training.config import AugmentOptions, ModelOptions, TrainConfig
from ser_dist.training.data import Standardizer
from ser_dist.training.loop import FoldData
from ser_dist.training.resume import (
    ResumeRecord,
    fit_fold_resumable,
    is_resume_checkpoint,
    load_trainer_state,
    save_trainer_state,
    usable_resume_state,
)

EPOCHS = 6


def synthetic_fold(seed: int = 0) -> FoldData:
    """3 classes, 36 utterances of 20-60 frames x 8 dims; each class shifts a different dimension."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 12)
    features = []
    for label in y:
        matrix = rng.standard_normal((int(rng.integers(20, 60)), 8)).astype(np.float32)
        matrix[:, label] += 1.5
        features.append(matrix)
    order = rng.permutation(len(y))
    train, val, test = order[:24], order[24:30], order[30:]
    return FoldData(["a", "b", "c"], features, y, [f"u{i}" for i in range(len(y))], train, val, test,
                    Standardizer.fit([features[i] for i in train]))


def noisy_config(**changes) -> TrainConfig:
    """Every random part on: dropout, crops, SpecAugment masks, mixup, gaussian noise; a warmup-cosine schedule."""
    base = dict(epochs=EPOCHS, batch_size=8, lr=5e-3, warmup_epochs=2, patience=None, seed=3,
                model=ModelOptions(width=8, n_blocks=2, time_pool=2, dropout=0.2, input_dropout=0.1),
                augment=AugmentOptions(time_masks=1, feature_masks=1, mixup_alpha=0.4, noise_std=0.05, max_frames=30))
    return TrainConfig(**(base | changes))


def without_timings(metrics: dict) -> dict:
    """An epoch's metrics less its wall-clock fields, which no two runs share."""
    return {k: v for k, v in metrics.items() if not k.endswith("_seconds")}


def run(data, config, *, resume_from=None, keep: Path | None = None, every: int = 1, fingerprint: str = "fp"):
    """One fit; with `keep`, copies each reported state folder to keep/epoch_<n>."""
    def report(metrics, folder):
        if folder is not None and keep is not None:
            shutil.copytree(folder, keep / f"epoch_{metrics['epoch']}")

    record = ResumeRecord(fold=0, fingerprint=fingerprint, world_size=1)
    return fit_fold_resumable(data, config, record=record, node_id="node-a" if resume_from is None else "node-b",
                              resume_from=resume_from, checkpoint_every=every, report=report)


def test_a_resumed_fold_ends_exactly_where_an_uninterrupted_one_does(tmp_path):
    data, config = synthetic_fold(), noisy_config()
    full, full_record = run(data, config, keep=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"epoch_{e}" for e in range(1, EPOCHS)]  # none after the last epoch
    assert full_record.resumed_from_epochs == [] and full_record.attempts == [{"node_id": "node-a", "start_epoch": 0}]

    stop = 3
    state = usable_resume_state(tmp_path / f"epoch_{stop}", fold=0, fingerprint="fp", rank=0, world_size=1)
    assert state is not None and state[0]["epoch"] == stop
    torch.manual_seed(1234)  # the process's generators moved on since; the state file must put them back
    np.random.seed(99)
    resumed, record = run(data, config, resume_from=state)
    assert record.resumed_from_epochs == [stop]
    assert record.summary()["worker_nodes"] == ["node-a", "node-b"]

    assert len(resumed.history) == len(full.history) == EPOCHS
    for a, b in zip(full.history, resumed.history, strict=True):
        assert without_timings(a) == pytest.approx(without_timings(b), rel=0, abs=0), (a, b)
    assert (resumed.best_epoch, resumed.best_val_uar, resumed.last_epoch) == (full.best_epoch, full.best_val_uar, full.last_epoch)
    assert full.best_state.keys() == resumed.best_state.keys()
    for key in full.best_state:
        assert torch.equal(full.best_state[key], resumed.best_state[key]), key
    assert resumed.test_predictions == full.test_predictions
    assert resumed.last_epoch_predictions == full.last_epoch_predictions


def test_a_fold_that_did_not_start_from_the_state_differs(tmp_path):
    """The check above can fail: restarting at epoch 0 or skipping the optimiser state changes the result."""
    data, config = synthetic_fold(), noisy_config()
    full, _ = run(data, config, keep=tmp_path)
    state, previous = load_trainer_state(tmp_path / "epoch_3")
    state["optimizer"]["state"] = {}  # Adam moments lost
    resumed, _ = run(data, config, resume_from=(state, previous))
    assert resumed.history[-1]["train_loss"] != full.history[-1]["train_loss"]


def test_checkpoint_every_n_epochs_and_zero(tmp_path):
    data, config = synthetic_fold(), noisy_config(epochs=5)
    run(data, config, keep=tmp_path / "two", every=2)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["epoch_2", "epoch_4"]
    run(data, config, keep=tmp_path / "none", every=0)
    assert not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match="checkpoint_every must be >= 0"):
        run(data, config, every=-1)


def test_state_of_another_configuration_or_fold_is_not_resumed(tmp_path):
    data, config = synthetic_fold(), noisy_config(epochs=3)
    run(data, config, keep=tmp_path, fingerprint="old")
    folder = tmp_path / "epoch_2"
    assert is_resume_checkpoint(folder) and not is_resume_checkpoint(folder, rank=1)
    assert usable_resume_state(folder, fold=0, fingerprint="old", rank=0, world_size=1) is not None
    assert usable_resume_state(folder, fold=0, fingerprint="new", rank=0, world_size=1) is None
    assert usable_resume_state(folder, fold=1, fingerprint="old", rank=0, world_size=1) is None
    assert usable_resume_state(folder, fold=0, fingerprint="old", rank=0, world_size=2) is None
    assert usable_resume_state(None, fold=0, fingerprint="old", rank=0, world_size=1) is None
    assert usable_resume_state(tmp_path / "nothing", fold=0, fingerprint="old", rank=0, world_size=1) is None


def test_state_files_round_trip_nested_values_without_pickles(tmp_path):
    state = {"epoch": 2, "betas": (0.9, 0.99), "by_id": {0: {"step": torch.tensor(3.0)}, 1: {}}, "nan": float("nan"),
             "none": None, "list": [torch.ones(2, dtype=torch.int64), "x"], "rng": {"state": {"state": 2**100 + 7, "inc": 5}}}
    record = ResumeRecord(fold=1, fingerprint="f", world_size=1, attempts=[{"node_id": "n", "start_epoch": 0}])
    save_trainer_state(tmp_path, state, record)
    assert {p.name for p in tmp_path.iterdir()} == {"trainer_rank0.safetensors", "trainer_rank0.json"}
    loaded, loaded_record = load_trainer_state(tmp_path)
    assert loaded_record == record
    assert loaded["betas"] == (0.9, 0.99) and loaded["epoch"] == 2 and loaded["none"] is None and np.isnan(loaded["nan"])
    assert set(loaded["by_id"]) == {0, 1} and torch.equal(loaded["by_id"][0]["step"], torch.tensor(3.0))
    assert torch.equal(loaded["list"][0], torch.ones(2, dtype=torch.int64)) and loaded["list"][1] == "x"
    assert loaded["rng"]["state"]["state"] == 2**100 + 7
    with pytest.raises(TypeError, match="set"):
        save_trainer_state(tmp_path / "bad", {"s": {1, 2}}, record)
    with pytest.raises(ModelLoadError, match="missing trainer_rank1"):
        load_trainer_state(tmp_path, rank=1)
