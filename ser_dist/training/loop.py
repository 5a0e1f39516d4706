"""Training one fold in plain torch: epochs, early stopping on validation UAR, test predictions.

No Ray in here: `ser_dist.training.kfold` runs this inside Ray Train workers (DDP when a fold has
several workers); tests and benchmarks can call it directly. The test part is scored once, with
the weights of the best validation epoch, after training has ended.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

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


@dataclass
class FoldOutcome:
    model_config: TimNetConfig
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_uar: float
    history: list[dict] = field(default_factory=list)
    test_predictions: list[dict] = field(default_factory=list)  # utterance_id, true, pred, probabilities
    test_report: dict = field(default_factory=dict)


def build_model(config: TrainConfig, input_dim: int, n_classes: int) -> tuple[TimNet, TimNetConfig]:
    options = config.model
    model_config = TimNetConfig(
        input_dim=input_dim, n_classes=n_classes, width=options.width, n_blocks=options.n_blocks,
        kernel_size=options.kernel_size, dropout=options.dropout, bidirectional=options.bidirectional,
        time_pool=options.time_pool, input_dropout=options.input_dropout,
    )
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


def _lr_factor(step: int, *, warmup_steps: int, total_steps: int) -> float:
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


def _lmmd_term(model, data: FoldData, positions: np.ndarray, batch_size: int, n_classes: int, rng, aug, device) -> torch.Tensor:
    """LMMD between the source batch and a random batch of unlabelled target utterances."""
    core = getattr(model, "module", model)  # DDP wraps the model; embed/classify live on the module
    x_s, len_s = collate(data.features, positions, max_frames=aug.max_frames, rng=rng)
    target_positions = rng.choice(len(data.target_features), size=min(batch_size, len(data.target_features)), replace=False)
    x_t, len_t = collate(data.target_features, target_positions, max_frames=aug.max_frames, rng=rng)
    x_s, len_s, x_t, len_t = x_s.to(device), len_s.to(device), x_t.to(device), len_t.to(device)
    emb_s, emb_t = core.embed(x_s, len_s), core.embed(x_t, len_t)
    soft_t = torch.softmax(core.classifier(emb_t).float(), dim=-1).detach()  # pseudo-labels; target labels never used
    y_s = torch.as_tensor(data.y[positions], device=device)
    return lmmd_loss(emb_s.float(), emb_t.float(), F.one_hot(y_s, n_classes).float(), soft_t)


def fit_fold(
    data: FoldData,
    config: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
    on_epoch: Callable[[dict], None] = lambda metrics: None,
) -> FoldOutcome:
    """Train on data.train, select the epoch on data.val (UAR), score data.test once at the end."""
    device = torch.device(device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed + 1000 * rank)
    generator = torch.Generator().manual_seed(config.seed + rank)
    n_classes = len(data.labels)
    model, model_config = build_model(config, data.input_dim, n_classes)
    model = model.to(device)
    trained = wrap_model(model)  # DDP wrapper under Ray Train with several workers
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    weights = _class_weights(data.y[data.train], n_classes).to(device) if config.class_weights else None
    aug = config.augment
    train_lengths = np.array([data.features[i].shape[0] for i in data.train])
    steps_per_epoch = max(1, math.ceil(len(data.train) / config.batch_size) // world_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, warmup_steps=max(1, config.warmup_epochs * steps_per_epoch), total_steps=total_steps)
    )
    best = {"uar": -1.0, "loss": math.inf, "epoch": 0, "state": copy.deepcopy(model.state_dict())}
    history: list[dict] = []
    since_best = 0
    for epoch in range(1, config.epochs + 1):
        trained.train()
        batches = length_buckets(train_lengths, config.batch_size, rng=np.random.default_rng(config.seed * 7919 + epoch))
        batches = batches[: steps_per_epoch * world_size][rank::world_size]  # equal steps on every rank
        total_loss = 0.0
        for batch in batches:
            positions = data.train[batch]
            x, lengths = collate(data.features, positions, max_frames=aug.max_frames, rng=rng)
            y = torch.as_tensor(data.y[positions], dtype=torch.long)
            if aug.time_masks or aug.feature_masks:
                x = spec_augment(x, lengths, generator=generator, time_masks=aug.time_masks, time_frac=aug.time_mask_frac,
                                 feature_masks=aug.feature_masks, feature_frac=aug.feature_mask_frac)
            if aug.noise_std > 0:
                x = x + aug.noise_std * torch.randn(x.shape, generator=generator)
            x, lengths, y = x.to(device), lengths.to(device), y.to(device)
            with _autocast(device):
                if aug.mixup_alpha > 0 and len(positions) > 1:
                    lam = float(rng.beta(aug.mixup_alpha, aug.mixup_alpha))
                    perm = torch.as_tensor(rng.permutation(len(positions)), device=device)
                    mixed_lengths = torch.maximum(lengths, lengths[perm])
                    logits = trained(lam * x + (1 - lam) * x[perm], mixed_lengths)
                    loss = lam * F.cross_entropy(logits.float(), y, weight=weights, label_smoothing=config.label_smoothing) + (
                        1 - lam
                    ) * F.cross_entropy(logits.float(), y[perm], weight=weights, label_smoothing=config.label_smoothing)
                else:
                    logits = trained(x, lengths)
                    loss = F.cross_entropy(logits.float(), y, weight=weights, label_smoothing=config.label_smoothing)
            if config.lmmd_weight > 0 and data.target_features:
                loss = loss + _ramp(epoch, config.epochs) * config.lmmd_weight * _lmmd_term(trained, data, positions, len(positions), n_classes, rng, aug, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            scheduler.step()
            total_loss += loss.item()
        if not len(data.val):
            raise ConfigError("the validation part is empty: early stopping and epoch selection need one (val_fraction > 0)")
        # every rank scores the whole validation part, so all ranks take the same early-stopping decision
        val_probs = predict_proba(model, data.features, data.val, device=device)
        val_true = data.y[data.val]
        val_loss = float(F.nll_loss(torch.log(torch.as_tensor(val_probs) + 1e-8), torch.as_tensor(val_true)))
        val_report = classification_report(
            [data.labels[i] for i in val_true], [data.labels[i] for i in val_probs.argmax(1)], data.labels
        )
        metrics = {
            "epoch": epoch, "train_loss": total_loss / max(1, len(batches)), "val_loss": val_loss,
            "val_uar": val_report["uar"], "val_war": val_report["war"], "lr": scheduler.get_last_lr()[0],
        }
        history.append(metrics)
        improved = metrics["val_uar"] > best["uar"] + 1e-9 or (abs(metrics["val_uar"] - best["uar"]) <= 1e-9 and val_loss < best["loss"])
        if improved:
            best = {"uar": metrics["val_uar"], "loss": val_loss, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
            since_best = 0
        else:
            since_best += 1
        on_epoch(metrics | {"best_epoch": best["epoch"], "best_val_uar": best["uar"]})
        if since_best >= config.patience:
            break

    model.load_state_dict(best["state"])
    outcome = FoldOutcome(model_config, {k: v.detach().cpu().clone() for k, v in best["state"].items()}, best["epoch"], best["uar"], history)
    if len(data.test):
        probs = predict_proba(model, data.features, data.test, device=device)
        true = [data.labels[i] for i in data.y[data.test]]
        pred = [data.labels[i] for i in probs.argmax(1)]
        outcome.test_predictions = [
            {"utterance_id": data.utterance_ids[p], "true": t, "pred": q, **{f"p_{c}": float(v) for c, v in zip(data.labels, row, strict=True)}}
            for p, t, q, row in zip(data.test, true, pred, probs, strict=True)
        ]
        outcome.test_report = classification_report(true, pred, data.labels)
    return outcome
