"""Training one fold in plain torch: epochs, early stopping on validation UAR, test predictions.

No Ray in here: `ser_dist.training.kfold` runs this inside Ray Train workers (DDP when a fold has
several workers); tests and benchmarks can call it directly. The test part is scored once, with
the weights of the best validation epoch, after training has ended.

The trainer takes its rows from a `BatchSource`: `MemorySource` over a `FoldData` held in memory,
or `ser_dist.training.streaming.StreamSource`, which streams the parts from the Parquet store
through Ray Data. Both feed the same training step.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ser_dist.errors import ConfigError
from ser_dist.model.timnet import TimNet, TimNetConfig
from ser_dist.training.config import TrainConfig
from ser_dist.training.data import Standardizer, collate, length_buckets, spec_augment
from ser_dist.training.lmmd import lmmd_loss
from ser_dist.training.metrics import classification_report


@dataclass
class FoldData:
    """One fold's inputs: normalised matrices of every row and the positions of each part."""

    labels: list[str]  # class names; index = class id
    features: list[np.ndarray]  # normalised (T_i, D)
    y: np.ndarray  # (N,) class ids
    utterance_ids: list[str]
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    standardizer: Standardizer
    target_features: list[np.ndarray] | None = None  # unlabelled target-corpus matrices (LMMD adaptation)

    @property
    def input_dim(self) -> int:
        return int(self.features[0].shape[1])


Batch = tuple[list[np.ndarray], np.ndarray]  # normalised (T_i, D) matrices and their class ids (B,)
PredictFn = Callable[[list[np.ndarray]], np.ndarray]  # normalised matrices -> class probabilities (len, C)


class BatchSource(Protocol):
    """Where a FoldTrainer takes its rows from: training batches per epoch, and whole parts to score."""

    labels: list[str]  # class names; index = class id
    input_dim: int
    train_labels: np.ndarray  # class ids of the training part (class weights)
    target_features: list[np.ndarray] | None  # unlabelled target-corpus matrices (LMMD); None when not adapting

    def steps_per_epoch(self, batch_size: int, world_size: int) -> int:
        """Optimiser steps per epoch on each rank (the same on every rank)."""

    def train_batches(self, epoch: int, *, batch_size: int, seed: int, rank: int, world_size: int) -> Iterator[Batch]:
        """Epoch `epoch`'s length-bucketed, shuffled batches of this rank's share of the training part."""

    def part_size(self, part: str) -> int:
        """Rows in part "val" or "test"."""

    def predict(self, part: str, predict_fn: PredictFn) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Probabilities (N, C), class ids (N,) and utterance ids of every row of part "val" or "test"."""


class MemorySource:
    """A `FoldData` held in memory: the rows of each part picked by position."""

    def __init__(self, data: FoldData):
        self.data = data
        self.labels, self.input_dim, self.target_features = data.labels, data.input_dim, data.target_features
        self.train_labels = data.y[data.train]
        self.train_lengths = np.array([data.features[i].shape[0] for i in data.train])

    def steps_per_epoch(self, batch_size: int, world_size: int) -> int:
        return max(1, math.ceil(len(self.data.train) / batch_size) // world_size)

    def train_batches(self, epoch: int, *, batch_size: int, seed: int, rank: int, world_size: int) -> Iterator[Batch]:
        data = self.data
        batches = length_buckets(self.train_lengths, batch_size, rng=np.random.default_rng(seed * 7919 + epoch))
        steps = self.steps_per_epoch(batch_size, world_size)
        for batch in batches[: steps * world_size][rank::world_size]:  # equal steps on every rank
            positions = data.train[batch]
            yield [data.features[i] for i in positions], data.y[positions]

    def part_size(self, part: str) -> int:
        return len(self._positions(part))

    def predict(self, part: str, predict_fn: PredictFn) -> tuple[np.ndarray, np.ndarray, list[str]]:
        positions = self._positions(part)
        probs = predict_fn([self.data.features[i] for i in positions])
        return probs, self.data.y[positions], [self.data.utterance_ids[p] for p in positions]

    def _positions(self, part: str) -> np.ndarray:
        if part not in ("val", "test"):
            raise ValueError(f"unknown part {part!r}; expected 'val' or 'test'")
        return getattr(self.data, part)


def as_source(data: FoldData | BatchSource) -> BatchSource:
    return MemorySource(data) if isinstance(data, FoldData) else data


@dataclass
class FoldOutcome:
    model_config: TimNetConfig
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_uar: float
    history: list[dict] = field(default_factory=list)
    test_predictions: list[dict] = field(default_factory=list)  # utterance_id, true, pred, probabilities
    test_report: dict = field(default_factory=dict)
    last_epoch: int = 0
    # The same test part scored with the LAST epoch's weights (TIM-Net's published protocol); for
    # reports beside the selected epoch's figures, never used to choose anything.
    last_epoch_predictions: list[dict] = field(default_factory=list)
    last_epoch_report: dict = field(default_factory=dict)


def build_model(config: TrainConfig, input_dim: int, n_classes: int) -> tuple[TimNet, TimNetConfig]:
    model_config = TimNetConfig(input_dim=input_dim, n_classes=n_classes, **asdict(config.model))
    return TimNet(model_config), model_config


@torch.no_grad()
def predict_proba(model: torch.nn.Module, features: list[np.ndarray], positions: np.ndarray, *, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (len(positions), C) in the order of `positions`; whole utterances, no augmentation."""
    model.eval()
    positions = np.asarray(positions)
    out = np.zeros((len(positions), 0), np.float32)
    chunks = []
    for batch in length_buckets(np.array([features[i].shape[0] for i in positions]), batch_size, rng=None):
        x, lengths = collate(features, positions[batch])
        with _autocast(device):
            logits = model(x.to(device), lengths.to(device))
        chunks.append((batch, torch.softmax(logits.float(), dim=-1).cpu().numpy()))
    if chunks:
        out = np.zeros((len(positions), chunks[0][1].shape[1]), np.float32)
        for batch, probs in chunks:
            out[batch] = probs
    return out


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


