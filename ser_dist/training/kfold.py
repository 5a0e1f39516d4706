"""k-fold cross-validation where every fold is a Ray Train job, and the folds run side by side.

Ray 2.60 runs Train V2, where a Trainer cannot be handed to a Tuner; each fold's `TorchTrainer.fit()`
is called from its own zero-CPU Ray task, so the folds overlap as far as the cluster's CPUs/GPUs
allow (see ../shared/notes/ray-2.60.md). A finished fold leaves `fold_<k>/result.json`; a rerun of
the same run skips it and trains only the folds that are missing.

The run folder's layout (run_config.json, folds.json, fold_<k>/{checkpoint/, history.csv,
predictions.csv, predictions_last_epoch.csv, result.json}, summary.json, report.*) belongs to
`ser_dist.runs.RunFolder`; this module writes through it. `folds.json` records each fold's
train/validation/test utterance ids; a rerun of the same configuration takes its folds from there.

`out` is a local folder or a URI (`s3://bucket/runs`): Ray Train's `storage_path` is then
`<out>/<name>/ray` on that store, and the run's own files are written in a local mirror that is
uploaded after every fold (a rerun downloads them first, so finished folds are still skipped).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ser_dist.errors import ConfigError
from ser_dist.features.store import FeatureIndex, FeatureTable, load_feature_index, load_features
from ser_dist.runs import RunFolder, RunFolds
from ser_dist.storage import Location, StagedDirectory, as_location
from ser_dist.training.config import TrainConfig
from ser_dist.training.metrics import classification_report, mean_std
from ser_dist.training.splits import Fold, full_training_fold, make_folds, protocol_description

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KFoldConfig:
    features_path: str  # a stored feature dataset (`data/features/LOGMEL/EMODB_LOGMEL`) or one version of it
    protocol: str = "loso"  # loso | speaker_kfold | losesso | kfold (random stratified) | full (no test part)
    n_folds: int | None = None  # for speaker_kfold / kfold
    seed: int = 0
    val_fraction: float = 0.15
    out: str = "runs"  # local folder or URI (s3://bucket/runs)
    name: str | None = None  # run folder name; default <dataset>_<protocol>
    feature_version: str | None = None
    # Other stored datasets of the same utterances (e.g. other encoder layers). When given, each fold
    # picks one of (features_path, *candidate_features) by validation UAR of a pooled-feature SVM
    # trained on its training part; the test part never takes part in the choice.
    candidate_features: tuple[str, ...] = ()
    # Domain adaptation: a stored feature dataset of another corpus whose UNLABELLED frames the LMMD
    # term (train.lmmd_weight > 0) aligns with; its labels are never read.
    adapt_to: str | None = None
    target_normalization: str = "source"  # source: the fold's training statistics; target: the target's own
    # Pooled training (training/pool.py): further stores pooled with features_path, one per corpus. The pool keeps
    # the classes every member shares under the cross-corpus mapping (mapping_file overrides entries of the default
    # table) or `pool_classes`, which must be among them; these two also restrict a single store (a baseline on the
    # pool's classes). Speakers are namespaced <CORPUS>_<speaker>.
    pool: tuple[str, ...] = ()
    pool_classes: tuple[str, ...] = ()
    mapping_file: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    # Per-fold TrainConfig overrides on top of `train` ({fold: {"lr": ..., "model": {"width": ...}}}), e.g. the
    # config a nested sweep chose for each outer fold; recorded in each fold's result.json and in summary.json.
    fold_train: dict[int, dict] = field(default_factory=dict)
    # Every this many epochs a fold's workers save their whole trainer state (weights, optimiser, schedule,
    # random generators, best-so-far) to Ray Train storage; a worker or node lost mid-fold then resumes from
    # the last one instead of epoch 0. 0 = only the final checkpoint. Does not change results (not fingerprinted).
    checkpoint_every: int = 1
    # memory: the driver loads the corpus and ray.put's it; stream: each fold's workers stream their parts from the
    # Parquet store through Ray Data (ser_dist.training.streaming; train_global only); auto: stream when the
    # store's float32 matrices exceed AUTO_STREAM_BYTES and the configuration allows it.
    data_loading: str = "memory"
    stream_buffer_rows: int = 256  # rows per shuffle buffer, each sorted by length into batches (stream only)

    def __post_init__(self):
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0 (0 = no resume checkpoints), got {self.checkpoint_every}")
        if self.data_loading not in DATA_LOADING:
            raise ConfigError(f"data_loading must be one of {', '.join(DATA_LOADING)}, got {self.data_loading!r}")
        object.__setattr__(self, "pool", tuple(str(p) for p in self.pool or ()))
        object.__setattr__(self, "pool_classes", tuple(str(c) for c in self.pool_classes or ()))
        if self.pool and self.candidate_features:
            raise ConfigError("candidate_features (per-fold feature choice) cannot be combined with a pool; train the pool on one feature type")
        object.__setattr__(self, "fold_train", {int(k): dict(v) for k, v in (self.fold_train or {}).items()})
        for fold, overrides in self.fold_train.items():
            fixed = sorted(set(overrides) & FOLD_FIXED_KEYS)
            if fixed:
                raise ConfigError(f"fold_train[{fold}] sets {fixed}: resources are the same for every fold; set them in train")
            try:
                apply_train_overrides(self.train, overrides)
            except (ConfigError, TypeError) as exc:
                raise ConfigError(f"fold_train[{fold}]: {exc}") from exc

    def train_for(self, fold: int) -> TrainConfig:
        """The training config of fold `fold`: `train` with its `fold_train` overrides."""
        overrides = self.fold_train.get(int(fold))
        return apply_train_overrides(self.train, overrides) if overrides else self.train

    @property
    def pooled(self) -> bool:
        """True when the data go through training/pool.py (several stores, or a mapping / class restriction)."""
        return bool(self.pool or self.pool_classes or self.mapping_file)

    def load_table(self) -> FeatureTable:
        """The training table: the store at features_path, or the pool (features_path, *pool)."""
        if not self.pooled:
            return load_features(self.features_path, version=self.feature_version)
        from ser_dist.training.pool import build_pool

        if self.feature_version:
            raise ConfigError("feature_version picks a version of one store; point features_path and pool at version folders instead")
        return build_pool([self.features_path, *self.pool], mapping_file=self.mapping_file, classes=self.pool_classes or None)

    def run_name(self, dataset: str) -> str:
        if self.name:
            return self.name
        suffix = f"{self.protocol}{self.n_folds}" if self.n_folds else self.protocol
        return f"{dataset}_{suffix}"

    def fingerprint(self) -> str:
        """Hash of everything that changes a fold's result (not the output location)."""
        blob = {k: v for k, v in asdict(self).items() if k not in ("out", "name", "checkpoint_every")}
        blob["train"] = {k: v for k, v in blob["train"].items() if k not in ("max_concurrent_folds", "cpus_per_worker")}
        if not blob["fold_train"]:
            del blob["fold_train"]  # runs from before per-fold overrides keep their fingerprint
        if blob["data_loading"] == "memory":  # in-memory runs keep the fingerprint they had before streaming existed
            del blob["data_loading"], blob["stream_buffer_rows"]
        for key in ("pool", "pool_classes", "mapping_file"):  # likewise runs from before pooling
            if not blob[key]:
                del blob[key]
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


