"""Resuming an interrupted fold: a FoldTrainer's state as a checkpoint folder, and the epoch loop that writes it.

A fold's Ray Train workers report such a folder every `checkpoint_every` epochs; when a worker (or its
node) is lost, Ray Train restarts the worker group and `fit_fold_resumable` continues from the last
folder instead of epoch 0. One pair of files per worker rank, so each rank gets back its own random
generators (DDP ranks draw different crops and masks):

    trainer_rank<r>.safetensors  every tensor of FoldTrainer.state_dict(): weights, optimiser moments,
                                 the best epoch's weights, torch random generator states
    trainer_rank<r>.json         the rest (epoch, scheduler, numpy generator, best-so-far, history) with each
                                 tensor replaced by its key, plus `resume`: the fold, the run fingerprint, the
                                 world size and every attempt so far (node id, epoch it started from)

No pickles (../../STYLE.md). No Ray in here: `ser_dist.training.kfold` wires it to ray.train.report /
ray.train.get_checkpoint, and tests drive it with plain folders.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ser_dist.errors import ModelLoadError
from ser_dist.training.config import TrainConfig
from ser_dist.training.loop import FoldData, FoldOutcome, FoldTrainer

logger = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 1


@dataclass
class ResumeRecord:
    """Who trained a fold and from where: written into every resume checkpoint and the final one."""

    fold: int
    fingerprint: str
    world_size: int
    attempts: list[dict] = field(default_factory=list)  # {"node_id": ..., "start_epoch": ...}, in order

    @property
    def resumed_from_epochs(self) -> list[int]:
        """The epoch each restarted attempt continued from (empty: trained in one go)."""
        return [int(a["start_epoch"]) for a in self.attempts[1:]]

    def summary(self) -> dict:
        """What result.json records about the fold's attempts."""
        return {"resumed_from_epochs": self.resumed_from_epochs, "attempts": [dict(a) for a in self.attempts],
                "worker_nodes": sorted({a["node_id"] for a in self.attempts if a.get("node_id")})}


def _state_files(directory: Path, rank: int) -> tuple[Path, Path]:
    return directory / f"trainer_rank{rank}.safetensors", directory / f"trainer_rank{rank}.json"


def is_resume_checkpoint(directory: Path | str, *, rank: int = 0) -> bool:
    return all(p.is_file() for p in _state_files(Path(directory), rank))


def _encode(value, tensors: dict[str, torch.Tensor], path: str):
    """JSON-able structure with every tensor moved into `tensors` under a key naming where it was."""
    if isinstance(value, torch.Tensor):
        key = path or "root"
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {"__dict__": {k: _encode(v, tensors, f"{path}.{k}") for k, v in value.items()}}
        return {"__items__": [[k, _encode(v, tensors, f"{path}.{k}")] for k, v in value.items()]}  # e.g. optimiser state by param id
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"trainer state at {path or 'root'} holds a {type(value).__name__}, which a resume checkpoint cannot store")


def _decode(value, tensors: dict[str, torch.Tensor]):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__dict__" in value:
            return {k: _decode(v, tensors) for k, v in value["__dict__"].items()}
        if "__items__" in value:
            return {k: _decode(v, tensors) for k, v in value["__items__"]}
        if "__tuple__" in value:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
    return value


def save_trainer_state(directory: Path | str, state: dict, record: ResumeRecord, *, rank: int = 0) -> Path:
    """Write one rank's FoldTrainer.state_dict() and the resume record into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(state, tensors, "")
    weights, meta = _state_files(directory, rank)
    save_file(tensors, str(weights))
    meta.write_text(json.dumps({"format_version": STATE_FORMAT_VERSION, "rank": rank, "resume": asdict(record), "state": encoded}))
    return directory


def load_trainer_state(directory: Path | str, *, rank: int = 0) -> tuple[dict, ResumeRecord]:
    """One rank's trainer state and the resume record from a folder `save_trainer_state` wrote."""
    directory = Path(directory)
    weights, meta_file = _state_files(directory, rank)
    missing = [p.name for p in (weights, meta_file) if not p.is_file()]
    if missing:
        raise ModelLoadError(f"{directory} is not a resume checkpoint of rank {rank}: missing {', '.join(missing)}")
    meta = json.loads(meta_file.read_text())
    if meta.get("format_version") != STATE_FORMAT_VERSION:
        raise ModelLoadError(f"{meta_file}: resume state format {meta.get('format_version')} is not {STATE_FORMAT_VERSION}")
    return _decode(meta["state"], load_file(str(weights))), ResumeRecord(**meta["resume"])


def usable_resume_state(directory: Path | str | None, *, fold: int, fingerprint: str, rank: int, world_size: int) -> tuple[dict, ResumeRecord] | None:
    """The state to continue from, or None (start at epoch 0) when `directory` holds nothing of this fold and configuration.

    A Ray Train run folder outlives a changed configuration (same run name, same fold), so a state of
    another fingerprint or world size is ignored with a warning instead of being trained on."""
    if directory is None or not is_resume_checkpoint(directory, rank=rank):
        return None
    state, record = load_trainer_state(directory, rank=rank)
    if (record.fold, record.fingerprint, record.world_size) != (fold, fingerprint, world_size):
        logger.warning("resume checkpoint in %s is of fold %s, configuration %s, %d worker(s); this is fold %s, %s, %d: starting at epoch 0",
                       directory, record.fold, record.fingerprint, record.world_size, fold, fingerprint, world_size)
        return None
    return state, record


def fit_fold_resumable(
    data: FoldData,
    config: TrainConfig,
    *,
    record: ResumeRecord,
    node_id: str,
    resume_from: tuple[dict, ResumeRecord] | None = None,
    checkpoint_every: int = 1,
    report: Callable[[dict, Path | None], None] = lambda metrics, checkpoint: None,
    device: torch.device | str = "cpu",
    rank: int = 0,
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
) -> tuple[FoldOutcome, ResumeRecord]:
    """`fit_fold`, continuing from `resume_from` (see `usable_resume_state`) and saving its state as it goes.

    After every epoch `report(metrics, folder)` is called: `folder` holds this rank's resume state every
    `checkpoint_every` epochs (0 = never) and is None otherwise; it is removed once `report` returns
    (Ray Train uploads synchronously). Returns the outcome and the record of every attempt, this one included."""
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0 (0 = no resume checkpoints), got {checkpoint_every}")
    trainer = FoldTrainer(data, config, device=device, rank=rank, world_size=record.world_size, wrap_model=wrap_model)
    if resume_from is not None:
        state, previous = resume_from
        trainer.load_state_dict(state)
        record.attempts = [*previous.attempts, {"node_id": node_id, "start_epoch": trainer.epoch}]
        logger.info("fold %d resumed at epoch %d of %d (attempt %d)", record.fold, trainer.epoch, config.epochs, len(record.attempts))
    else:
        record.attempts = [{"node_id": node_id, "start_epoch": 0}]
    while not trainer.should_stop:
        trainer.train_epoch()
        metrics = trainer.validate()
        if checkpoint_every and (trainer.epoch % checkpoint_every == 0) and not trainer.should_stop:
            with tempfile.TemporaryDirectory(prefix="resume_") as tmp:
                save_trainer_state(tmp, trainer.state_dict(), record, rank=rank)
                report(metrics, Path(tmp))
        else:
            report(metrics, None)
    return trainer.finish(), record