def _lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str = "warmup_cosine") -> float:
    if schedule == "constant":
        return 1.0
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _class_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def _ramp(epoch: int, epochs: int) -> float:
    """DSAN's schedule 2 / (1 + exp(-10 p)) - 1: the alignment term grows as training progresses."""
    return 2.0 / (1.0 + math.exp(-10.0 * epoch / epochs)) - 1.0


def _lmmd_term(model, matrices: list[np.ndarray], y: np.ndarray, target_features: list[np.ndarray], n_classes: int, rng, aug,
               device) -> torch.Tensor:
    """LMMD between the source batch and a random batch of unlabelled target utterances."""
    core = getattr(model, "module", model)  # DDP wraps the model; embed/classify live on the module
    batch_size = len(matrices)
    x_s, len_s = collate(matrices, np.arange(batch_size), max_frames=aug.max_frames, rng=rng)
    target_positions = rng.choice(len(target_features), size=min(batch_size, len(target_features)), replace=False)
    x_t, len_t = collate(target_features, target_positions, max_frames=aug.max_frames, rng=rng)
    x_s, len_s, x_t, len_t = x_s.to(device), len_s.to(device), x_t.to(device), len_t.to(device)
    emb_s, emb_t = core.embed(x_s, len_s), core.embed(x_t, len_t)
    soft_t = torch.softmax(core.classifier(emb_t).float(), dim=-1).detach()  # pseudo-labels; target labels never used
    y_s = torch.as_tensor(y, device=device)
    return lmmd_loss(emb_s.float(), emb_t.float(), F.one_hot(y_s, n_classes).float(), soft_t)


