"""Feature extraction on Ray Data: manifest -> actor pool (CPU or GPU) -> Parquet parts, streamed.

The driver holds only the manifest (paths and labels) and per-utterance summaries; audio and
feature matrices live in the workers, which write their own parts atomically. A rerun reads which
utterances are already stored and extracts only the rest, so nothing finished is redone or lost.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from ser_dist.errors import AudioError, ConfigError, FeatureStoreError
from ser_dist.features.config import FeatureConfig
from ser_dist.features.spec import EncoderIdentity, FeatureSpec
from ser_dist.features.store import (
    META_COLUMNS,
    feature_schema,
    features_to_table,
    part_files,
    read_metadata,
    read_part_provenance,
    remove_stale_temporaries,
    stored_utterance_ids,
    version_dir,
    write_metadata,
    write_part_atomically,
)
from ser_dist.storage import Location, as_location

logger = logging.getLogger(__name__)
SUMMARY_COLUMNS = ("utterance_id", "path", "status", "reason", "n_frames", "audio_s")


@dataclass(frozen=True)
class ExtractionOptions:
    num_workers: int | None = None  # actors in the pool; None = one per CPU (or per GPU)
    batch_size: int = 32  # utterances per worker call and per Parquet part
    use_gpu: bool | None = None  # None = use GPUs when the cluster has them
    cpus_per_worker: float = 1.0

    def __post_init__(self):
        if self.num_workers is not None and self.num_workers < 1:
            raise ConfigError(f"num_workers must be >= 1, got {self.num_workers}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class ExtractionResult:
    directory: Location
    n_total: int
    n_extracted: int  # in this run
    n_already_done: int
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    audio_seconds: float = 0.0  # of the utterances extracted in this run

    @property
    def up_to_date(self) -> bool:
        return self.n_extracted == 0 and not self.skipped


class FeatureWorker:
    """A Ray Data actor: loads audio, computes features, writes one Parquet part per batch."""

    def __init__(self, config: dict, directory: str, device: str, torch_threads: int):
        import torch

        from ser_dist.features.compute import FeatureComputer

        torch.set_num_threads(max(1, torch_threads))
        self.config = FeatureConfig.from_dict(config)
        self.directory = as_location(directory)
        self.computer = FeatureComputer(self.config, device=device)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from ser_dist.audio import load_audio

        summaries, signals, kept = [], [], []
        for position, row in enumerate(batch.itertuples(index=False)):
            try:
                signals.append(load_audio(row.path))
                kept.append(position)
            except AudioError as exc:
                summaries.append((row.utterance_id, row.path, "skipped", exc.problem, 0, 0.0))
        if signals:
            matrices = self.computer.compute(signals)
            rows = batch.iloc[kept]
            provenance = {"dim": int(matrices[0].shape[1]), "encoder": self.computer.encoder_metadata()}
            table = features_to_table(rows, matrices, self.config.storage_dtype, provenance=provenance)
            write_part_atomically(self.directory, table)
            for row, signal, matrix in zip(rows.itertuples(index=False), signals, matrices, strict=True):
                summaries.append((row.utterance_id, row.path, "ok", "", int(matrix.shape[0]), len(signal) / 16_000))
        return pd.DataFrame(summaries, columns=list(SUMMARY_COLUMNS))


def extract_features(
    manifest: pd.DataFrame,
    config: FeatureConfig,
    out_root: Path | str | Location,
    *,
    corpus: str,
    options: ExtractionOptions | None = None,
) -> ExtractionResult:
    """Extract `config` features of every manifest row into the store under `out_root` (resumable)."""
    options = options or ExtractionOptions()
    started = time.perf_counter()
    directory = version_dir(out_root, config, corpus)
    directory.mkdir()
    with exclusive_writer(directory):
        return _extract_locked(manifest, config, directory, corpus=corpus, options=options, started=started)


@contextmanager
def exclusive_writer(directory: Location):
    """One extraction at a time per version folder: a second one fails fast instead of writing duplicates."""
    directory = as_location(directory)
    if not directory.is_local:
        with _remote_lease(directory):
            yield
        return
    lock_path = directory.local_path / ".lock"
    handle = open(lock_path, "a+")  # noqa: SIM115 - held for the whole extraction
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise FeatureStoreError(
                f"another extraction ({owner}) is writing to {directory}; wait for it to finish, then rerun (finished work is kept)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield
    finally:
        handle.close()


@contextmanager
def _remote_lease(directory: Location):
    """Object stores have no file locks: a lease object names the writer and is removed at the end.

    Best effort (check, then write): it stops the common mistake of starting the same extraction twice.
    A run that died leaves its lease behind; the error says which object to delete.
    """
    lease = directory / ".lease"
    if lease.is_file():
        raise FeatureStoreError(
            f"another extraction ({lease.read_text().strip() or 'unknown'}) holds {lease.redacted()}; wait for it to finish "
            f"and rerun, or delete that object if the run died (finished parts are kept)"
        )
    lease.write_text(f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(UTC).isoformat(timespec='seconds')}")
    try:
        yield
    finally:
        lease.unlink(missing_ok=True)


def _extract_locked(manifest: pd.DataFrame, config: FeatureConfig, directory: Location, *, corpus: str, options: ExtractionOptions, started: float) -> ExtractionResult:
    import ray

    from ser_dist.ray_runtime import cluster_cpus, cluster_has_gpu, ensure_ray

    stale = remove_stale_temporaries(directory)
    if stale:
        logger.warning("removed %d half-written file(s) an interrupted run left in %s", stale, directory.redacted())
    done = stored_utterance_ids(directory)
    todo = manifest[~manifest["utterance_id"].isin(done)]
    previous = read_metadata(directory) or {}
    logger.info("%s: %d utterances, %d already stored in %s, %d to extract", corpus, len(manifest), len(done & set(manifest["utterance_id"])), directory.redacted(), len(todo))

    summaries = []
    if len(todo):
        ensure_ray()
        use_gpu = cluster_has_gpu() if options.use_gpu is None else options.use_gpu
        n_workers = options.num_workers or (int(ray.cluster_resources().get("GPU", 1)) if use_gpu else cluster_cpus())
        # Length-sorted batches: similar durations share a batch, so padding stays small.
        ordered = todo.sort_values("duration_s", kind="stable")
        blocks = [ordered.iloc[i : i + options.batch_size] for i in range(0, len(ordered), options.batch_size)]
        dataset = ray.data.from_pandas([b[["utterance_id", "path", *_meta_columns()]] for b in blocks])
        threads = max(1, int(options.cpus_per_worker))
        processed = dataset.map_batches(
            FeatureWorker,
            fn_constructor_kwargs={
                "config": FeatureSpec(config).to_json()["config"],  # runtime options too (encoder batch size)
                "directory": str(directory),
                "device": "cuda" if use_gpu else "cpu",
                "torch_threads": threads,
            },
            batch_size=None,  # one block = one length-grouped batch
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=n_workers),
            num_cpus=options.cpus_per_worker,
            num_gpus=1 if use_gpu else 0,
        )
        for batch in processed.iter_batches(batch_size=None, batch_format="pandas"):
            summaries.append(batch)
            n_seen = sum(len(b) for b in summaries)
            logger.info("%s %s: %d/%d utterances processed", corpus, config.feature_type.value, n_seen, len(todo))
    summary = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    skipped = summary[summary["status"] == "skipped"][["utterance_id", "path", "reason"]].to_dict("records")
    for item in skipped:
        logger.warning("skipped %s: %s", item["path"], item["reason"])

    stored = stored_utterance_ids(directory)
    wanted = set(manifest["utterance_id"])
    missing = wanted - stored - {s["utterance_id"] for s in skipped}
    if missing:
        raise RuntimeError(f"{len(missing)} utterances neither stored nor skipped (e.g. {sorted(missing)[:3]}); rerun to resume")
    ok = summary[summary["status"] == "ok"]
    result = ExtractionResult(
        directory=directory,
        n_total=len(manifest),
        n_extracted=len(ok),
        n_already_done=len(wanted & done),
        skipped=skipped,
        seconds=time.perf_counter() - started,
        audio_seconds=float(ok["audio_s"].sum()) if len(ok) else 0.0,
    )
    write_metadata(directory, _metadata(config, corpus, manifest, result, previous, stored & wanted))
    return result


def _meta_columns() -> list[str]:
    return [c for c in META_COLUMNS if c != "utterance_id"]


def _metadata(config: FeatureConfig, corpus: str, manifest: pd.DataFrame, result: ExtractionResult, previous: dict, stored: set) -> dict:
    from importlib.metadata import version

    provenances = [read_part_provenance(p) for p in part_files(result.directory)]  # schema footers only
    provenance = provenances[-1] if provenances else {}
    hashes = {str((p.get("encoder") or {}).get("weight_hash")) for p in provenances}
    if len(hashes) > 1:
        raise FeatureStoreError(
            f"{result.directory.redacted()} holds parts made with different encoder weights ({sorted(hashes)}): two "
            "encoder folders with the same name were used; delete the version folder and extract again"
        )
    encoder = provenance.get("encoder", previous.get("encoder", {}))
    dim = provenance.get("dim", previous.get("dim"))
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return {
        "status": "complete",
        "corpus": corpus,
        "feature_config": config.to_dict(),
        "feature_spec": FeatureSpec(config, EncoderIdentity.from_json(encoder)).to_json(),
        "version": config.version(),
        "dataset_name": config.dataset_name(corpus),
        "dim": dim,
        "frame_rate": (config.logmel.sample_rate / config.logmel.hop_length) if not config.feature_type.uses_encoder else 50.0,
        "encoder": encoder,
        "schema": str(feature_schema(config.storage_dtype)),
        "counts": {
            "manifest": len(manifest),
            "stored": len(stored),
            "skipped": len(result.skipped),
            "extracted_this_run": result.n_extracted,
            "already_stored": result.n_already_done,
        },
        "skipped": result.skipped,
        "created_at": previous.get("created_at", now),
        "completed_at": now,
        "versions": {"ser_dist": version("ser-dist"), "torch": version("torch"), "transformers": version("transformers"), "ray": version("ray")},
        "label_counts": {k: int(v) for k, v in manifest[manifest["utterance_id"].isin(stored)]["label"].value_counts().items()},
    }
