"""Hyperparameter sweep on Ray Tune: Optuna proposes, ASHA stops poor trials early, trials run side by side.

Objective (nested: the sweep never reads a test fold)
    The outer folds are made exactly as `ser_dist.training.kfold.run_kfold` makes them (same protocol,
    n_folds, seed, val_fraction, duplicate groups). The sweep uses the first `inner_folds` of them and, of
    each, only the training part (to fit) and the validation part (to score); every trial builds its
    `FoldData` with an empty test part. The rows shipped to the trials are the union of those training
    and validation parts, so the test part of fold 0 is not even in the object store. A trial's score is
    the mean over its inner folds of the best validation UAR so far (the epoch a final run would select).

    Caveat, reported rather than hidden: with more than one inner fold, the training side of one fold
    holds the test speakers of another, so only the final-run folds whose test utterances the sweep never
    read give test scores fully independent of the sweep; `run_sweep` names them and pools their UAR
    separately (`final_run.unseen_by_sweep`).

Lock-step inner folds
    `fit_fold` trains a whole fold per call and cannot be resumed epoch by epoch, yet ASHA needs one
    comparable number per epoch. A trial therefore starts one thread per inner fold; a fold's `on_epoch`
    callback hands its metrics to the trial and waits there until the trial lets it go on. The trial steps
    the folds in turn (epoch 1 of every fold, report; epoch 2 of every fold, report; ...), so only one
    fold computes at a time (one CPU per trial, torch threads = 1) and report e (`training_iteration` e)
    is the mean over the inner folds of their best validation UAR up to epoch e. It never decreases and
    trials are compared at equal epochs. A fold stopped by `patience` keeps its best value. The price is
    memory: a trial holds each inner fold's normalised copy of its rows at once.

Resume
    Trial state lives in `<out>/<name>/tune/sweep`; a rerun with the same name restores it
    (`Tuner.restore`): finished trials are kept, unfinished ones start again from epoch 1 (trials keep no
    checkpoints), and the search algorithm continues where it stopped. A rerun with another configuration
    under the same name is refused.

Run folder::

    <out>/<name>/sweep_config.json   the TuneConfig and its fingerprint
    <out>/<name>/tune/sweep/         Ray Tune's experiment state (restorable)
    <out>/<name>/tune_results.csv    one row per trial: searched values -> val_uar, epochs run, status
    <out>/<name>/tune_summary.json   best config, best val UAR, objective note, wall time, final run scores
    <out>/<name>_final/              the k-fold run of the best config (`run_kfold`), when final_run
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ser_dist.errors import ConfigError, FeatureStoreError
from ser_dist.features.store import FeatureTable, load_features
from ser_dist.storage import Location, StagedDirectory, as_location
from ser_dist.training.config import TrainConfig
from ser_dist.training.kfold import KFoldConfig, duplicate_groups
from ser_dist.training.splits import Fold, make_folds

logger = logging.getLogger(__name__)

METRIC = "val_uar"
EXPERIMENT = "sweep"  # Ray Tune experiment folder inside <out>/<name>/tune
TRAIN_KEYS = ("lr", "weight_decay", "label_smoothing", "batch_size", "normalization")  # searched TrainConfig fields
NORMALIZATIONS = ("train_global", "per_speaker")
MODEL_KEYS = ("dropout", "width", "n_blocks")  # searched ModelOptions fields


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
    inner_folds: int = 3  # outer folds whose training sides make the objective (fewer = faster)
    num_samples: int = 12  # trials
    max_concurrent_trials: int | None = None  # None = one per cluster CPU
    epochs: int = 30  # most epochs per trial (replaces base.epochs, in the final run too)
    grace_period: int = 5  # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: int = 3  # ASHA: keep about 1/reduction_factor of the trials at each rung
    space: SearchSpace = field(default_factory=SearchSpace)
    base: TrainConfig = field(default_factory=TrainConfig)  # every training option that is not searched
    out: str = "runs"
    name: str | None = None  # run folder; default <dataset>_<protocol>_tune
    final_run: bool = True  # train and test the best config with `run_kfold` (<name>_final)

    def __post_init__(self):
        for name in ("inner_folds", "num_samples", "epochs", "grace_period"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.reduction_factor < 2:
            raise ConfigError(f"reduction_factor must be >= 2, got {self.reduction_factor}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ConfigError(f"max_concurrent_trials must be >= 1 or None, got {self.max_concurrent_trials}")

    def run_name(self, dataset: str) -> str:
        if self.name:
            return self.name
        suffix = f"{self.protocol}{self.n_folds}" if self.n_folds else self.protocol
        return f"{dataset}_{suffix}_tune"

    def fingerprint(self) -> str:
        """Hash of everything that changes the sweep's trials (not where it runs or what follows it)."""
        blob = {k: v for k, v in asdict(self).items() if k not in ("out", "name", "max_concurrent_trials", "final_run")}
        blob["base"] = {k: v for k, v in blob["base"].items() if k not in ("max_concurrent_folds", "cpus_per_worker")}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


