"""Hyperparameter sweep on Ray Tune: Optuna proposes, ASHA stops poor trials early, trials run side by side.

Two modes (`TuneConfig.mode`):

nested (default): one search per outer fold, inside that fold's training side (scikit-learn's nested CV)
    The outer folds are made exactly as `ser_dist.training.kfold.run_kfold` makes them (same protocol,
    n_folds, seed, val_fraction, duplicate groups). For outer fold k, only its training side (training +
    validation parts) is put in the object store; inner folds of the same protocol family are made from
    those rows alone (`make_folds(side, protocol=..., val_fraction=0)`: LOSO/LOSESSO one per speaker/
    session, the k-fold protocols max(2, inner_folds) folds) and the first `inner_folds` of them are used:
    a trial fits each inner fold's training part and is scored on its held-out part. Outer fold k's
    config is its best trial's; the final k-fold run then trains and tests every outer fold once with its
    own config (`KFoldConfig.fold_train`). No trial of outer fold k ever receives a test utterance of
    fold k, so every test speaker is unseen by its fold's sweep (`unseen_by_sweep`). `outer_folds` limits
    the search to some outer folds for quick runs: the others train with `base` and are reported as such.

shared: one search for every fold (cheaper, not nested)
    The trials fit the training parts of the first `inner_folds` outer folds and are scored on their
    validation parts; the best config then trains every outer fold. Those training sides hold other
    folds' test speakers, so the reports list which test speakers and utterances the sweep read
    (`test_read`, `unseen_by_sweep`) and pool the untouched folds' test scores apart.

Objective and steps
    A trial's score after epoch e (`training_iteration` e) is the mean over its inner folds of the best
    validation UAR so far (the epoch a final run would select). It never decreases, and ASHA compares
    trials at equal epochs. The trial holds one `FoldTrainer` per inner fold and steps them in one
    thread: epoch e of every inner fold, then one `tune.report`; a fold stopped by `patience` keeps its
    best value. Memory: a trial holds each inner fold's normalised copy of its rows at once.

Resume
    Trial state lives in `<out>/<name>/tune/<experiment>`; a rerun with the same name skips the outer
    folds whose search finished (their `choice.json`), restores an interrupted one (`Tuner.restore`:
    finished trials kept, unfinished ones start again from epoch 1, the search algorithm continues), and
    the final run skips its finished folds. A rerun with another configuration under the same name is
    refused.

Run folder::

    <out>/<name>/sweep_config.json   the TuneConfig and its fingerprint
    <out>/<name>/folds.json          the outer folds by utterance id (ser_dist.runs.RunFolds); `extra` says what
                                     the sweep read (nested: swept_folds and their inner folds; shared: inner_folds)
    <out>/<name>/tune/<experiment>/  Ray Tune's experiment state (restorable): outer_fold_<k> (nested) or sweep (shared)
    <out>/<name>/outer_fold_<k>/     nested: tune_results.csv and choice.json (the fold's chosen config)
    <out>/<name>/tune_results.csv    one row per trial (nested: with its outer_fold): searched values -> val_uar, status
    <out>/<name>/tune_summary.json   chosen config(s), objective, what the sweep read, wall time, final run scores
    <out>/<name>_final/              the k-fold run of the chosen config(s) (`run_kfold`), when final_run; its
                                     summary.json gets a `sweep` section (per-fold configs, unseen_by_sweep)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ser_dist.errors import ConfigError, FeatureStoreError
from ser_dist.features.store import FeatureTable, load_features
from ser_dist.runs import FOLDS, RunFolder, RunFolds
from ser_dist.storage import Location, StagedDirectory, as_location
from ser_dist.training.config import TrainConfig
from ser_dist.training.kfold import KFoldConfig, apply_train_overrides, duplicate_groups
from ser_dist.training.splits import Fold, Protocol, make_folds, protocol_description

logger = logging.getLogger(__name__)

METRIC = "val_uar"
MODES = ("nested", "shared")
SHARED_EXPERIMENT = "sweep"  # Ray Tune experiment folder inside <out>/<name>/tune (shared mode)
TRAIN_KEYS = ("lr", "weight_decay", "label_smoothing", "batch_size", "normalization")  # searched TrainConfig fields
NORMALIZATIONS = ("train_global", "per_speaker")
MODEL_KEYS = ("dropout", "width", "n_blocks")  # searched ModelOptions fields


def outer_experiment(index: int) -> str:
    """Ray Tune experiment (and run-folder subfolder) of outer fold `index`'s search (nested mode)."""
    return f"outer_fold_{index}"