DATA_LOADING = ("memory", "stream", "auto")
AUTO_STREAM_BYTES = 4 * 2**30  # "auto" streams a store whose float32 matrices take more than this


def resolve_data_loading(config: KFoldConfig) -> tuple[str, FeatureIndex | None]:
    """("memory" | "stream", the store's row index when streaming) for this configuration; "auto" streams a store
    whose float32 matrices exceed AUTO_STREAM_BYTES when the configuration can stream, and reads the index to know.
    "stream" with a configuration that cannot stream raises a ConfigError saying why."""
    from ser_dist.training.streaming import check_streamable, stream_refusal

    if config.data_loading == "memory":
        return "memory", None
    rules = {"normalizations": [config.train_for(k).normalization for k in [*config.fold_train, -1]],
             "candidate_features": config.candidate_features, "adapt_to": config.adapt_to, "pooled": config.pooled}
    if config.data_loading == "stream":
        check_streamable(**rules)
    elif stream_refusal(**rules):
        return "memory", None
    index = load_feature_index(config.features_path, version=config.feature_version)
    size = 4 * int((index.meta["n_frames"].astype(np.int64) * index.meta["dim"].astype(np.int64)).sum())
    if config.data_loading == "auto" and size <= AUTO_STREAM_BYTES:
        return "memory", None
    return "stream", index


FOLD_FIXED_KEYS = frozenset({"num_workers", "use_gpu", "cpus_per_worker", "max_concurrent_folds"})