class FoldTrainer:
    """One fold's model, optimiser and schedule, stepped from outside one epoch at a time.

    `data` is a `FoldData` (held in memory) or any `BatchSource` (e.g. streamed from the store).
    `train_epoch()` runs one pass over the training part; `validate()` scores the validation part and keeps the best
    epoch's weights (validation UAR, ties broken by validation loss); `state_dict()` /
    `load_state_dict()` capture everything needed to continue exactly (weights, optimiser, scheduler,
    random generators, best so far, history). `fit_fold` drives it for a whole fold; a sweep trial can
    step several FoldTrainers in one thread.
    """

    def __init__(
        self,
        data: FoldData | BatchSource,
        config: TrainConfig,
        *,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
    ):
        self.source, self.config = as_source(data), config
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed + 1000 * rank)
        self.generator = torch.Generator().manual_seed(config.seed + rank)
        self.n_classes = len(self.source.labels)
        model, self.model_config = build_model(config, self.source.input_dim, self.n_classes)
        self.model = model.to(self.device)
        self.trained = wrap_model(self.model)  # DDP wrapper under Ray Train with several workers
        if config.optimizer == "adam":
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
        self.class_weights = _class_weights(self.source.train_labels, self.n_classes).to(self.device) if config.class_weights else None
        self.steps_per_epoch = self.source.steps_per_epoch(config.batch_size, world_size)
        total_steps = self.steps_per_epoch * config.epochs
        warmup = max(1, config.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: _lr_factor(s, warmup_steps=warmup, total_steps=total_steps, schedule=config.schedule)
        )
        self.epoch = 0
        self.best = {"uar": -1.0, "loss": math.inf, "epoch": 0, "state": copy.deepcopy(self.model.state_dict())}
        self.since_best = 0
        self.history: list[dict] = []

    @property
    def should_stop(self) -> bool:
        """True once every epoch ran, or validation UAR has not improved for `patience` epochs."""
        patience = self.config.patience
        return self.epoch >= self.config.epochs or (patience is not None and self.since_best >= patience)

    def train_epoch(self) -> float:
        """One pass over the training part; returns the mean training loss."""
        config = self.config
        self.epoch += 1
        self.trained.train()
        batches = self.source.train_batches(self.epoch, batch_size=config.batch_size, seed=config.seed, rank=self.rank,
                                            world_size=self.world_size)
        total_loss, steps, started = 0.0, 0, time.perf_counter()
        for matrices, y in islice(batches, self.steps_per_epoch):  # equal steps on every rank
            total_loss += self.train_step(matrices, y)
            steps += 1
        self._train_loss = total_loss / max(1, steps)
        self._train_seconds = time.perf_counter() - started
        return self._train_loss

    def train_step(self, matrices: list[np.ndarray], y_ids: np.ndarray) -> float:
        """One optimiser step on a batch of normalised (T_i, D) matrices and their class ids; returns the loss."""
        config, aug, device = self.config, self.config.augment, self.device
        x, lengths = collate(matrices, np.arange(len(matrices)), max_frames=aug.max_frames, rng=self.rng)
        y = torch.as_tensor(y_ids, dtype=torch.long)
        if aug.time_masks or aug.feature_masks:
            x = spec_augment(x, lengths, generator=self.generator, time_masks=aug.time_masks, time_frac=aug.time_mask_frac,
                             feature_masks=aug.feature_masks, feature_frac=aug.feature_mask_frac)
        if aug.noise_std > 0:
            x = x + aug.noise_std * torch.randn(x.shape, generator=self.generator)
        x, lengths, y = x.to(device), lengths.to(device), y.to(device)
        loss = self._loss(x, lengths, y, matrices, y_ids)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss.item()

    def _loss(self, x: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor, matrices: list[np.ndarray], y_ids: np.ndarray) -> torch.Tensor:
        config, aug = self.config, self.config.augment

        def ce(logits, target):
            return F.cross_entropy(logits.float(), target, weight=self.class_weights, label_smoothing=config.label_smoothing)

        with _autocast(self.device):
            if aug.mixup_alpha > 0 and len(matrices) > 1:
                lam = float(self.rng.beta(aug.mixup_alpha, aug.mixup_alpha))
                perm = torch.as_tensor(self.rng.permutation(len(matrices)), device=self.device)
                logits = self.trained(lam * x + (1 - lam) * x[perm], torch.maximum(lengths, lengths[perm]))
                loss = lam * ce(logits, y) + (1 - lam) * ce(logits, y[perm])
            else:
                loss = ce(self.trained(x, lengths), y)
        if config.lmmd_weight > 0 and self.source.target_features:
            term = _lmmd_term(self.trained, matrices, y_ids, self.source.target_features, self.n_classes, self.rng, aug, self.device)
            loss = loss + _ramp(self.epoch, config.epochs) * config.lmmd_weight * term
        return loss

    def validate(self) -> dict:
        """Score the validation part, update the best epoch; returns this epoch's metrics."""
        labels = self.source.labels
        metrics = {"epoch": self.epoch, "train_loss": getattr(self, "_train_loss", float("nan")), "lr": self.scheduler.get_last_lr()[0],
                   "train_seconds": getattr(self, "_train_seconds", float("nan"))}  # wall time of the epoch's training pass
        if not self.source.part_size("val"):
            if self.config.patience is not None:
                raise ConfigError("the validation part is empty: early stopping and epoch selection need one "
                                  "(val_fraction > 0), or set patience: null to train every epoch and keep the last")
            self.best = {"uar": float("nan"), "loss": math.inf, "epoch": self.epoch, "state": None}
            self.history.append(metrics)
            return metrics
        # every rank scores the whole validation part, so all ranks take the same early-stopping decision
        val_probs, val_true, _ = self.source.predict("val", self._predict)
        val_loss = float(F.nll_loss(torch.log(torch.as_tensor(val_probs) + 1e-8), torch.as_tensor(val_true)))
        report = classification_report([labels[i] for i in val_true], [labels[i] for i in val_probs.argmax(1)], labels)
        metrics |= {"val_loss": val_loss, "val_uar": report["uar"], "val_war": report["war"]}
        self.history.append(metrics)
        best = self.best
        if metrics["val_uar"] > best["uar"] + 1e-9 or (abs(metrics["val_uar"] - best["uar"]) <= 1e-9 and val_loss < best["loss"]):
            self.best = {"uar": metrics["val_uar"], "loss": val_loss, "epoch": self.epoch, "state": copy.deepcopy(self.model.state_dict())}
            self.since_best = 0
        else:
            self.since_best += 1
        return metrics | {"best_epoch": self.best["epoch"], "best_val_uar": self.best["uar"]}

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch, "model": copy.deepcopy(self.model.state_dict()), "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(), "rng": copy.deepcopy(self.rng.bit_generator.state),
            "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(), "best": copy.deepcopy(self.best),
            "since_best": self.since_best, "history": copy.deepcopy(self.history),
            # dropout on a GPU draws from the CUDA generator, not the CPU one
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.best, self.since_best, self.history = copy.deepcopy(state["best"]), state["since_best"], copy.deepcopy(state["history"])

    def _predict(self, matrices: list[np.ndarray]) -> np.ndarray:
        return predict_proba(self.model, matrices, np.arange(len(matrices)), device=self.device)

    def score(self, part: str = "test") -> tuple[list[dict], dict]:
        """Predictions (utterance_id, true, pred, p_<class>) and a report for part "val" or "test", with the current weights."""
        labels = self.source.labels
        probs, y, utterance_ids = self.source.predict(part, self._predict)
        true = [labels[i] for i in y]
        pred = [labels[i] for i in probs.argmax(1)]
        rows = [
            {"utterance_id": u, "true": t, "pred": q, **{f"p_{c}": float(v) for c, v in zip(labels, row, strict=True)}}
            for u, t, q, row in zip(utterance_ids, true, pred, probs, strict=True)
        ]
        return rows, classification_report(true, pred, labels)

    def finish(self) -> FoldOutcome:
        """Score the test part once with the selected epoch's weights (and, apart, with the last epoch's)."""
        last_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        outcome_last: tuple[list[dict], dict] = ([], {})
        has_test = self.source.part_size("test") > 0
        if has_test:
            outcome_last = self.score("test")
        selected = self.best["state"] if self.best["state"] is not None else last_state
        self.model.load_state_dict(selected)
        outcome = FoldOutcome(
            self.model_config, {k: v.detach().cpu().clone() for k, v in selected.items()}, self.best["epoch"], self.best["uar"],
            self.history, last_epoch=self.epoch,
        )
        if has_test:
            outcome.test_predictions, outcome.test_report = self.score("test")
            outcome.last_epoch_predictions, outcome.last_epoch_report = outcome_last
        return outcome


def fit_fold(
    data: FoldData | BatchSource,
    config: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
    on_epoch: Callable[[dict], None] = lambda metrics: None,
) -> FoldOutcome:
    """Train on the training part, select the epoch on the validation part (UAR), score the test part once at the end.

    With an empty validation part and `patience=None` the last epoch is the selected one."""
    trainer = FoldTrainer(data, config, device=device, rank=rank, world_size=world_size, wrap_model=wrap_model)
    while not trainer.should_stop:
        trainer.train_epoch()
        on_epoch(trainer.validate())
    return trainer.finish()
