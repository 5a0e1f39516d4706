"""The layout of a k-fold run folder, in one place: whatever writes or reads a run goes through `RunFolder`.

Run folder (a local path or a URI, see ser_dist.storage)::

    <run>/run_config.json            the KFoldConfig, its fingerprint, features, labels, protocol
    <run>/folds.json                 which utterances each fold trained, validated and tested on
    <run>/fold_<k>/checkpoint/       the fold's model (ser_dist.training.checkpoint)
    <run>/fold_<k>/history.csv       one row per epoch
    <run>/fold_<k>/predictions.csv   test predictions with the validation-selected epoch's weights
    <run>/fold_<k>/predictions_last_epoch.csv   the same test part with the last epoch's weights
    <run>/fold_<k>/result.json       the fold's scores; written last, it marks the fold finished
    <run>/summary.json               pooled scores of the run
    <run>/report.json, report.xlsx, *.png        the run's report (ser_dist.reporting)
    <run>/full/checkpoint/           optional: one model of the whole corpus (cross-corpus mode `single`)
    <run>/cross_<TARGET>[...]/       cross-corpus evaluations of the run (ser_dist.evaluation)
    <run>/pipeline.json              what the pipeline job did (ser_dist.pipeline)

`folds.json` records the splits by utterance id, with the protocol, seed and test speakers, so the
sweep, the evaluator and the benches read a run's folds instead of making them again. Runs from before
it existed have none: everything else still loads, and `read_folds()` returns None.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ser_dist.errors import ConfigError, ModelLoadError
from ser_dist.storage import Location, as_location

if TYPE_CHECKING:
    from pathlib import Path

    from ser_dist.training.splits import Fold

RUN_CONFIG = "run_config.json"
FOLDS = "folds.json"
SUMMARY = "summary.json"
PIPELINE = "pipeline.json"
FOLD_PREFIX = "fold_"
CHECKPOINT = "checkpoint"
HISTORY = "history.csv"
PREDICTIONS = "predictions.csv"
PREDICTIONS_LAST_EPOCH = "predictions_last_epoch.csv"
RESULT = "result.json"
FULL_MODEL = "full"  # <run>/full/checkpoint: one model trained on the whole corpus
REPORT_PATTERNS = ("report.*", "*.png")
FOLDS_FORMAT = 1


@dataclass(frozen=True)
class FoldRecord:
    """One fold by utterance id: what it trained on, validated on (epoch selection) and tested on."""

    index: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    test_speakers: tuple[str, ...] = ()

    def __post_init__(self):
        leaked = sorted(set(self.test) & (set(self.train) | set(self.val)))
        if leaked:
            raise ConfigError(f"fold {self.index}: {len(leaked)} test utterance(s) also in its train/validation part, e.g. {leaked[:3]}")

    def to_dict(self) -> dict:
        return {"fold": self.index, "test_speakers": list(self.test_speakers), "n_train": len(self.train), "n_val": len(self.val),
                "n_test": len(self.test), "train": list(self.train), "val": list(self.val), "test": list(self.test)}

    @classmethod
    def from_dict(cls, data: dict) -> FoldRecord:
        return cls(int(data["fold"]), tuple(map(str, data["train"])), tuple(map(str, data["val"])), tuple(map(str, data["test"])),
                   tuple(map(str, data.get("test_speakers", ()))))


@dataclass(frozen=True)
class RunFolds:
    """The folds of a run (folds.json): splits by utterance id, the protocol and seed that made them."""

    protocol: dict  # protocol_description(...): protocol, speaker_independent, n_folds, seed, description
    seed: int
    val_fraction: float
    folds: tuple[FoldRecord, ...]
    fingerprint: str | None = None  # the run configuration's fingerprint (KFoldConfig.fingerprint)
    extra: dict = field(default_factory=dict)  # anything a writer adds (e.g. the sweep's inner folds)

    @classmethod
    def from_folds(cls, folds: Iterable[Fold], utterance_ids: Sequence[str], *, protocol: dict, seed: int, val_fraction: float,
                   fingerprint: str | None = None, extra: dict | None = None) -> RunFolds:
        """Row-position folds (ser_dist.training.splits.Fold) of a table whose rows are `utterance_ids`."""
        ids = np.asarray([str(u) for u in utterance_ids], dtype=object)
        records = tuple(
            FoldRecord(f.index, tuple(ids[f.train]), tuple(ids[f.val]), tuple(ids[f.test]), tuple(map(str, f.test_speakers)))
            for f in folds
        )
        return cls(dict(protocol), int(seed), float(val_fraction), records, fingerprint, dict(extra or {}))

    def fold(self, index: int) -> FoldRecord:
        for record in self.folds:
            if record.index == index:
                return record
        raise KeyError(f"no fold {index}; the run has folds {[f.index for f in self.folds]}")

    def positions(self, utterance_ids: Sequence[str]) -> list[Fold]:
        """The folds as row positions into a table whose rows are `utterance_ids` (e.g. FeatureTable.meta)."""
        from ser_dist.training.splits import Fold

        index_of = {str(u): i for i, u in enumerate(utterance_ids)}
        missing = sorted({u for f in self.folds for u in (*f.train, *f.val, *f.test)} - set(index_of))
        if missing:
            raise ConfigError(f"{len(missing)} utterance(s) of the recorded folds are not in this table, e.g. {missing[:3]}")

        def rows(part: tuple[str, ...]) -> np.ndarray:
            return np.array([index_of[u] for u in part], dtype=np.int64)

        return [Fold(f.index, rows(f.train), rows(f.val), rows(f.test), f.test_speakers) for f in self.folds]

    def to_dict(self) -> dict:
        return {"format": FOLDS_FORMAT, "protocol": self.protocol, "seed": self.seed, "val_fraction": self.val_fraction,
                "fingerprint": self.fingerprint, **({"extra": self.extra} if self.extra else {}),
                "folds": [f.to_dict() for f in self.folds]}

    @classmethod
    def from_dict(cls, data: dict) -> RunFolds:
        if int(data.get("format", 0)) != FOLDS_FORMAT:
            raise ConfigError(f"folds.json format {data.get('format')!r} is not one this version reads ({FOLDS_FORMAT})")
        return cls(dict(data.get("protocol") or {}), int(data.get("seed", 0)), float(data.get("val_fraction", 0.0)),
                   tuple(FoldRecord.from_dict(f) for f in data["folds"]), data.get("fingerprint"), dict(data.get("extra") or {}))

    def save(self, location: Location | str | os.PathLike) -> None:
        as_location(location).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, location: Location | str | os.PathLike) -> RunFolds:
        return cls.from_dict(json.loads(as_location(location).read_text()))


def _fold_index(name: str) -> tuple[int, str]:
    suffix = name.removeprefix(FOLD_PREFIX)
    return (int(suffix), "") if suffix.isdigit() else (1 << 30, suffix)


class RunFolder:
    """One run folder: where each of its files lives, and how each is written and read."""

    def __init__(self, location: Location | str | os.PathLike):
        self.location = as_location(location)

    @classmethod
    def of(cls, path: Location | str | os.PathLike) -> RunFolder | None:
        """The run folder of a run folder, or of a checkpoint folder inside it (<run>/<fold_k or full>/checkpoint)."""
        location = as_location(path)
        for candidate in (location, location.parent, location.parent.parent):
            run = cls(candidate)
            if run.is_run():
                return run
        return None

    def __repr__(self) -> str:
        return f"RunFolder({self.location.redacted()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunFolder) and self.location == other.location

    def __hash__(self) -> int:
        return hash(self.location)

    @property
    def name(self) -> str:
        return self.location.name

    @property
    def local(self) -> Path:
        """The folder on the local disk (TypeError for a remote run: stage it with StagedDirectory first)."""
        return self.location.local_path

    def is_run(self) -> bool:
        """True when the folder holds a run's files (config, folds, summary) or fold_<k>/ folders."""
        return any((self.location / f).is_file() for f in (RUN_CONFIG, SUMMARY, FOLDS)) or bool(self.fold_dirs())

    # -- where each file lives ----------------------------------------------------------------
    @property
    def run_config_file(self) -> Location:
        return self.location / RUN_CONFIG

    @property
    def folds_file(self) -> Location:
        return self.location / FOLDS

    @property
    def summary_file(self) -> Location:
        return self.location / SUMMARY

    @property
    def pipeline_file(self) -> Location:
        return self.location / PIPELINE

    def fold_dir(self, index: int) -> Location:
        return self.location / f"{FOLD_PREFIX}{index}"

    def checkpoint_dir(self, index: int) -> Location:
        return self.fold_dir(index) / CHECKPOINT

    @property
    def full_checkpoint_dir(self) -> Location:
        return self.location / FULL_MODEL / CHECKPOINT

    def history_file(self, index: int) -> Location:
        return self.fold_dir(index) / HISTORY

    def predictions_file(self, index: int, *, last_epoch: bool = False) -> Location:
        return self.fold_dir(index) / (PREDICTIONS_LAST_EPOCH if last_epoch else PREDICTIONS)

    def result_file(self, index: int) -> Location:
        return self.fold_dir(index) / RESULT

    def evaluation_dir(self, name: str) -> Location:
        """A folder of an evaluation of this run (e.g. cross_RAVDESS)."""
        return self.location / name

    def report_files(self) -> list[Location]:
        return [p for pattern in REPORT_PATTERNS for p in self.location.glob(pattern)]

    # -- listing ------------------------------------------------------------------------------
    def fold_dirs(self) -> list[Location]:
        """fold_<k>/ folders, in fold order."""
        dirs = [p for p in self.location.iterdir() if p.name.startswith(FOLD_PREFIX) and p.is_dir()]
        return sorted(dirs, key=lambda p: _fold_index(p.name))

    def fold_checkpoints(self) -> list[tuple[str, Location]]:
        """(fold_<k>, its checkpoint folder) for every fold, in fold order; [] when there are no folds.

        Raises ModelLoadError naming the folds whose checkpoint is missing (a run not finished).
        """
        from ser_dist.training.checkpoint import META_FILE

        dirs = self.fold_dirs()
        unfinished = [d.name for d in dirs if not (d / CHECKPOINT / META_FILE).is_file()]
        if unfinished:
            raise ModelLoadError(
                f"{self.location.redacted()}: {', '.join(unfinished)} of {len(dirs)} folds have no checkpoint (run not finished?); "
                f"finish the run or point at one fold's checkpoint folder"
            )
        return [(d.name, d / CHECKPOINT) for d in dirs]

    def fold_finished(self, index: int) -> bool:
        return self.result_file(index).is_file()

    # -- reading ------------------------------------------------------------------------------
    def _json(self, location: Location, *, hint: str) -> dict:
        if not location.is_file():
            raise FileNotFoundError(f"{location.redacted()} is missing: {hint}")
        return json.loads(location.read_text())

    def read_run_config(self) -> dict:
        """run_config.json, or {} for a run without one."""
        return json.loads(self.run_config_file.read_text()) if self.run_config_file.is_file() else {}

    def has_summary(self) -> bool:
        return self.summary_file.is_file()

    def read_summary(self) -> dict:
        return self._json(self.summary_file, hint="the run has not finished; run_kfold writes it after the last fold")

    def read_folds(self) -> RunFolds | None:
        """folds.json, or None for a run made before runs recorded their folds."""
        return RunFolds.load(self.folds_file) if self.folds_file.is_file() else None

    def read_result(self, index: int) -> dict:
        return self._json(self.result_file(index), hint="the fold has not finished; rerun the same run to train it")

    def read_history(self, index: int) -> pd.DataFrame | None:
        path = self.history_file(index)
        return pd.read_csv(io.BytesIO(path.read_bytes())) if path.is_file() else None

    def read_predictions(self, index: int, *, last_epoch: bool = False) -> pd.DataFrame:
        path = self.predictions_file(index, last_epoch=last_epoch)
        if not path.is_file():
            raise FileNotFoundError(f"{path.redacted()} is missing: the fold has not finished")
        return pd.read_csv(io.BytesIO(path.read_bytes()), dtype={"utterance_id": str})

    def test_ids(self, index: int) -> set[str]:
        """The utterances fold `index` tested: from folds.json, else (older runs) its predictions.csv."""
        folds = self.read_folds()
        if folds is not None:
            return set(folds.fold(index).test)
        return set(self.read_predictions(index)["utterance_id"])

    # -- writing ------------------------------------------------------------------------------
    def _write_json(self, location: Location, data: dict) -> None:
        location.write_text(json.dumps(data, indent=2, default=str))

    def write_run_config(self, data: dict) -> None:
        self._write_json(self.run_config_file, data)

    def write_folds(self, folds: RunFolds) -> None:
        folds.save(self.folds_file)

    def write_history(self, index: int, rows: list[dict] | pd.DataFrame) -> None:
        self.history_file(index).write_text(pd.DataFrame(rows).to_csv(index=False))

    def write_predictions(self, index: int, rows: list[dict] | pd.DataFrame, *, last_epoch: bool = False) -> None:
        self.predictions_file(index, last_epoch=last_epoch).write_text(pd.DataFrame(rows).to_csv(index=False))

    def write_result(self, index: int, result: dict) -> None:
        """Written last of a fold's files: its presence marks the fold finished."""
        self._write_json(self.result_file(index), result)

    def write_summary(self, summary: dict) -> None:
        self._write_json(self.summary_file, summary)

    def write_pipeline(self, outputs: dict) -> None:
        self._write_json(self.pipeline_file, outputs)