def apply_train_overrides(base: TrainConfig, overrides: dict) -> TrainConfig:
    """`base` with `overrides` put in; "model" and "augment" take partial dicts of their own fields."""
    data = base.to_dict()
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if key in ("model", "augment") and isinstance(value, dict) else value
    return TrainConfig.from_dict(data)


def duplicate_groups(table: FeatureTable) -> np.ndarray:
    """Group id per row; rows with identical feature matrices (duplicate recordings) share one."""
    digests = [hashlib.blake2b(np.ascontiguousarray(m).tobytes(), digest_size=12).hexdigest() for m in table.features]
    return pd.Series(digests).factorize()[0]


def train_fold_worker(loop_config: dict) -> None:
    """Ray Train worker function: one fold, DDP across the fold's workers when there are several.

    Resumes from the fold's last resume checkpoint when Ray Train restarted it (ser_dist.training.resume)."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from ser_dist.training.checkpoint import save_checkpoint
    from ser_dist.training.data import normalise
    from ser_dist.training.loop import FoldData
    from ser_dist.training.resume import ResumeRecord, fit_fold_resumable, usable_resume_state

    config = TrainConfig.from_dict(loop_config["train"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(loop_config["threads"])))
    if loop_config.get("stream") is not None:  # the parts stream from the store (ser_dist.training.streaming)
        from ser_dist.training.streaming import StreamSource

        payload = loop_config["stream"]
        data = StreamSource.from_train_context(payload)
        standardizer = data.standardizer
    else:
        payload = ray.get(loop_config["payload"])
        train, val, test = (np.asarray(loop_config[k], dtype=np.int64) for k in ("train_idx", "val_idx", "test_idx"))
        features, standardizer = normalise(payload["features"], payload["speakers"], train_positions=train, mode=config.normalization,
                                           corpora=payload.get("corpora"))
        target_features = None
        if loop_config.get("target") is not None:
            raw_target = ray.get(loop_config["target"])
            from ser_dist.training.data import Standardizer

            target_stats = standardizer if loop_config["target_normalization"] == "source" else Standardizer.fit(raw_target)
            target_features = [target_stats.apply(m) for m in raw_target]
        data = FoldData(payload["labels"], features, payload["y"], payload["utterance_ids"], train, val, test, standardizer, target_features)
    device = ray.train.torch.get_device()
    wrap = ray.train.torch.prepare_model if world_size > 1 else (lambda m: m)
    fold = loop_config["fold"]

    previous = ray.train.get_checkpoint()
    if previous is not None and _report_final_again(previous, fold):
        return
    record = ResumeRecord(fold=fold, fingerprint=loop_config["fingerprint"], world_size=world_size)

    def on_epoch(metrics: dict, state_dir: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(state_dir)) if state_dir is not None else None
        ray.train.report({"fold": fold, **metrics}, checkpoint=checkpoint,
                         checkpoint_dir_name=f"epoch_{metrics['epoch']:04d}" if checkpoint is not None else None)

    with (previous.as_directory() if previous is not None else contextlib.nullcontext()) as previous_dir:
        resume_from = usable_resume_state(previous_dir, fold=fold, fingerprint=record.fingerprint, rank=rank, world_size=world_size)
    outcome, record = fit_fold_resumable(
        data, config, record=record, node_id=ray.get_runtime_context().get_node_id(), resume_from=resume_from,
        checkpoint_every=int(loop_config.get("checkpoint_every", 1)), report=on_epoch, device=device, rank=rank, wrap_model=wrap,
    )
    final = {"fold": fold, "epoch": len(outcome.history) + 1, "final": True, "test_uar": outcome.test_report.get("uar", float("nan"))}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            save_checkpoint(
                tmp, model_config=outcome.model_config, state_dict=outcome.best_state, standardizer=standardizer,
                labels=payload["labels"], feature_config=payload["feature_config"],
                extra={"fold": fold, "best_epoch": outcome.best_epoch, "best_val_uar": outcome.best_val_uar,
                       "train_config": config.to_dict(), "normalization": config.normalization, "corpus": payload["corpus"],
                       **record.summary()},
            )
            (Path(tmp) / "outcome.json").write_text(json.dumps(
                {"history": outcome.history, "test_predictions": outcome.test_predictions, "test_report": outcome.test_report,
                 "last_epoch": outcome.last_epoch, "last_epoch_predictions": outcome.last_epoch_predictions,
                 "last_epoch_report": outcome.last_epoch_report}
            ))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(final, checkpoint=checkpoint, checkpoint_dir_name="final")


def _report_final_again(previous, fold: int) -> bool:
    """A restart after the final checkpoint was already saved reports it again instead of training anew."""
    import ray.train

    with previous.as_directory() as directory:
        if not (Path(directory) / "outcome.json").is_file():
            return False
        meta = json.loads((Path(directory) / "checkpoint.json").read_text())
        logger.info("fold %d: the final checkpoint was saved before the restart; reporting it again", fold)
        if ray.train.get_context().get_world_rank() == 0:
            ray.train.report({"fold": fold, "epoch": meta.get("best_epoch", 0), "final": True},
                             checkpoint=ray.train.Checkpoint.from_directory(directory), checkpoint_dir_name="final_again")
        else:
            ray.train.report({"fold": fold, "final": True}, checkpoint=None)
    return True


def _fit_fold_remote(loop_config: dict, train: dict, storage: Location, fold: int, datasets: dict | None = None):
    """Body of the zero-CPU task that drives one fold's TorchTrainer; returns its final checkpoint.

    `datasets` (streaming): Ray Datasets of the fold's parts; only "train" is split across the workers."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    data_options = {"datasets": datasets, "dataset_config": DataConfig(datasets_to_split=["train"])} if datasets else {}

    trainer = TorchTrainer(
        train_fold_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=train["num_workers"], use_gpu=bool(train["use_gpu"]), resources_per_worker={"CPU": train["cpus_per_worker"]}
        ),
        run_config=RunConfig(
            name=f"fold_{fold}",
            **storage.ray_storage(),
            failure_config=FailureConfig(max_failures=2),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
        **data_options,
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"fold {fold} finished without a checkpoint: {result.error}")
    return result.checkpoint