@dataclass(frozen=True)
class SearchSpace:
    """Ranges are (low, high); equal bounds fix the value. Tuples of options are categorical choices."""

    lr: tuple[float, float] = (1e-4, 5e-3)  # log-uniform
    weight_decay: tuple[float, float] = (1e-4, 1e-1)  # log-uniform
    dropout: tuple[float, float] = (0.0, 0.4)  # uniform
    width: tuple[int, ...] = (32, 64, 96)
    n_blocks: tuple[int, ...] = (4, 6, 8)
    batch_size: tuple[int, ...] = (16, 32)
    label_smoothing: tuple[float, float] = (0.0, 0.2)  # uniform
    # Feature normalisation: train_global (training-part statistics) and/or per_speaker (each speaker's
    # own statistics, test speakers' unlabelled audio included: transductive, say so when reporting).
    normalization: tuple[str, ...] = ("train_global",)
    # Other stored feature datasets of the same utterances; the sweep then also chooses among
    # (TuneConfig.features_path, *features).
    features: tuple[str, ...] = ()

    def __post_init__(self):
        for name in ("lr", "weight_decay", "dropout", "label_smoothing"):
            bounds = getattr(self, name)
            if len(bounds) != 2 or not bounds[0] <= bounds[1]:
                raise ConfigError(f"search space {name} must be (low, high) with low <= high, got {bounds!r}")
        for name in ("lr", "weight_decay"):
            if getattr(self, name)[0] <= 0:
                raise ConfigError(f"search space {name} is log-uniform; its low bound must be > 0, got {getattr(self, name)!r}")
        if not (0 <= self.label_smoothing[0] and self.label_smoothing[1] < 1):
            raise ConfigError(f"search space label_smoothing must lie in [0, 1), got {self.label_smoothing!r}")
        unknown = [n for n in self.normalization if n not in NORMALIZATIONS]
        if not self.normalization or unknown:
            raise ConfigError(f"search space normalization takes {list(NORMALIZATIONS)}, got {list(self.normalization)!r}")
        for name in ("width", "n_blocks", "batch_size"):
            options = getattr(self, name)
            if not options or any(int(v) < 1 for v in options):
                raise ConfigError(f"search space {name} needs at least one option, each >= 1; got {options!r}")

    def param_space(self, feature_paths: tuple[str, ...]) -> dict:
        """Ray Tune domains (constants where a range or a choice has one value)."""
        from ray import tune

        def span(bounds: tuple[float, float], *, log: bool):
            low, high = float(bounds[0]), float(bounds[1])
            if low == high:
                return low
            return tune.loguniform(low, high) if log else tune.uniform(low, high)

        def choice(options: tuple):
            options = list(dict.fromkeys(options))
            return options[0] if len(options) == 1 else tune.choice(options)

        return {
            "lr": span(self.lr, log=True),
            "weight_decay": span(self.weight_decay, log=True),
            "dropout": span(self.dropout, log=False),
            "label_smoothing": span(self.label_smoothing, log=False),
            "width": choice(tuple(int(v) for v in self.width)),
            "n_blocks": choice(tuple(int(v) for v in self.n_blocks)),
            "batch_size": choice(tuple(int(v) for v in self.batch_size)),
            "normalization": choice(tuple(self.normalization)),
            "features": choice(feature_paths),
        }




