"""Signals -> feature matrices for one FeatureConfig (no Ray here: workers, predictors and benches share it)."""

from __future__ import annotations

import numpy as np
import torch

from ser_dist.features.config import FeatureConfig, FeatureType
from ser_dist.features.logmel import LogMelExtractor


class FeatureComputer:
    """Computes LOGMEL, encoder (HUBERT) or FUSION frames for a list of 16 kHz mono signals."""

    def __init__(self, config: FeatureConfig, *, device: str | torch.device = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.logmel = LogMelExtractor(config.logmel, device=self.device) if config.feature_type is not FeatureType.HUBERT else None
        self.encoder = None
        if config.feature_type.uses_encoder:
            from ser_dist.features.ssl import (
                SSLEncoder,  # transformers is only imported when an encoder is used
            )

            self.encoder = SSLEncoder(config.ssl, device=self.device)

    @property
    def dim(self) -> int:
        if self.config.feature_type is FeatureType.LOGMEL:
            return self.logmel.dim
        if self.config.feature_type is FeatureType.HUBERT:
            return self.encoder.dim
        return self.logmel.dim + self.encoder.dim

    @property
    def frame_rate(self) -> float:
        if self.config.feature_type is FeatureType.LOGMEL:
            return self.config.logmel.sample_rate / self.config.logmel.hop_length
        return self.encoder.frame_rate

    def encoder_metadata(self) -> dict:
        if self.encoder is None:
            return {}
        return {"model": self.encoder.model_id, "layers": list(self.config.ssl.layers), "weight_hash": self.encoder.weight_hash}

    def compute(self, signals: list[np.ndarray]) -> list[np.ndarray]:
        """One (T_i, dim) float32 matrix per signal, in input order."""
        kind = self.config.feature_type
        if kind is FeatureType.LOGMEL:
            return self.logmel.extract(signals)
        encoded = self.encoder.encode(signals)
        if kind is FeatureType.HUBERT:
            return encoded
        from ser_dist.features.fusion import fuse

        return [fuse(mel, enc) for mel, enc in zip(self.logmel.extract(signals), encoded, strict=True)]