def fold_controller_task():
    """`_fit_fold_remote` as a zero-CPU task pinned to this (the driver's) node.

    Ray Train V2 puts a fit's controller actor on the node of the process that calls `fit()`, so a fold
    whose controller sat on a worker node would die with that node. Pinned here, only the fold's workers
    run on worker nodes; a lost worker node costs a restart of the worker group, which resumes from the
    fold's last checkpoint (FailureConfig(max_failures=2), KFoldConfig.checkpoint_every)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return ray.remote(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False))(_fit_fold_remote)


def run_kfold(config: KFoldConfig) -> dict:
    """Train and score every fold (resuming finished ones); writes and returns the run summary."""
    started = time.perf_counter()
    mode, index = resolve_data_loading(config)
    # streaming: the driver keeps the row index only; the matrices stream to the fold workers
    table = index if mode == "stream" else config.load_table()
    dataset = table.metadata.get("dataset_name") or as_location(config.features_path).name
    location = as_location(config.out) / config.run_name(dataset)
    with StagedDirectory(location, exclude=("ray",)) as staged:
        return _run_kfold(config, table, staged, location, started)


def _run_kfold(config: KFoldConfig, table: FeatureTable | FeatureIndex, staged: StagedDirectory, location: Location, started: float) -> dict:
    import ray

    from ser_dist.ray_runtime import cluster_has_gpu, ensure_ray

    run_dir = staged.local
    run = RunFolder(run_dir)
    fingerprint = config.fingerprint()
    streaming = isinstance(table, FeatureIndex)
    if streaming:
        from ser_dist.training.streaming import StreamedFolds, streamed_duplicate_groups

        groups = streamed_duplicate_groups(table)
    else:
        groups = duplicate_groups(table)
    meta = table.meta.assign(duplicate_group=groups)
    n_dup = int(len(groups) - len(set(groups)))
    if n_dup:
        logger.info("%d duplicate recording(s) found: kept on the same side of every split", n_dup)
    folds = _folds(run, config, meta, fingerprint)
    if config.adapt_to and config.train.lmmd_weight <= 0:
        raise ConfigError("adapt_to needs train.lmmd_weight > 0 (the weight of the LMMD term)")
    if config.train.lmmd_weight > 0 and config.train.num_workers > 1:
        raise ConfigError("LMMD adaptation runs with one Ray Train worker per fold (num_workers=1)")
    if config.target_normalization not in ("source", "target"):
        raise ConfigError(f"target_normalization must be 'source' or 'target', got {config.target_normalization!r}")
    labels = sorted(meta["label"].unique())
    tables = [table] + [_aligned(load_features(path), table) for path in config.candidate_features]
    choice = _choose_features(tables, meta, folds) if len(tables) > 1 else {f.index: (0, []) for f in folds}
    pending = [f for f in folds if not _fold_done(run, f.index, fingerprint)]  # refuses a folder of another configuration
    run.write_run_config({"kfold": asdict(config), "fingerprint": fingerprint, "features": str(table.path),
                          "feature_metadata": table.metadata, "labels": labels, "protocol": _describe(config, len(folds))})
    run.write_folds(RunFolds.from_folds(folds, meta["utterance_id"].tolist(), protocol=_describe(config, len(folds)), seed=config.seed,
                                        val_fraction=config.val_fraction, fingerprint=fingerprint))

    if len(pending) < len(folds):
        logger.info("%d of %d folds already finished in %s; training the other %d", len(folds) - len(pending), len(folds), run_dir, len(pending))
    if pending:
        ensure_ray()
        train = config.train
        use_gpu = cluster_has_gpu() if train.use_gpu is None else train.use_gpu
        label_index = {label: i for i, label in enumerate(labels)}
        needed = sorted({choice[f.index][0] for f in pending})
        target = None
        if config.adapt_to:
            target_table = load_features(config.adapt_to)
            if target_table.dim != tables[0].dim:
                raise ConfigError(f"adapt_to features {target_table.path} have dim {target_table.dim}, the source {tables[0].dim}")
            target = ray.put(target_table.features)
        stream = StreamedFolds(table, labels, buffer_rows=config.stream_buffer_rows, seed=config.seed) if streaming else None
        payloads = {} if streaming else {
            k: ray.put({
                "features": tables[k].features, "speakers": meta["speaker"].tolist(), "utterance_ids": meta["utterance_id"].tolist(),
                "y": meta["label"].map(label_index).to_numpy(np.int64), "labels": labels,
                "feature_config": tables[k].metadata.get("feature_config", {}) | {"encoder": tables[k].metadata.get("encoder", {})},
                "corpus": tables[k].metadata.get("corpus") or meta["corpus"].iloc[0], "corpora": meta["corpus"].tolist(),
                "features_path": str(tables[k].path),
            })
            for k in needed
        }
        train_dict = train.to_dict() | {"use_gpu": use_gpu}
        remote = fold_controller_task()
        per_fold = train.num_workers * (1 if use_gpu else train.cpus_per_worker)
        available = ray.cluster_resources().get("GPU" if use_gpu else "CPU", 1)
        # default: as many folds as fit at once; more would only queue controllers that compete for CPU
        # streamed folds leave one CPU to Ray Data's reads, or every CPU goes to training workers that wait for data
        spare = 1 if streaming and not use_gpu else 0
        limit = train.max_concurrent_folds or max(1, int((available - spare) // per_fold))
        queue, running = list(pending), {}
        while queue or running:
            while queue and len(running) < limit:
                fold = queue.pop(0)
                loop_config = {
                    "payload": payloads.get(choice[fold.index][0]), "target": target, "target_normalization": config.target_normalization,
                    "train": config.train_for(fold.index).to_dict(), "fold": fold.index, "threads": train.cpus_per_worker,
                    "train_idx": fold.train.tolist(), "val_idx": fold.val.tolist(), "test_idx": fold.test.tolist(),
                    "fingerprint": fingerprint, "checkpoint_every": config.checkpoint_every,
                }
                datasets = None
                if stream is not None:
                    loop_config["stream"], datasets = stream.fold_inputs(fold)  # runs the fold's statistics aggregation
                ref = remote.remote(loop_config, train_dict, location / "ray", fold.index, datasets)
                running[ref] = fold
                logger.info("fold %d started (test speakers %s; train %d, val %d, test %d)", fold.index, ",".join(fold.test_speakers) or "-", len(fold.train), len(fold.val), len(fold.test))
            done, _ = ray.wait(list(running), num_returns=1)
            fold = running.pop(done[0])
            checkpoint = ray.get(done[0])
            result = _collect_fold(run, fold, checkpoint, fingerprint, features=str(tables[choice[fold.index][0]].path), selection=choice[fold.index][1],
                                   train_overrides=config.fold_train.get(fold.index, {}))
            staged.sync()  # a remote run folder gets each finished fold right away
            logger.info("fold %d done: test UAR %s WAR %s (best epoch %d, val UAR %.3f)", fold.index, _fmt(result["uar"]), _fmt(result["war"]), result["best_epoch"], result["best_val_uar"])
    summary = summarise(run, folds, labels, config, wall_seconds=time.perf_counter() - started, n_trained=len(pending),
                        location=location, meta=meta, pool=table.metadata.get("pool"))
    if config.protocol != "full":
        from ser_dist.reporting import write_run_report  # matplotlib/openpyxl load only when a run ends

        write_run_report(run_dir)
    return summary


FULL_PROTOCOL = {"protocol": "full", "speaker_independent": None, "n_folds": 1,
                 "description": "trained on the whole corpus; validation speakers held out for epoch selection; no test part"}


def _describe(config: KFoldConfig, n_folds: int) -> dict:
    if config.protocol == "full":
        return FULL_PROTOCOL | {"seed": config.seed}
    return protocol_description(config.protocol, n_folds, config.seed)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _folds(run: RunFolder, config: KFoldConfig, meta: pd.DataFrame, fingerprint: str) -> list[Fold]:
    """The folds recorded in folds.json by an earlier call with this configuration, else newly made."""
    recorded = run.read_folds()
    if recorded is not None and recorded.fingerprint == fingerprint:
        logger.info("folds of %s read from %s", run.name, run.folds_file.redacted())
        return recorded.positions(meta["utterance_id"].tolist())
    if config.protocol == "full":
        return [full_training_fold(meta, seed=config.seed, val_fraction=config.val_fraction)]
    return make_folds(meta, protocol=config.protocol, n_folds=config.n_folds, seed=config.seed, val_fraction=config.val_fraction,
                      groups="duplicate_group")


def _fold_done(run: RunFolder, index: int, fingerprint: str) -> bool:
    if not run.fold_finished(index):
        return False
    if run.read_result(index).get("fingerprint") != fingerprint:
        raise ConfigError(
            f"{run.location.redacted()} holds fold {index} from a different configuration; choose another --name or delete the folder"
        )
    return True


def _aligned(candidate: FeatureTable, reference: FeatureTable) -> FeatureTable:
    if candidate.meta["utterance_id"].tolist() != reference.meta["utterance_id"].tolist():
        raise ConfigError(f"candidate features {candidate.path} do not hold the same utterances as {reference.path}")
    return candidate


def _choose_features(tables: list[FeatureTable], meta: pd.DataFrame, folds: list[Fold]) -> dict[int, tuple[int, list[float]]]:
    from ser_dist.training.selection import pooled_statistics, select_candidate

    pooled = [pooled_statistics(t.features) for t in tables]
    labels = meta["label"].to_numpy()
    choice = {}
    for fold in folds:
        index, scores = select_candidate(pooled, labels, fold.train, fold.val)
        choice[fold.index] = (index, scores)
        logger.info("fold %d: features %s chosen on validation UAR %s", fold.index, tables[index].path.parent.name, [round(s, 3) for s in scores])
    return choice


def _collect_fold(run: RunFolder, fold: Fold, checkpoint, fingerprint: str, *, features: str, selection: list[float],
                  train_overrides: dict | None = None) -> dict:
    target = run.checkpoint_dir(fold.index).local_path  # `run` is the local (staged) folder
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    checkpoint.to_directory(str(target))  # local or remote Ray storage alike
    outcome = json.loads((target / "outcome.json").read_text())
    (target / "outcome.json").unlink()
    run.write_history(fold.index, outcome["history"])
    run.write_predictions(fold.index, outcome["test_predictions"])
    if outcome.get("last_epoch_predictions"):  # the same test part with the last epoch's weights (reported, never selected on)
        run.write_predictions(fold.index, outcome["last_epoch_predictions"], last_epoch=True)
    meta = json.loads((target / "checkpoint.json").read_text())
    report = outcome["test_report"]
    last = outcome.get("last_epoch_report") or {}
    result = {
        "fold": fold.index, "fingerprint": fingerprint, "test_speakers": list(fold.test_speakers),
        "n_train": len(fold.train), "n_val": len(fold.val), "n_test": len(fold.test),
        "uar": report.get("uar"), "war": report.get("war"), "macro_f1": report.get("macro_f1"),
        "best_epoch": meta["best_epoch"], "best_val_uar": meta["best_val_uar"], "epochs_run": len(outcome["history"]),
        "features": features, "feature_selection_val_uar": selection, "train_overrides": train_overrides or {},
        "last_epoch": outcome.get("last_epoch"), "last_epoch_uar": last.get("uar"), "last_epoch_war": last.get("war"),
        # restarts of this fold (a lost worker or node): the epoch each continued from, and every attempt's node
        "resumed_from_epochs": meta.get("resumed_from_epochs", []), "attempts": meta.get("attempts", []),
        "worker_nodes": meta.get("worker_nodes", []),
        "report": report,
    }
    run.write_result(fold.index, result)  # written last: marks the fold finished
    return result


def summarise(run_dir: Path | RunFolder, folds: list[Fold], labels: list[str], config: KFoldConfig, *, wall_seconds: float, n_trained: int,
              location: Location | None = None, meta: pd.DataFrame | None = None, pool: dict | None = None) -> dict:
    """Pooled and per-fold scores of a finished run; `location` is where the run lives when `run_dir` is a local mirror.

    `meta` (the run's rows, aligned with the folds' positions) gives per-corpus scores and per_corpus normalisation's
    transductive folds when the run pools several corpora; `pool` is the pool's record (training/pool.py)."""
    run = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
    name, where = (location.name, location.redacted()) if location is not None else (run.name, run.location.redacted())
    results = [run.read_result(f.index) for f in folds]
    if not any(r["n_test"] for r in results):  # protocol "full": a model of the whole corpus, nothing to score
        summary = {"run": name, "location": where, "protocol": _describe(config, 1),
                   "features": str(config.features_path), "labels": labels, "folds": results, "train_config": config.train.to_dict(), "wall_seconds": wall_seconds}
        run.write_summary(summary)
        return summary
    per_fold = [run.read_predictions(f.index) for f in folds]
    recorded = run.read_folds()
    if recorded is not None:  # each fold scored exactly the utterances folds.json says it tested
        for fold, fold_predictions in zip(folds, per_fold, strict=True):
            if set(fold_predictions["utterance_id"]) != set(recorded.fold(fold.index).test):
                raise RuntimeError(f"fold {fold.index}: predictions.csv does not hold the test utterances folds.json records")
    predictions = pd.concat(per_fold, ignore_index=True)
    pooled = classification_report(predictions["true"].tolist(), predictions["pred"].tolist(), labels)
    if pooled["n"] != sum(r["n_test"] for r in results) or predictions["utterance_id"].duplicated().any():
        raise RuntimeError("test predictions do not cover each test utterance exactly once")
    summary = {
        "run": name,
        "location": where,
        "protocol": _describe(config, len(folds)),
        "features": str(config.features_path),
        "labels": labels,
        "folds": [{k: r.get(k) for k in ("fold", "test_speakers", "uar", "war", "macro_f1", "n_train", "n_val", "n_test", "best_epoch", "best_val_uar", "epochs_run", "features", "train_overrides")} for r in results],
        "uar": pooled["uar"], "war": pooled["war"], "macro_f1": pooled["macro_f1"],
        "fold_uar": mean_std([r["uar"] for r in results]), "fold_war": mean_std([r["war"] for r in results]),
        "per_class": pooled["per_class"], "confusion": pooled["confusion"], "n_test": pooled["n"],
        "train_config": config.train.to_dict(), "fold_train": config.fold_train,
        "wall_seconds": wall_seconds, "folds_trained_this_run": n_trained,
        "normalization": _normalizations(config, [f.index for f in folds], folds=folds, meta=meta),
        "model_selection": (
            "epoch chosen on a validation part carved from each fold's training side; test fold scored once"
            if all(r["n_val"] for r in results) else "no validation part: the last epoch's weights are scored"
        ),
    }
    if pool is not None:
        summary["pool"] = pool
    if meta is not None and meta["corpus"].nunique() > 1:
        summary["per_corpus"] = per_corpus_scores(predictions, meta, labels)
    if all(run.predictions_file(f.index, last_epoch=True).is_file() for f in folds) and all(r["n_val"] for r in results):
        last = pd.concat([run.read_predictions(f.index, last_epoch=True) for f in folds], ignore_index=True)
        last_report = classification_report(last["true"].tolist(), last["pred"].tolist(), labels)
        summary["last_epoch"] = {
            "uar": last_report["uar"], "war": last_report["war"], "macro_f1": last_report["macro_f1"],
            "note": "the same test folds scored with each fold's LAST epoch (TIM-Net's published protocol); "
                    "reported beside the validation-selected figures, never used to choose anything",
        }
    run.write_summary(summary)
    return summary