@dataclass(frozen=True)
class TuneConfig:
    features_path: str  # a stored feature dataset (`data/features/LOGMEL/EMODB_LOGMEL`) or one version of it
    protocol: str = "loso"  # loso | speaker_kfold | losesso | kfold, as in `ser-dist train`
    n_folds: int | None = None  # for speaker_kfold / kfold
    seed: int = 0  # folds, Optuna's sampler, and the final run
    val_fraction: float = 0.15
    # nested: one search per outer fold on its training side only | shared: one search on the training
    # sides of the first inner_folds outer folds (cheaper; reads other folds' test speakers, and says so)
    mode: str = "nested"
    # nested: inner folds (same protocol family) made from each outer fold's training side;
    # shared: outer folds whose training sides make the objective. Fewer = faster.
    inner_folds: int = 3
    outer_folds: tuple[int, ...] | None = None  # nested only: search these outer folds (quick runs); the others train with `base`
    num_samples: int = 12  # trials (per outer fold in nested mode)
    max_concurrent_trials: int | None = None  # None = one per cluster CPU
    epochs: int = 30  # most epochs per trial (replaces base.epochs, in the final run too)
    grace_period: int = 5  # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: int = 3  # ASHA: keep about 1/reduction_factor of the trials at each rung
    space: SearchSpace = field(default_factory=SearchSpace)
    base: TrainConfig = field(default_factory=TrainConfig)  # every training option that is not searched
    out: str = "runs"
    name: str | None = None  # run folder; default <dataset>_<protocol>_tune (nested) or ..._tune_shared
    final_run: bool = True  # train and test the chosen config(s) with `run_kfold` (<name>_final)
    checkpoint_every: int = 1  # the final run's resume checkpoints (KFoldConfig.checkpoint_every); trials do not resume

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"unknown sweep mode {self.mode!r}; expected one of {', '.join(MODES)}")
        for name in ("inner_folds", "num_samples", "epochs", "grace_period"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.reduction_factor < 2:
            raise ConfigError(f"reduction_factor must be >= 2, got {self.reduction_factor}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ConfigError(f"max_concurrent_trials must be >= 1 or None, got {self.max_concurrent_trials}")
        if self.outer_folds is not None:
            if self.mode != "nested":
                raise ConfigError("outer_folds limits a nested sweep; a shared sweep searches once for every fold")
            if not self.outer_folds:
                raise ConfigError("outer_folds must name at least one outer fold, or be None for all of them")
            object.__setattr__(self, "outer_folds", tuple(sorted({int(k) for k in self.outer_folds})))
        if self.mode == "nested" and self.space.features:
            raise ConfigError("searching among feature datasets (space.features) needs mode 'shared'; "
                              "a nested sweep's final run takes one feature dataset for every fold")

    def run_name(self, dataset: str) -> str:
        if self.name:
            return self.name
        suffix = f"{self.protocol}{self.n_folds}" if self.n_folds else self.protocol
        return f"{dataset}_{suffix}_tune" + ("_shared" if self.mode == "shared" else "")

    def fingerprint(self) -> str:
        """Hash of everything that changes the sweep's trials (not where it runs or what follows it)."""
        blob = {k: v for k, v in asdict(self).items() if k not in ("out", "name", "max_concurrent_trials", "final_run", "checkpoint_every")}
        blob["base"] = {k: v for k, v in blob["base"].items() if k not in ("max_concurrent_folds", "cpus_per_worker")}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


def train_overrides(params: dict) -> dict:
    """The searched values of a trial as TrainConfig overrides (`KFoldConfig.fold_train` entries)."""
    casts = {"batch_size": int, "width": int, "n_blocks": int, "normalization": str}
    train = {k: casts.get(k, float)(params[k]) for k in TRAIN_KEYS if k in params}
    model = {k: casts.get(k, float)(params[k]) for k in MODEL_KEYS if k in params}
    return train | ({"model": model} if model else {})


def best_train_config(base: TrainConfig, params: dict, *, epochs: int) -> TrainConfig:
    """`base` with the searched values (and the sweep's epoch budget) put in."""
    return apply_train_overrides(replace(base, epochs=epochs), train_overrides(params))


@dataclass(frozen=True)
class InnerFold:
    """One fold as a trial sees it: positions into the trial's rows to fit (`train`) and to score (`val`); no test part."""

    index: int
    train: np.ndarray
    val: np.ndarray
    val_speakers: tuple[str, ...] = ()

    def describe(self) -> dict:
        return {"index": self.index, "n_train": len(self.train), "n_val": len(self.val), "val_speakers": list(self.val_speakers)}


def sweep_rows(folds: list[Fold], inner_folds: int) -> tuple[np.ndarray, list[InnerFold]]:
    """Shared mode: table positions the sweep may read (training + validation parts of the first `inner_folds`
    folds), and those folds re-indexed into that row list. Raises ConfigError if a fold's own test position would be read."""
    if inner_folds > len(folds):
        raise ConfigError(f"inner_folds={inner_folds} exceeds the {len(folds)} folds of this protocol")
    used = folds[:inner_folds]
    rows = np.unique(np.concatenate([np.concatenate([f.train, f.val]) for f in used])).astype(np.int64)
    for fold in used:
        if np.intersect1d(np.concatenate([fold.train, fold.val]), fold.test).size:
            raise ConfigError(f"fold {fold.index}: training/validation and test parts overlap")
    index_of = {int(p): i for i, p in enumerate(rows)}
    inner = [
        InnerFold(f.index, np.array([index_of[int(p)] for p in f.train], np.int64), np.array([index_of[int(p)] for p in f.val], np.int64))
        for f in used
    ]
    return rows, inner


def nested_inner_folds(meta: pd.DataFrame, outer: Fold, *, protocol: str, inner_folds: int, seed: int,
                       groups: str | None = "duplicate_group") -> tuple[np.ndarray, list[InnerFold]]:
    """Nested mode: outer fold `outer`'s training side (its training + validation positions into `meta`, sorted)
    and the first `inner_folds` inner folds made from those rows alone, as positions into them. An inner fold
    fits its training part and is scored on its held-out part (speakers/sessions for the speaker protocols)."""
    rows = np.sort(np.concatenate([outer.train, outer.val])).astype(np.int64)
    if np.intersect1d(rows, outer.test).size:
        raise ConfigError(f"outer fold {outer.index}: training/validation and test parts overlap")
    side = meta.iloc[rows].reset_index(drop=True)
    parsed = Protocol.parse(protocol)
    n_folds = None if parsed in (Protocol.LOSO, Protocol.LOSESSO) else max(2, inner_folds)
    try:
        made = make_folds(side, protocol=parsed, n_folds=n_folds, seed=seed, val_fraction=0.0,
                          groups=groups if groups in side.columns else None)
    except ConfigError as exc:
        raise ConfigError(f"outer fold {outer.index}: inner {parsed.value} folds of its training side: {exc}") from exc
    if inner_folds > len(made):
        raise ConfigError(f"inner_folds={inner_folds} exceeds the {len(made)} inner {parsed.value} folds of outer fold "
                          f"{outer.index}'s training side")
    return rows, [InnerFold(f.index, f.train, f.test, f.test_speakers) for f in made[:inner_folds]]


def inner_fold_data(payload: dict, fold: InnerFold, normalization: str):
    """`FoldData` holding only this fold's training and validation rows, normalised on its training part;
    its test part is empty."""
    from ser_dist.training.data import normalise
    from ser_dist.training.loop import FoldData

    rows = np.concatenate([fold.train, fold.val])
    features = [payload["features"][i] for i in rows]
    speakers = [payload["speakers"][i] for i in rows]
    train = np.arange(len(fold.train), dtype=np.int64)
    val = np.arange(len(fold.train), len(rows), dtype=np.int64)
    normalised, standardizer = normalise(features, speakers, train_positions=train, mode=normalization)
    return FoldData(
        payload["labels"], normalised, payload["y"][rows], [payload["utterance_ids"][i] for i in rows],
        train, val, np.empty(0, dtype=np.int64), standardizer,
    )


def step_inner_folds(trainers: list) -> Iterator[dict[int, dict]]:
    """Steps fold trainers (`FoldTrainer`) in lock-step in this thread: epoch e of every trainer that has not
    stopped, then yields {trainer index: that epoch's validation metrics}; ends when every trainer has stopped."""
    while True:
        metrics = {}
        for k, trainer in enumerate(trainers):
            if not trainer.should_stop:
                trainer.train_epoch()
                metrics[k] = trainer.validate()
        if not metrics:
            return
        yield metrics


def sweep_trial(params: dict, *, data: dict, folds: list[InnerFold], base: dict, epochs: int) -> None:
    """Ray Tune function trainable: steps one FoldTrainer per inner fold and reports after every epoch."""
    import ray
    import torch
    from ray import tune

    from ser_dist.training.loop import FoldTrainer

    torch.set_num_threads(1)
    config = best_train_config(TrainConfig.from_dict(base), params, epochs=epochs)
    payload = ray.get(data[params["features"]])
    trainers = [FoldTrainer(inner_fold_data(payload, fold, config.normalization), config) for fold in folds]
    best = [math.nan] * len(folds)
    for epoch_metrics in step_inner_folds(trainers):
        for k, metrics in epoch_metrics.items():
            best[k] = metrics.get("best_val_uar", math.nan)
        tune.report({
            METRIC: float(np.mean(best)),
            "epoch_val_uar": float(np.mean([m.get("val_uar", math.nan) for m in epoch_metrics.values()])),
            "train_loss": float(np.mean([m["train_loss"] for m in epoch_metrics.values()])),
            "folds_training": len(epoch_metrics),
            **{f"val_uar_fold{folds[k].index}": float(b) for k, b in enumerate(best)},
        })


def _aligned(candidate: FeatureTable, reference: FeatureTable) -> FeatureTable:
    if candidate.meta["utterance_id"].tolist() != reference.meta["utterance_id"].tolist():
        raise ConfigError(f"features {candidate.path} do not hold the same utterances as {reference.path}")
    return candidate


def _check_finite(table: FeatureTable, rows: np.ndarray) -> None:
    bad = [table.meta["utterance_id"].iloc[p] for p in rows if not np.isfinite(table.features[p]).all()]
    if bad:
        raise FeatureStoreError(f"{table.path}: non-finite features in {len(bad)} utterance(s) the sweep trains on, e.g. {bad[:3]}")


def _payload(table: FeatureTable, rows: np.ndarray, labels: list[str]) -> dict:
    """The sweep's rows of one feature dataset, as the trials receive them (through the object store)."""
    _check_finite(table, rows)
    meta = table.meta.iloc[rows]
    label_index = {label: i for i, label in enumerate(labels)}
    return {
        "features": [table.features[i] for i in rows], "speakers": meta["speaker"].astype(str).tolist(),
        "utterance_ids": meta["utterance_id"].tolist(), "y": meta["label"].map(label_index).to_numpy(np.int64), "labels": labels,
    }


def _outer_folds(run_dir: Path, config: TuneConfig, meta: pd.DataFrame) -> list[Fold]:
    """The outer folds: from the sweep's folds.json when an earlier call with this configuration wrote it, else made
    exactly as `run_kfold` makes them."""
    path = run_dir / FOLDS
    if path.is_file():
        recorded = RunFolds.load(path)
        if recorded.fingerprint == config.fingerprint():
            return recorded.positions(meta["utterance_id"].tolist())
    return make_folds(meta, protocol=config.protocol, n_folds=config.n_folds, seed=config.seed, val_fraction=config.val_fraction,
                      groups="duplicate_group")


def _check_fingerprint(run_dir: Path, config: TuneConfig) -> None:
    path = run_dir / "sweep_config.json"
    fingerprint = config.fingerprint()
    if path.is_file() and json.loads(path.read_text()).get("fingerprint") != fingerprint:
        raise ConfigError(f"{run_dir} holds a sweep with a different configuration; choose another --name or delete the folder")
    path.write_text(json.dumps({"tune": asdict(config), "fingerprint": fingerprint}, indent=2, default=str))


def _results_table(grid, searched: list[str], epochs: int) -> pd.DataFrame:
    """One row per trial, best first; `stopped early` = by ASHA, or every inner fold ran out of patience."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        rows.append({
            "trial_id": metrics.get("trial_id", Path(result.path).name),
            **{k: result.config.get(k) for k in searched},
            METRIC: metrics.get(METRIC, math.nan),
            "train_loss": metrics.get("train_loss", math.nan),
            "epochs_run": metrics.get("training_iteration", 0),
            "status": "error" if result.error else ("all epochs" if metrics.get("training_iteration", 0) >= epochs else "stopped early"),
            "error": "" if result.error is None else f"{type(result.error).__name__}: {result.error}".splitlines()[0][:300],
        })
    table = pd.DataFrame(rows)
    return table.sort_values(METRIC, ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def read_by_sweep(folds: RunFolds, fold: int | None = None) -> set[str]:
    """The utterances a sweep read (from its folds.json): the training and validation parts of the outer folds it
    searched on. For a nested sweep and a given `fold`, only what that outer fold's own search read (nothing when
    it was not swept); a shared sweep read the same rows for every fold."""
    if folds.extra.get("mode") == "nested":
        swept = {int(k) for k in folds.extra.get("swept_folds", [])}
        used = swept if fold is None else swept & {int(fold)}
    else:
        used = {int(k) for k in folds.extra.get("inner_folds", [])}
    return {u for f in folds.folds if f.index in used for u in (*f.train, *f.val)}


def unseen_by_sweep(sweep_folds: RunFolds, speaker_of: dict[str, str], *, final: RunFolder | None = None,
                    labels: list[str] | None = None) -> dict:
    """Which test utterances and speakers each fold's sweep read, fold by fold; with `final`, the test parts come from
    the final run's folds.json and the folds none of whose test utterances were read are scored together.

    A test speaker counts as unseen when the sweep that chose its fold's config read none of its test utterances."""
    tested = sweep_folds
    if final is not None:
        tested = final.read_folds()
        if tested is None:
            raise RuntimeError(f"{final.location.redacted()} has no {FOLDS}: cannot tell which utterances its folds tested")
    nested = sweep_folds.extra.get("mode") == "nested"
    shared_read = None if nested else read_by_sweep(sweep_folds)
    per_fold = []
    for fold in tested.folds:
        hit = set(fold.test) & (read_by_sweep(sweep_folds, fold.index) if nested else shared_read)
        per_fold.append({"fold": fold.index, "test_speakers": list(fold.test_speakers), "n_test": len(fold.test),
                         "test_utterances_read": len(hit), "test_speakers_read": sorted({speaker_of[u] for u in hit})})
    speakers = {s for f in tested.folds for s in f.test_speakers}
    read_speakers = {s for p in per_fold for s in p["test_speakers_read"]}
    unseen = [p["fold"] for p in per_fold if not p["test_utterances_read"]]
    report = {
        "read_by": "each outer fold's own sweep" if nested else "the one shared sweep",
        "folds": unseen, "n_folds": len(per_fold), "share_of_folds": len(unseen) / max(1, len(per_fold)),
        "test_speakers_total": len(speakers), "test_speakers_unseen": len(speakers - read_speakers),
        "share_of_test_speakers_unseen": len(speakers - read_speakers) / max(1, len(speakers)),
        "test_speakers_read": sorted(read_speakers), "test_utterances_read": sum(p["test_utterances_read"] for p in per_fold),
        "folds_read": [p["fold"] for p in per_fold if p["test_utterances_read"]], "per_fold": per_fold,
    }
    if final is not None:
        report["same_folds_as_sweep"] = [f.test for f in tested.folds] == [f.test for f in sweep_folds.folds]
        if not report["same_folds_as_sweep"]:
            logger.warning("the final run's folds differ from the sweep's outer folds (other features, other duplicate groups?)")
        report |= _pooled(final, unseen, labels or [])
    return report


def _pooled(final: RunFolder, folds: list[int], labels: list[str]) -> dict:
    """Pooled test scores of some folds of a finished run."""
    from ser_dist.training.metrics import classification_report

    if not folds:
        return {"uar": None, "war": None, "n_test": 0}
    pooled = pd.concat([final.read_predictions(k) for k in folds], ignore_index=True)
    report = classification_report(pooled["true"].tolist(), pooled["pred"].tolist(), labels)
    return {"uar": report["uar"], "war": report["war"], "n_test": report["n"]}


def run_sweep(config: TuneConfig) -> dict:
    """Run (or resume) the sweep, save its results table and summary, then the final k-fold run of the chosen config(s)."""
    started = time.perf_counter()
    try:
        import optuna  # noqa: F401  (OptunaSearch needs it)
    except ImportError as exc:
        raise ImportError("ser-dist tune needs optuna: pip install 'ser-dist[tune]'") from exc

    table = load_features(config.features_path)
    dataset = table.metadata.get("dataset_name") or as_location(config.features_path).name
    location = as_location(config.out) / config.run_name(dataset)
    with StagedDirectory(location, exclude=("tune",)) as staged:
        run_dir = staged.local
        meta = table.meta.assign(duplicate_group=duplicate_groups(table))
        folds = _outer_folds(run_dir, config, meta)
        feature_paths = tuple(dict.fromkeys([str(config.features_path), *map(str, config.space.features)]))
        tables = {feature_paths[0]: table} | {p: _aligned(load_features(p), table) for p in feature_paths[1:]}
        sweep = _Sweep(config, meta, folds, tables, feature_paths, staged, location, started)
        return sweep.run_nested() if config.mode == "nested" else sweep.run_shared()


@dataclass
class _Sweep:
    """What both modes share while one sweep runs."""

    config: TuneConfig
    meta: pd.DataFrame
    folds: list[Fold]
    tables: dict[str, FeatureTable]
    feature_paths: tuple[str, ...]
    staged: StagedDirectory
    location: Location
    started: float

    @property
    def run_dir(self) -> Path:
        return self.staged.local

    @property
    def labels(self) -> list[str]:
        return sorted(self.meta["label"].unique())

    @property
    def speaker_of(self) -> dict[str, str]:
        return dict(zip(self.meta["utterance_id"].astype(str), self.meta["speaker"].astype(str), strict=True))

    def save_folds(self, extra: dict) -> RunFolds:
        config = self.config
        folds = RunFolds.from_folds(self.folds, self.meta["utterance_id"].tolist(),
                                    protocol=protocol_description(config.protocol, len(self.folds), config.seed),
                                    seed=config.seed, val_fraction=config.val_fraction, fingerprint=config.fingerprint(), extra=extra)
        folds.save(self.run_dir / FOLDS)  # what the sweep read: see read_by_sweep
        return folds

    def search(self, payloads: dict, inner: list[InnerFold], experiment: str) -> tuple[pd.DataFrame, dict]:
        """One Ray Tune search: its results table and its best trial (id, val UAR, searched values)."""
        grid = _fit(self.config, self.location, payloads, inner, self.feature_paths, experiment=experiment)
        config = self.config
        if len(grid) < config.num_samples or grid.num_terminated + grid.num_errors < len(grid):
            # Ray Tune returns from fit() on SIGINT with the state saved and some trials unfinished
            logger.warning("sweep %s (%s) interrupted after %d of %d trials; run it again with the same name to resume",
                           self.location.name, experiment, grid.num_terminated + grid.num_errors, config.num_samples)
            raise KeyboardInterrupt(f"sweep {self.location.name} interrupted; rerun with the same name to resume")
        param_space = config.space.param_space(self.feature_paths)
        results = _results_table(grid, list(param_space), config.epochs)
        ok = [r for r in grid if r.error is None and r.metrics and math.isfinite(r.metrics.get(METRIC, math.nan))]
        if not ok:
            errors = [r.error for r in grid if r.error is not None]
            raise RuntimeError(f"no trial of sweep {self.location.name} ({experiment}) finished with a score; "
                               f"first error: {errors[0] if errors else 'none reported'}")
        best = max(ok, key=lambda r: r.metrics[METRIC])
        return results, {"best_trial": best.metrics.get("trial_id"), "best_val_uar": float(best.metrics[METRIC]),
                         "best_params": {k: best.config[k] for k in param_space}}

    def write_summary(self, summary: dict) -> None:
        (self.run_dir / "tune_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        self.staged.sync()

    def final_run(self, train: TrainConfig, fold_train: dict[int, dict], features: str) -> tuple[dict, RunFolder]:
        from ser_dist.training.kfold import run_kfold

        config = self.config
        final = run_kfold(KFoldConfig(
            features_path=features, protocol=config.protocol, n_folds=config.n_folds, seed=config.seed,
            val_fraction=config.val_fraction, out=config.out, name=f"{self.location.name}_final", train=train, fold_train=fold_train,
            checkpoint_every=config.checkpoint_every,
        ))
        return final, RunFolder(as_location(config.out) / final["run"])

    # -- nested ---------------------------------------------------------------------------------
    def run_nested(self) -> dict:
        config, folds = self.config, self.folds
        indices = [f.index for f in folds]
        swept = list(config.outer_folds) if config.outer_folds is not None else indices
        unknown = sorted(set(swept) - set(indices))
        if unknown:
            raise ConfigError(f"outer_folds {unknown} do not exist; this protocol makes folds {indices}")
        plans = {f.index: nested_inner_folds(self.meta, f, protocol=config.protocol, inner_folds=config.inner_folds, seed=config.seed)
                 for f in folds if f.index in swept}
        read = np.unique(np.concatenate([rows for rows, _ in plans.values()]))
        for table in self.tables.values():
            _check_finite(table, read)  # before any trial starts
        _check_fingerprint(self.run_dir, config)
        sweep_folds = self.save_folds({"mode": "nested", "swept_folds": swept,
                                       "inner": {str(k): [i.describe() for i in inner] for k, (_, inner) in plans.items()}})
        self.staged.sync()
        logger.info("nested sweep %s: %d trials for each of outer folds %s, each on its own training side only (inner %s folds: %d)",
                    self.location.name, config.num_samples, swept, config.protocol, config.inner_folds)
        choices = [self.nested_fold(fold, *plans[fold.index]) for fold in folds if fold.index in swept]
        results = pd.concat([pd.read_csv(self.run_dir / outer_experiment(c["fold"]) / "tune_results.csv") for c in choices],
                            ignore_index=True)
        results.to_csv(self.run_dir / "tune_results.csv", index=False)
        fold_configs = {f.index: {"source": "base config (outer fold not swept)", "train_overrides": {}, "best_val_uar": None}
                        for f in folds}
        fold_configs |= {c["fold"]: {"source": "nested sweep on the fold's training side", "train_overrides": c["train_overrides"],
                                     "best_val_uar": c["best_val_uar"], "best_trial": c["best_trial"]} for c in choices}
        summary = {
            "run": self.location.name, "location": self.location.redacted(), "mode": "nested",
            "objective": (f"per outer fold: {METRIC} = mean over {config.inner_folds} inner {config.protocol} folds, made from that "
                          "outer fold's training side only, of the best held-out UAR of a model trained on the inner fold's "
                          "training part; the outer fold's test utterances are never read (not even shipped to its trials)"),
            "swept_folds": swept, "not_swept_folds": [k for k in indices if k not in swept],
            "outer_folds": choices, "fold_configs": fold_configs,
            "best_val_uar": float(np.mean([c["best_val_uar"] for c in choices])),
            "best_val_uar_note": "mean over the swept outer folds of their chosen config's inner validation UAR",
            "best_params": None,
            "n_trials": len(results), "n_errors": int((results["status"] == "error").sum()),
            "results_table": str(self.location / "tune_results.csv"), "folds_file": str(self.location / FOLDS),
            "sweep_wall_s": time.perf_counter() - self.started,
            "unseen_by_sweep": unseen_by_sweep(sweep_folds, self.speaker_of),
            "final_summary": None,
        }
        self.write_summary(summary)
        if not config.final_run:
            return summary
        base = replace(config.base, epochs=config.epochs)
        final, run = self.final_run(base, {c["fold"]: c["train_overrides"] for c in choices}, str(config.features_path))
        unseen = unseen_by_sweep(sweep_folds, self.speaker_of, final=run, labels=final["labels"])
        summary["final_summary"] = {
            "run_dir": run.location.redacted(),
            "uar": final["uar"], "war": final["war"], "macro_f1": final["macro_f1"], "fold_uar": final["fold_uar"],
            "n_test": final["n_test"], "fold_configs": fold_configs, "unseen_by_sweep": unseen,
            "swept_folds": {"folds": swept, **_pooled(run, swept, final["labels"])},
            "note": "pooled test scores of every outer fold, each trained once with the config its own sweep chose (folds not "
                    "swept: the base config); the sweep's val_uar is a separate, validation-only number",
        }
        _annotate_final(run, {"run": self.location.name, "mode": "nested", "fold_configs": fold_configs, "unseen_by_sweep": unseen})
        self.write_summary(summary)
        return summary

    def nested_fold(self, fold: Fold, rows: np.ndarray, inner: list[InnerFold]) -> dict:
        """Search outer fold `fold`'s config on its training side (or read the choice a finished search left)."""
        config, fingerprint = self.config, self.config.fingerprint()
        folder = self.run_dir / outer_experiment(fold.index)
        choice_file = folder / "choice.json"
        if choice_file.is_file():
            choice = json.loads(choice_file.read_text())
            if choice.get("fingerprint") == fingerprint and (folder / "tune_results.csv").is_file():
                logger.info("outer fold %d: search finished earlier; chosen config read from %s", fold.index, choice_file)
                return choice
        started = time.perf_counter()
        payloads = {path: _payload(table, rows, self.labels) for path, table in self.tables.items()}
        test_ids = set(self.meta["utterance_id"].iloc[fold.test])
        shipped = set(next(iter(payloads.values()))["utterance_ids"])
        if shipped & test_ids:  # nested_inner_folds already refuses this; checked again on what is shipped
            raise RuntimeError(f"outer fold {fold.index}: the sweep's rows hold {len(shipped & test_ids)} of its test utterances")
        logger.info("outer fold %d (test %s): %d trials on %d training-side utterances, inner held-out %s", fold.index,
                    ",".join(fold.test_speakers), config.num_samples, len(rows), [list(i.val_speakers) for i in inner])
        results, best = self.search(payloads, inner, outer_experiment(fold.index))
        del payloads
        folder.mkdir(parents=True, exist_ok=True)
        results.insert(0, "outer_fold", fold.index)
        results.to_csv(folder / "tune_results.csv", index=False)
        choice = {
            "fold": fold.index, "fingerprint": fingerprint, "test_speakers": list(fold.test_speakers), "n_test": len(fold.test),
            "inner_folds": [i.describe() for i in inner], "utterances_read": len(rows), "test_utterances_read": len(shipped & test_ids),
            **best, "train_overrides": train_overrides(best["best_params"]),
            "n_trials": len(results), "n_errors": int((results["status"] == "error").sum()),
            "results_table": str(self.location / folder.name / "tune_results.csv"), "sweep_wall_s": time.perf_counter() - started,
        }
        choice_file.write_text(json.dumps(choice, indent=2, default=str))  # written last: marks the fold's search finished
        self.staged.sync()
        logger.info("outer fold %d: inner val UAR %.3f with %s", fold.index, best["best_val_uar"], best["best_params"])
        return choice

    # -- shared ---------------------------------------------------------------------------------
    def run_shared(self) -> dict:
        config = self.config
        rows, inner = sweep_rows(self.folds, config.inner_folds)
        payloads = {path: _payload(t, rows, self.labels) for path, t in self.tables.items()}  # checks the rows before any trial starts
        _check_fingerprint(self.run_dir, config)
        sweep_folds = self.save_folds({"mode": "shared", "inner_folds": [f.index for f in inner]})
        self.staged.sync()
        read = unseen_by_sweep(sweep_folds, self.speaker_of)
        logger.info("shared sweep %s: %d trials on the training sides of outer folds %s (%d of %d utterances); they hold the test "
                    "utterances of outer folds %s (%d utterances, speakers %s)", self.location.name, config.num_samples,
                    [f.index for f in inner], len(rows), len(self.meta), read["folds_read"], read["test_utterances_read"],
                    ",".join(read["test_speakers_read"]) or "-")
        results, best = self.search(payloads, inner, SHARED_EXPERIMENT)
        results.to_csv(self.run_dir / "tune_results.csv", index=False)
        best_params = best["best_params"]
        best_train = best_train_config(config.base, best_params, epochs=config.epochs)
        summary = {
            "run": self.location.name, "location": self.location.redacted(), "mode": "shared",
            "objective": (f"{METRIC} = mean over the first {len(inner)} outer folds ({config.protocol}) of the best validation UAR "
                          "of a model trained on the fold's training part. Not nested: those training sides hold the test "
                          f"utterances of outer folds {read['folds_read']} ({read['test_utterances_read']} utterances of test "
                          f"speakers {', '.join(read['test_speakers_read']) or '-'}), which the sweep read"),
            "inner_folds": [f.index for f in inner],
            "utterances_read": int(len(rows)), "utterances_total": int(len(self.meta)),
            "speakers_read": sorted(self.meta["speaker"].iloc[rows].astype(str).unique()),
            "test_read": {k: read[k] for k in ("folds_read", "test_speakers_read", "test_utterances_read", "per_fold")},
            "unseen_by_sweep": read,
            "folds_file": str(self.location / FOLDS),
            **best, "best_features": best_params["features"], "best_config": best_train.to_dict(),
            "n_trials": len(results), "n_errors": int((results["status"] == "error").sum()),
            "results_table": str(self.location / "tune_results.csv"), "sweep_wall_s": time.perf_counter() - self.started,
            "final_summary": None,
        }
        self.write_summary(summary)
        logger.info("sweep %s: best val UAR %.3f with %s", self.location.name, summary["best_val_uar"], best_params)
        if not config.final_run:
            return summary
        final, run = self.final_run(best_train, {}, best_params["features"])
        unseen = unseen_by_sweep(sweep_folds, self.speaker_of, final=run, labels=final["labels"])
        overrides = train_overrides(best_params)
        fold_configs = {f["fold"]: {"source": "shared sweep", "train_overrides": overrides, "best_val_uar": best["best_val_uar"]}
                        for f in final["folds"]}
        summary["final_summary"] = {
            "run_dir": run.location.redacted(),
            "uar": final["uar"], "war": final["war"], "macro_f1": final["macro_f1"], "fold_uar": final["fold_uar"],
            "n_test": final["n_test"], "unseen_by_sweep": unseen,
            "note": "test scores of the final k-fold run; the sweep read the test utterances of the folds in "
                    "unseen_by_sweep.folds_read, so only unseen_by_sweep.uar is independent of the sweep",
        }
        _annotate_final(run, {"run": self.location.name, "mode": "shared", "fold_configs": fold_configs, "unseen_by_sweep": unseen})
        self.write_summary(summary)
        return summary


def _annotate_final(run: RunFolder, section: dict) -> None:
    """Adds the sweep's section (per-fold configs, what the sweep read) to the final run's summary.json."""
    summary = run.read_summary()
    summary["sweep"] = section
    run.write_summary(summary)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"  # the default name spells out every searched value, feature paths included


def _fit(config: TuneConfig, location: Location, payloads: dict, inner: list[InnerFold], feature_paths: tuple[str, ...], *,
         experiment: str):
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from ser_dist.ray_runtime import cluster_cpus, ensure_ray

    ensure_ray()
    refs = {path: ray.put(payload) for path, payload in payloads.items()}  # one copy each; trials fetch theirs
    trainable = tune.with_resources(
        tune.with_parameters(sweep_trial, data=refs, folds=inner, base=config.base.to_dict(), epochs=config.epochs),
        {"cpu": 1},
    )
    storage = (location / "tune").ray_storage()  # a local folder or the same remote store
    state = location / "tune" / experiment
    filesystem = storage.get("storage_filesystem")
    if tune.Tuner.can_restore(state.path, storage_filesystem=filesystem):
        logger.info("resuming sweep from %s", state.redacted())
        tuner = tune.Tuner.restore(state.path, trainable=trainable, resume_errored=True, storage_filesystem=filesystem)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=config.space.param_space(feature_paths),
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="max",
                search_alg=OptunaSearch(seed=config.seed),
                scheduler=ASHAScheduler(max_t=config.epochs, grace_period=min(config.grace_period, config.epochs),
                                        reduction_factor=config.reduction_factor),
                num_samples=config.num_samples,
                max_concurrent_trials=config.max_concurrent_trials or cluster_cpus(),
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(name=experiment, **storage),
        )
    return tuner.fit()
