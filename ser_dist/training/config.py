"""Typed training configuration: one place for every default of a k-fold run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Literal

from ser_dist.errors import ConfigError, UnknownNameError
from ser_dist.training.presets import apply_preset

Normalization = Literal["train_global", "per_speaker", "per_corpus"]
NORMALIZATIONS = ("train_global", "per_speaker", "per_corpus")  # per_corpus: pooled corpora, see training/data.py
SCHEDULES = ("warmup_cosine", "constant")
OPTIMIZERS = ("adamw", "adam")


@dataclass(frozen=True)
class ModelOptions:
    """TimNetConfig fields chosen by the user (input_dim and n_classes come from the data)."""

    width: int = 64
    n_blocks: int = 8
    kernel_size: int = 2
    dropout: float = 0.1
    bidirectional: bool = True
    time_pool: int = 2
    input_dropout: float = 0.1
    head_dropout: float | None = None  # None = dropout
    fusion: str = "softmax"  # softmax | linear (TIM-Net's reference)
    init: str = "torch"  # torch | keras (TIM-Net's reference)
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    eval_window: int | None = None  # score long utterances as averaged windows of this many frames


@dataclass(frozen=True)
class AugmentOptions:
    """Training-time augmentation on normalised frames (never applied to validation or test)."""

    time_masks: int = 2  # SpecAugment-style masks over time
    time_mask_frac: float = 0.1  # each mask covers at most this fraction of the frames
    feature_masks: int = 2
    feature_mask_frac: float = 0.1
    mixup_alpha: float = 0.2  # 0 = off
    noise_std: float = 0.0  # gaussian noise on normalised features
    max_frames: int | None = 400  # random crop of long training utterances (eval uses whole utterances); None = off


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-2
    label_smoothing: float = 0.1
    class_weights: bool = True  # inverse-frequency weights from the training part
    warmup_epochs: int = 3  # then cosine decay to 1% of lr
    schedule: str = "warmup_cosine"  # warmup_cosine | constant (TIM-Net's reference)
    optimizer: str = "adamw"  # adamw (decoupled weight decay) | adam (L2 added to the gradient; TIM-Net: none)
    betas: tuple[float, float] = (0.9, 0.999)  # TIM-Net's reference: (0.93, 0.98)
    grad_clip: float | None = 5.0  # max gradient norm; None = off
    patience: int | None = 20  # early stopping on validation UAR; None = train every epoch
    seed: int = 0
    normalization: Normalization = "train_global"
    lmmd_weight: float = 0.0  # > 0 with KFoldConfig.adapt_to: align class-conditional features with the target corpus
    model: ModelOptions = field(default_factory=ModelOptions)
    augment: AugmentOptions = field(default_factory=AugmentOptions)
    num_workers: int = 1  # Ray Train workers per fold (DDP when > 1)
    use_gpu: bool | None = None  # None = when the cluster has GPUs
    cpus_per_worker: float = 1.0
    max_concurrent_folds: int | None = None  # None = as many as resources allow

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise UnknownNameError("normalization", self.normalization, NORMALIZATIONS)
        for name in ("epochs", "batch_size", "num_workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.schedule not in SCHEDULES:
            raise UnknownNameError("learning-rate schedule", self.schedule, SCHEDULES)
        if self.optimizer not in OPTIMIZERS:
            raise UnknownNameError("optimizer", self.optimizer, OPTIMIZERS)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def expand_mapping(data: dict) -> dict:
        """A "preset" key (ser_dist.training.presets) expanded, the other keys on top of it."""
        return apply_preset(data)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """From plain values; a "preset" key (see ser_dist.training.presets) is expanded first."""
        data = apply_preset(data)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown training options {sorted(unknown)}; valid: {sorted(known)}")
        if isinstance(data.get("model"), dict):
            data["model"] = ModelOptions(**data["model"])
        if isinstance(data.get("augment"), dict):
            data["augment"] = AugmentOptions(**data["augment"])
        return cls(**data)