def per_corpus_scores(predictions: pd.DataFrame, meta: pd.DataFrame, labels: list[str]) -> dict:
    """UAR/WAR/macro-F1 of the pooled test predictions, per corpus of the pool (a corpus's missing classes are skipped)."""
    corpus_of = dict(zip(meta["utterance_id"], meta["corpus"], strict=True))
    corpora = predictions["utterance_id"].map(corpus_of)
    out = {}
    for corpus in sorted(corpora.dropna().unique()):
        part = predictions[corpora == corpus]
        present = [label for label in labels if label in set(part["true"])]
        report = classification_report(part["true"].tolist(), part["pred"].tolist(), present)
        out[corpus] = {"uar": report["uar"], "war": report["war"], "macro_f1": report["macro_f1"], "n_test": report["n"],
                       "classes": present, "per_class": report["per_class"]}
    return out


def _normalizations(config: KFoldConfig, fold_indices: list[int], *, folds: list[Fold] | None = None, meta: pd.DataFrame | None = None) -> dict:
    """normalization_description of the run's mode, or of each fold's when fold_train gives folds different ones.

    With `folds` and `meta`, per_corpus names the folds where a corpus had no training rows (transductive there)."""
    modes = {k: config.train_for(k).normalization for k in fold_indices}
    by_index = {f.index: f for f in folds or []}

    def describe(mode: str, indices: list[int]) -> dict:
        if mode != "per_corpus" or meta is None:
            return normalization_description(mode)
        from ser_dist.training.data import corpus_statistics_source

        corpora = meta["corpus"].astype(str).tolist()
        own = {k: sorted(c for c, src in corpus_statistics_source(corpora, by_index[k].train).items() if src != "training part")
               for k in indices if k in by_index}
        return normalization_description(mode, own_statistics={k: v for k, v in own.items() if v})

    if len(set(modes.values())) <= 1:
        mode = config.train.normalization if not modes else next(iter(modes.values()))
        return describe(mode, fold_indices)
    per_fold = {k: describe(m, [k]) for k, m in modes.items()}
    return {"mode": "per fold: " + ", ".join(f"{k}={m}" for k, m in modes.items()),
            "transductive": any(d["transductive"] for d in per_fold.values()), "per_fold": per_fold}