def best_train_config(base: TrainConfig, params: dict, *, epochs: int) -> TrainConfig:
    """`base` with the searched values (and the sweep's epoch budget) put in."""
    train = {k: params[k] for k in TRAIN_KEYS if k in params}
    model = {k: params[k] for k in MODEL_KEYS if k in params}
    casts = {"batch_size": int, "width": int, "n_blocks": int, "normalization": str}
    train = {k: casts.get(k, float)(v) for k, v in train.items()}
    model = {k: casts.get(k, float)(v) for k, v in model.items()}
    return replace(base, epochs=epochs, model=replace(base.model, **model), **train)


@dataclass(frozen=True)
class InnerFold:
    """One outer fold as a trial sees it: positions into the sweep's rows, and no test part."""

    index: int
    train: np.ndarray
    val: np.ndarray


def sweep_rows(folds: list[Fold], inner_folds: int) -> tuple[np.ndarray, list[InnerFold]]:
    """Table positions the sweep may read (training + validation parts of the first `inner_folds` folds),
    and those folds re-indexed into that row list. Raises ConfigError if a test position would be read."""
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


class _Stop(BaseException):
    """Raised inside a fold thread to unwind `fit_fold` when the trial ends first."""


class LockStepFolds:
    """Runs one `fit_fold` per thread, one epoch at a time, only the fold that `step` names computing."""

    def __init__(self, runs: list[Callable[[Callable[[dict], None]], object]]):
        self._turn = [threading.Semaphore(0) for _ in runs]
        self._events: queue.Queue = queue.Queue()
        self._closing = False
        self._threads = [threading.Thread(target=self._run, args=(k, run), daemon=True, name=f"inner-fold-{k}") for k, run in enumerate(runs)]
        for thread in self._threads:
            thread.start()

    def _run(self, k: int, run: Callable[[Callable[[dict], None]], object]) -> None:
        def on_epoch(metrics: dict) -> None:
            self._events.put((k, "epoch", metrics))
            self._wait(k)

        try:
            self._wait(k)
            self._events.put((k, "done", run(on_epoch)))
        except _Stop:
            pass
        except BaseException as exc:  # handed to the trial thread, which raises it
            self._events.put((k, "error", exc))

    def _wait(self, k: int) -> None:
        self._turn[k].acquire()
        if self._closing:
            raise _Stop

    def step(self, k: int) -> tuple[str, object]:
        """Let fold k train one epoch: ("epoch", metrics), or ("done", outcome) once its training has ended."""
        self._turn[k].release()
        who, kind, value = self._events.get()
        if kind == "error":
            raise value
        if who != k:
            raise RuntimeError(f"fold thread {who} ran while fold {k} had the turn")
        return kind, value

    def close(self) -> None:
        self._closing = True
        for turn in self._turn:
            turn.release()
        for thread in self._threads:
            thread.join(timeout=10)


