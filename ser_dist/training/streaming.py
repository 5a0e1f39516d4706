"""Folds that stream from the Parquet feature store (`KFoldConfig.data_loading = "stream"`).

No process holds the corpus. The driver reads only the store's row index (ids, speakers, labels,
lengths) to make the same folds as the in-memory path; duplicate recordings are found by hashing
each row's matrix one record batch at a time. For each fold it then

- builds one Ray Dataset per part (`train`, `val`, `test`) over the store's part files, each
  keeping only that part's utterance ids;
- computes the fold's normalisation statistics from the training part only: Ray Data tasks compute
  per-batch moments (frame count, sum and sum of squares per dimension, `batch_moments`) that the
  driver sums;
- reads the validation part once into Ray's object store (blocks, spilled to disk under pressure; no
  process holds them) when it is at most `VAL_MATERIALIZE_BYTES`, so the per-epoch validation does not
  read and filter every part file again; a larger validation part streams like the training part;
- hands the datasets to the fold's `TorchTrainer` (`datasets=`); the training part is split across
  the fold's workers, validation and test are read whole by every worker.

In the worker, `StreamSource` (a `ser_dist.training.loop.BatchSource`) reads its shard with
`ray.train.get_dataset_shard`: the part files in a seeded random order plus a local shuffle buffer of
`buffer_rows` rows; each buffer is sorted by length (with jitter) into batches whose order is
shuffled, so batches are length-bucketed within a buffer. Validation and test rows are read in
buffers too, scored, and returned sorted by utterance id.

Not supported when streaming (each raises a ConfigError that says so): per_speaker normalisation,
candidate_features and adapt_to/LMMD; these need every row at once, use data_loading="memory".

Ray Data does not preserve block order across parallel reads, so two streamed runs of one
configuration can see different batch orders: results agree within run-to-run noise, not bit for bit.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ser_dist.errors import ConfigError
from ser_dist.features.store import FeatureIndex, decode_features, iter_stored_features
from ser_dist.training.data import Standardizer, length_buckets
from ser_dist.training.loop import Batch, PredictFn

STREAM_COLUMNS = ["utterance_id", "label", "n_frames", "dim", "features"]
PARTS = ("train", "val", "test")
VAL_MATERIALIZE_BYTES = 2 * 2**30  # a validation part up to this (stored bytes) is read once per fold
STD_EPS = 1e-5  # as Standardizer.fit


def stream_refusal(*, normalizations: list[str], candidate_features: tuple[str, ...], adapt_to: str | None, pooled: bool = False) -> str | None:
    """Why streaming cannot train this configuration (a message that says what to use instead), or None."""
    if pooled:
        return "data_loading='stream' does not take a pool yet: train the pool with data_loading='memory'"
    if any(mode != "train_global" for mode in normalizations):
        return ("data_loading='stream' supports normalization='train_global' only (per_speaker statistics read every "
                "speaker's frames, test speakers included); use data_loading='memory' for per_speaker")
    if candidate_features:
        return "data_loading='stream' does not choose between candidate_features; use data_loading='memory'"
    if adapt_to:
        return "data_loading='stream' does not support adapt_to (LMMD keeps the target corpus in memory); use data_loading='memory'"
    return None


def check_streamable(**configuration) -> None:
    """Raise a ConfigError naming what streaming cannot do with this configuration (keywords of `stream_refusal`)."""
    refusal = stream_refusal(**configuration)
    if refusal:
        raise ConfigError(refusal)


def streamed_duplicate_groups(index: FeatureIndex, *, batch_rows: int = 256) -> np.ndarray:
    """Group id per row of `index.meta` (rows with identical matrices share one), as `kfold.duplicate_groups`
    gives for the in-memory table, reading one record batch at a time."""
    digests: dict[str, str] = {}
    for ids, column, _, _ in iter_stored_features(index.parts, batch_rows=batch_rows):
        offsets = column.offsets.to_numpy()
        values = column.flatten().to_numpy(zero_copy_only=False)
        first = int(offsets[0])
        for i, utterance_id in enumerate(ids):
            raw = np.ascontiguousarray(values[int(offsets[i]) - first : int(offsets[i + 1]) - first])
            digests[utterance_id] = hashlib.blake2b(raw.tobytes(), digest_size=12).hexdigest()
    missing = set(index.meta["utterance_id"]) - set(digests)
    if missing:
        raise RuntimeError(f"{index.path} changed while it was read: {len(missing)} utterance(s) have no features")
    return pd.Series([digests[u] for u in index.meta["utterance_id"]]).factorize()[0]


def stored_dataset(index: FeatureIndex, *, seed: int | None = None):
    """A Ray Dataset over the store's part files with the columns training needs; `seed` shuffles the file order
    (instead of `randomize_block_order`, an all-to-all step that would hold every block of the part at once)."""
    import ray.data

    paths = [p.path for p in index.parts]
    if seed is not None:
        paths = [paths[i] for i in np.random.default_rng(seed).permutation(len(paths))]
    return ray.data.read_parquet(paths, filesystem=index.parts[0].filesystem, columns=STREAM_COLUMNS)


def _keep_rows(batch: pa.Table, *, ids: pa.Array) -> pa.Table:
    return batch.filter(pc.is_in(batch["utterance_id"], value_set=ids))


def part_dataset(dataset, utterance_ids: list[str]):
    """`dataset` restricted to the rows whose utterance_id is in `utterance_ids`."""
    keep = functools.partial(_keep_rows, ids=pa.array(sorted(utterance_ids), pa.string()))
    return dataset.map_batches(keep, batch_format="pyarrow", batch_size=None, zero_copy_batch=True)


MOMENT_CHUNK_FRAMES = 16384  # frames converted to float64 at a time (bounds a task's extra memory)


def batch_moments(table: pa.Table, *, dim: int) -> pa.Table:
    """One row: [frame count, per-dimension sum, per-dimension sum of squares] (float64) of a batch's `features`.

    Frames are summed in chunks, so a task holds its batch plus one float64 chunk, whatever the batch size."""
    out = np.zeros(2 * dim + 1)
    if table.num_rows:
        values = table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        frames = values.reshape(-1, dim)  # (sum T_i, D), stored dtype (float32 or float16)
        out[0] = frames.shape[0]
        for start in range(0, frames.shape[0], MOMENT_CHUNK_FRAMES):
            chunk = frames[start : start + MOMENT_CHUNK_FRAMES].astype(np.float64)
            out[1 : 1 + dim] += chunk.sum(axis=0)
            out[1 + dim :] += np.einsum("ij,ij->j", chunk, chunk)
    return pa.table({"moments": pa.array([out], pa.list_(pa.float64()))})


def standardizer_from_moments(moments: np.ndarray, dim: int, *, eps: float = STD_EPS) -> Standardizer:
    """Mean/std per dimension from [n, sums, sums of squares] (the same formula as Standardizer.fit)."""
    moments = np.asarray(moments, np.float64)
    n = moments[0]
    if n <= 0:
        raise ValueError("cannot fit normalisation statistics on zero frames")
    mean = moments[1 : 1 + dim] / n
    var = np.maximum(moments[1 + dim :] / n - mean**2, 0.0)
    return Standardizer(mean.astype(np.float32), np.sqrt(var + eps).astype(np.float32))


def train_statistics(train_dataset, dim: int) -> Standardizer:
    """The fold's Standardizer from its training rows only: per-batch moments computed by Ray Data tasks (a streaming
    map, no all-to-all aggregation that would buffer blocks), summed here."""
    moments = train_dataset.map_batches(functools.partial(batch_moments, dim=dim), batch_format="pyarrow", zero_copy_batch=True)
    total = np.zeros(2 * dim + 1)
    for batch in moments.iter_batches(batch_format="pyarrow", batch_size=None):
        for row in batch.column("moments").to_pylist():
            total += np.asarray(row, np.float64)
    return standardizer_from_moments(total, dim)


@dataclass
class StreamedFolds:
    """Driver side: builds each fold's datasets, statistics and worker inputs from a store's row index."""

    index: FeatureIndex
    labels: list[str]
    buffer_rows: int = 256
    seed: int = 0

    def __post_init__(self):
        if self.buffer_rows < 1:
            raise ConfigError(f"stream_buffer_rows must be >= 1, got {self.buffer_rows}")
        self.label_index = {label: i for i, label in enumerate(self.labels)}
        self.dataset = stored_dataset(self.index)

    def stored_bytes(self, positions: np.ndarray) -> int:
        """Bytes of the feature matrices of these rows as stored (float32 or float16)."""
        rows = self.index.meta.iloc[np.asarray(positions, np.int64)]
        itemsize = 2 if self.index.storage_dtype == "float16" else 4
        return itemsize * int((rows["n_frames"].astype(np.int64) * rows["dim"].astype(np.int64)).sum())

    def part_ids(self, positions: np.ndarray) -> list[str]:
        return self.index.meta["utterance_id"].iloc[np.asarray(positions, np.int64)].tolist()

    def fold_inputs(self, fold) -> tuple[dict, dict]:
        """(the worker's `stream` spec, the TorchTrainer's datasets) for one fold; runs the statistics aggregation."""
        ids = {part: self.part_ids(getattr(fold, part)) for part in PARTS}
        datasets = {part: part_dataset(self.dataset, ids[part]) for part in PARTS if ids[part]}
        standardizer = train_statistics(datasets["train"], self.index.dim)
        if "val" in datasets and self.stored_bytes(fold.val) <= VAL_MATERIALIZE_BYTES:
            datasets["val"] = datasets["val"].materialize()
        datasets["train"] = part_dataset(stored_dataset(self.index, seed=self.seed + 7919 * int(fold.index)), ids["train"])
        meta = self.index.meta
        spec = {
            "labels": self.labels, "input_dim": self.index.dim, "buffer_rows": self.buffer_rows,
            "mean": standardizer.mean.tolist(), "std": standardizer.std.tolist(),
            "train_labels": meta["label"].iloc[np.asarray(fold.train, np.int64)].map(self.label_index).astype(int).tolist(),
            "part_sizes": {part: len(ids[part]) for part in PARTS},
            "feature_config": self.index.metadata.get("feature_config", {}) | {"encoder": self.index.metadata.get("encoder", {})},
            "corpus": meta["corpus"].iloc[0], "features_path": str(self.index.path),
        }
        return spec, datasets


class StreamSource:
    """Worker side: a `BatchSource` over this worker's Ray Data shards of one fold."""

    target_features = None  # no LMMD when streaming

    def __init__(self, spec: dict, shards: dict):
        self.labels = list(spec["labels"])
        self.input_dim = int(spec["input_dim"])
        self.train_labels = np.asarray(spec["train_labels"], np.int64)
        self.part_sizes = {k: int(v) for k, v in spec["part_sizes"].items()}
        self.buffer_rows = int(spec["buffer_rows"])
        self.standardizer = Standardizer(np.asarray(spec["mean"], np.float32), np.asarray(spec["std"], np.float32))
        self.label_index = {label: i for i, label in enumerate(self.labels)}
        self.shards = shards

    @classmethod
    def from_train_context(cls, spec: dict) -> StreamSource:
        """Inside a Ray Train worker: the fold's shards from `ray.train.get_dataset_shard`."""
        import ray.train

        return cls(spec, {part: ray.train.get_dataset_shard(part) for part in PARTS if spec["part_sizes"][part]})

    def steps_per_epoch(self, batch_size: int, world_size: int) -> int:
        # the training part is split equally across workers (streaming_split(equal=True)), n // world_size rows each
        return max(1, math.ceil((self.part_sizes["train"] // world_size) / batch_size))

    def _decode(self, table: pa.Table) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
        matrices = decode_features(table.column("features"), table.column("n_frames").to_numpy(), table.column("dim").to_numpy())
        labels = table.column("label").to_pylist()
        unknown = sorted(set(labels) - set(self.label_index))
        if unknown:
            raise ValueError(f"labels {unknown} in the store are not among the run's labels {self.labels}; the store changed during the run")
        y = np.array([self.label_index[label] for label in labels], np.int64)
        return [self.standardizer.apply(m) for m in matrices], y, table.column("utterance_id").to_pylist()

    def train_batches(self, epoch: int, *, batch_size: int, seed: int, rank: int, world_size: int) -> Iterator[Batch]:
        # a buffer that is a whole number of batches gives ceil(rows / batch_size) batches per epoch, as in memory
        buffer = batch_size * max(1, math.ceil(self.buffer_rows / batch_size))
        epoch_seed = (seed * 7919 + epoch) * 1009 + rank
        rng = np.random.default_rng(epoch_seed)
        tables = self.shards["train"].iter_batches(batch_size=buffer, batch_format="pyarrow", local_shuffle_buffer_size=buffer,
                                                   local_shuffle_seed=epoch_seed)
        for table in tables:
            matrices, y, _ = self._decode(table)
            for batch in length_buckets(np.array([m.shape[0] for m in matrices]), batch_size, rng=rng):
                yield [matrices[i] for i in batch], y[batch]

    def part_size(self, part: str) -> int:
        if part not in ("val", "test"):
            raise ValueError(f"unknown part {part!r}; expected 'val' or 'test'")
        return self.part_sizes[part]

    def predict(self, part: str, predict_fn: PredictFn) -> tuple[np.ndarray, np.ndarray, list[str]]:
        if not self.part_size(part):
            return np.zeros((0, len(self.labels)), np.float32), np.zeros(0, np.int64), []
        probs, ys, ids = [], [], []
        for table in self.shards[part].iter_batches(batch_size=self.buffer_rows, batch_format="pyarrow"):
            matrices, y, utterance_ids = self._decode(table)
            probs.append(predict_fn(matrices))
            ys.append(y)
            ids += utterance_ids
        if len(ids) != self.part_sizes[part] or len(set(ids)) != len(ids):
            raise RuntimeError(f"the {part} part streamed {len(ids)} rows ({len(set(ids))} distinct), expected {self.part_sizes[part]}")
        order = np.argsort(np.array(ids), kind="stable")  # utterance-id order, as the in-memory path's positions
        return np.concatenate(probs)[order], np.concatenate(ys)[order], [ids[i] for i in order]
