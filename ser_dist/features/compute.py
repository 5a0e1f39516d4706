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
        if self.config.trim_db is not None:
            signals = [trim_silence(s, self.config.trim_db) for s in signals]
        kind = self.config.feature_type
        if kind is FeatureType.LOGMEL:
            return self.logmel.extract(signals)
        encoded = self.encoder.encode(signals)
        if kind is FeatureType.HUBERT:
            return encoded
        from ser_dist.features.fusion import fuse

        return [fuse(mel, enc) for mel, enc in zip(self.logmel.extract(signals), encoded, strict=True)]


def trim_silence(signal: np.ndarray, top_db: float, *, sample_rate: int = 16_000, min_seconds: float = 0.25) -> np.ndarray:
    """`signal` without the leading and trailing stretches quieter than its loudest 25 ms frame minus
    `top_db` (10 ms hop). A result shorter than `min_seconds` means the whole clip is quiet: it is kept."""
    frame, hop = int(0.025 * sample_rate), int(0.010 * sample_rate)
    if len(signal) <= frame:
        return signal
    n_frames = 1 + (len(signal) - frame) // hop
    frames = np.lib.stride_tricks.sliding_window_view(signal, frame)[::hop][:n_frames]
    power_db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(power_db >= power_db.max() - top_db)
    start, end = loud[0] * hop, min(len(signal), loud[-1] * hop + frame)
    if end - start < min_seconds * sample_rate:
        return signal
    return signal[start:end]