def sweep_trial(params: dict, *, data: dict, folds: list[InnerFold], base: dict, epochs: int) -> None:
    """Ray Tune function trainable: trains the inner folds in lock-step and reports after every epoch."""
    import ray
    import torch
    from ray import tune

    from ser_dist.training.loop import fit_fold

    torch.set_num_threads(1)
    config = best_train_config(TrainConfig.from_dict(base), params, epochs=epochs)
    payload = ray.get(data[params["features"]])
    fold_data = [inner_fold_data(payload, fold, config.normalization) for fold in folds]
    lock_step = LockStepFolds([lambda on_epoch, d=d: fit_fold(d, config, on_epoch=on_epoch) for d in fold_data])
    best = [math.nan] * len(folds)
    try:
        active = list(range(len(folds)))
        while active:
            epoch_metrics = {}
            for k in list(active):
                kind, value = lock_step.step(k)
                if kind == "done":
                    active.remove(k)
                else:
                    epoch_metrics[k] = value
                    best[k] = value["best_val_uar"]
            if not epoch_metrics:
                break
            tune.report({
                METRIC: float(np.mean(best)),
                "epoch_val_uar": float(np.mean([m["val_uar"] for m in epoch_metrics.values()])),
                "train_loss": float(np.mean([m["train_loss"] for m in epoch_metrics.values()])),
                "folds_training": len(epoch_metrics),
                **{f"val_uar_fold{folds[k].index}": float(b) for k, b in enumerate(best)},
            })
    finally:
        lock_step.close()


def _aligned(candidate: FeatureTable, reference: FeatureTable) -> FeatureTable:
    if candidate.meta["utterance_id"].tolist() != reference.meta["utterance_id"].tolist():
        raise ConfigError(f"features {candidate.path} do not hold the same utterances as {reference.path}")
    return candidate


def _payload(table: FeatureTable, rows: np.ndarray, labels: list[str]) -> dict:
    """The sweep's rows of one feature dataset, as the trials receive them (through the object store)."""
    features = [table.features[i] for i in rows]
    bad = [table.meta["utterance_id"].iloc[p] for p, m in zip(rows, features, strict=True) if not np.isfinite(m).all()]
    if bad:
        raise FeatureStoreError(f"{table.path}: non-finite features in {len(bad)} utterance(s) the sweep trains on, e.g. {bad[:3]}")
    meta = table.meta.iloc[rows]
    label_index = {label: i for i, label in enumerate(labels)}
    return {
        "features": features, "speakers": meta["speaker"].astype(str).tolist(), "utterance_ids": meta["utterance_id"].tolist(),
        "y": meta["label"].map(label_index).to_numpy(np.int64), "labels": labels,
    }


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


def _unseen_by_sweep(final_dir: Path, folds: list[dict], read_ids: set[str], labels: list[str]) -> dict:
    """Final-run folds none of whose test utterances the sweep read, and their pooled test scores."""
    from ser_dist.training.metrics import classification_report

    clean: dict[int, pd.DataFrame] = {}
    for fold in folds:
        predictions = pd.read_csv(final_dir / f"fold_{fold['fold']}" / "predictions.csv", dtype={"utterance_id": str})
        if not set(predictions["utterance_id"]) & read_ids:
            clean[int(fold["fold"])] = predictions
    if not clean:
        return {"folds": [], "uar": None, "war": None, "n_test": 0}
    pooled = pd.concat(clean.values(), ignore_index=True)
    report = classification_report(pooled["true"].tolist(), pooled["pred"].tolist(), labels)
    return {"folds": sorted(clean), "uar": report["uar"], "war": report["war"], "n_test": report["n"]}


def run_sweep(config: TuneConfig) -> dict:
    """Run (or resume) the sweep, save its results table and summary, then the final k-fold run of the best config."""
    started = time.perf_counter()
    try:
        import optuna  # noqa: F401  (OptunaSearch needs it)
    except ImportError as exc:
        raise ImportError("ser-dist tune needs optuna: pip install 'ser-dist[tune]'") from exc

    table = load_features(config.features_path)
    dataset = table.metadata.get("dataset_name") or as_location(config.features_path).name
    location = as_location(config.out) / config.run_name(dataset)
    with StagedDirectory(location, exclude=("tune",)) as staged:
        return _run_sweep(config, table, staged, location, started)