def normalization_description(mode: str, *, own_statistics: dict[int, list[str]] | None = None) -> dict:
    """How a run's inputs were normalised, and whether that read unlabelled test audio (transductive).

    `own_statistics` (per_corpus): fold -> corpora with no training rows there, standardised by their own frames."""
    if mode == "per_speaker":
        return {"mode": mode, "transductive": True,
                "statistics": "each speaker's own frames (test speakers included: their unlabelled audio sets their statistics)"}
    if mode == "per_corpus":
        described = {"mode": mode, "transductive": bool(own_statistics),
                     "statistics": "each corpus's mean/std over its rows in the fold's training part; a corpus with no training rows "
                                   "(the held-out corpus of leave-one-corpus-out) uses all of its own frames (transductive, unlabelled)"}
        if own_statistics:
            described["own_statistics"] = {str(k): v for k, v in sorted(own_statistics.items())}
        return described
    return {"mode": mode, "transductive": False, "statistics": "mean/std of the fold's training part only"}


def format_summary_table(summary: dict) -> str:
    lines = [f"run {summary['run']} — protocol {summary['protocol']['protocol']} ({summary['protocol'].get('description', '')})",
             f"{'fold':>4} {'test speakers':<24} {'n':>4} {'UAR':>6} {'WAR':>6} {'best ep':>7}"]
    for f in summary["folds"]:
        lines.append(f"{f['fold']:>4} {','.join(f['test_speakers'])[:24]:<24} {f['n_test']:>4} {f['uar']:>6.3f} {f['war']:>6.3f} {f['best_epoch']:>7}")
    lines.append(f"pooled UAR {summary['uar']:.3f}  WAR {summary['war']:.3f}  macro-F1 {summary['macro_f1']:.3f}  "
                 f"fold UAR {summary['fold_uar']['mean']:.3f}±{summary['fold_uar']['std']:.3f}")
    if summary.get("last_epoch"):
        lines.append(f"last epoch instead of the validation-selected one: UAR {summary['last_epoch']['uar']:.3f}  "
                     f"WAR {summary['last_epoch']['war']:.3f}")
    for corpus, scores in (summary.get("per_corpus") or {}).items():
        lines.append(f"  {corpus}: UAR {scores['uar']:.3f}  WAR {scores['war']:.3f}  (n={scores['n_test']})")
    norm = summary.get("normalization") or {}
    if norm:
        lines.append(f"normalisation: {norm['mode']} (transductive: {str(norm['transductive']).lower()})")
    return "\n".join(lines)