def _run_sweep(config: TuneConfig, table: FeatureTable, staged: StagedDirectory, location: Location, started: float) -> dict:
    run_dir = staged.local
    meta = table.meta.assign(duplicate_group=duplicate_groups(table))
    folds = make_folds(meta, protocol=config.protocol, n_folds=config.n_folds, seed=config.seed, val_fraction=config.val_fraction, groups="duplicate_group")
    rows, inner = sweep_rows(folds, config.inner_folds)
    labels = sorted(meta["label"].unique())
    feature_paths = tuple(dict.fromkeys([str(config.features_path), *map(str, config.space.features)]))
    tables = {feature_paths[0]: table} | {p: _aligned(load_features(p), table) for p in feature_paths[1:]}
    payloads = {path: _payload(t, rows, labels) for path, t in tables.items()}  # checks the rows before any trial starts
    _check_fingerprint(run_dir, config)
    staged.sync()
    logger.info("sweep %s: %d trials on the training sides of folds %s (%d of %d utterances; test folds never read)",
                location.name, config.num_samples, [f.index for f in inner], len(rows), len(meta))

    grid = _fit(config, location, payloads, inner, feature_paths)
    if len(grid) < config.num_samples or grid.num_terminated + grid.num_errors < len(grid):
        # Ray Tune returns from fit() on SIGINT with the state saved and some trials unfinished
        logger.warning("sweep %s interrupted after %d of %d trials; run it again with the same name to resume",
                       location.name, grid.num_terminated + grid.num_errors, config.num_samples)
        raise KeyboardInterrupt(f"sweep {location.name} interrupted; rerun with the same name to resume")
    param_space = config.space.param_space(feature_paths)
    results = _results_table(grid, list(param_space), config.epochs)
    results.to_csv(run_dir / "tune_results.csv", index=False)
    ok = [r for r in grid if r.error is None and r.metrics and math.isfinite(r.metrics.get(METRIC, math.nan))]
    if not ok:
        errors = [r.error for r in grid if r.error is not None]
        raise RuntimeError(f"no trial of sweep {location.name} finished with a score; first error: {errors[0] if errors else 'none reported'}")
    best = max(ok, key=lambda r: r.metrics[METRIC])
    best_params = {k: best.config[k] for k in param_space}
    best_train = best_train_config(config.base, best_params, epochs=config.epochs)
    summary = {
        "run": location.name,
        "location": location.redacted(),
        "objective": (f"{METRIC} = mean over the first {len(inner)} outer folds ({config.protocol}) of the best validation UAR "
                      "of a model trained on the fold's training part; test folds never read"),
        "inner_folds": [f.index for f in inner],
        "utterances_read": int(len(rows)), "utterances_total": int(len(meta)),
        "best_trial": best.metrics.get("trial_id"), "best_val_uar": float(best.metrics[METRIC]),
        "best_params": best_params, "best_features": best_params["features"], "best_config": best_train.to_dict(),
        "n_trials": len(results), "n_errors": int((results["status"] == "error").sum()),
        "results_table": str(location / "tune_results.csv"), "sweep_wall_s": time.perf_counter() - started,
        "final_summary": None,
    }
    (run_dir / "tune_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    staged.sync()
    logger.info("sweep %s: best val UAR %.3f with %s", location.name, summary["best_val_uar"], best_params)

    if config.final_run:
        from ser_dist.training.kfold import run_kfold

        final = run_kfold(KFoldConfig(
            features_path=best_params["features"], protocol=config.protocol, n_folds=config.n_folds, seed=config.seed,
            val_fraction=config.val_fraction, out=config.out, name=f"{location.name}_final", train=best_train,
        ))
        final_location = as_location(config.out) / final["run"]
        read_ids = set(table.meta["utterance_id"].iloc[rows])
        with StagedDirectory(final_location, exclude=("ray",)) as final_dir:
            unseen = _unseen_by_sweep(final_dir.local, final["folds"], read_ids, final["labels"])
        summary["final_summary"] = {
            "run_dir": final_location.redacted(),
            "uar": final["uar"], "war": final["war"], "macro_f1": final["macro_f1"], "fold_uar": final["fold_uar"],
            "n_test": final["n_test"],
            "unseen_by_sweep": unseen,
            "note": "test scores of the final k-fold run; the sweep's val_uar is a separate, validation-only number",
        }
        (run_dir / "tune_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"  # the default name spells out every searched value, feature paths included


def _fit(config: TuneConfig, location: Location, payloads: dict, inner: list[InnerFold], feature_paths: tuple[str, ...]):
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
    experiment = location / "tune" / EXPERIMENT
    filesystem = storage.get("storage_filesystem")
    if tune.Tuner.can_restore(experiment.path, storage_filesystem=filesystem):
        logger.info("resuming sweep from %s", experiment.redacted())
        tuner = tune.Tuner.restore(experiment.path, trainable=trainable, resume_errored=True, storage_filesystem=filesystem)
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
            run_config=tune.RunConfig(name=EXPERIMENT, **storage),
        )
    return tuner.fit()
