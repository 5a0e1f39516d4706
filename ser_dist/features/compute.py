"""Signals -> feature matrices for one FeatureConfig (no Ray here: workers, predictors and benches share it)."""

from __future__ import annotations

import math

import librosa
import numpy as np
import scipy.fft
import torch

from ser_dist.features.config import FeatureConfig, FeatureType, MfccConfig
from ser_dist.features.logmel import LogMelExtractor

DB_PER_NEPER = 10.0 / math.log(10.0)  # natural-log power -> dB (power_to_db with ref=1)
DELTA_WIDTH = 9  # librosa.feature.delta's default window


def mfcc_basis(n_mels: int, config: MfccConfig) -> np.ndarray:
    """(n_mfcc, n_mels) orthonormal DCT-II rows, as librosa.feature.mfcc applies them over mel bands."""
    if config.n_mfcc > n_mels:
        raise ValueError(f"n_mfcc={config.n_mfcc} exceeds the {n_mels} mel bands it is computed from")
    return scipy.fft.dct(np.eye(n_mels), type=2, norm="ortho", axis=0)[: config.n_mfcc].astype(np.float32)


def logmel_to_mfcc(logmel: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """(T, n_mels) natural-log mel power -> (T, n_mfcc) MFCCs of the dB spectrum."""
    return (DB_PER_NEPER * logmel) @ basis.T


def append_deltas(frames: np.ndarray, order: int) -> np.ndarray:
    """(T, D) -> (T, D * (1 + order)): frames, deltas, delta-deltas as `librosa.feature.delta` (width 9).

    Sequences shorter than the window use mode="nearest" (edge values repeated) instead of "interp"."""
    if order == 0:
        return frames
    mode = "interp" if frames.shape[0] >= DELTA_WIDTH else "nearest"
    parts = [frames] + [
        librosa.feature.delta(frames, width=DELTA_WIDTH, order=k, axis=0, mode=mode).astype(np.float32)
        for k in range(1, order + 1)
    ]
    return np.concatenate(parts, axis=1)


def fix_length_centred(signal: np.ndarray, n_samples: int) -> np.ndarray:
    """Centre-crop or zero-pad (extra sample on the right) to exactly n_samples, as TIM-Net's reference code."""
    if len(signal) >= n_samples:
        start = (len(signal) - n_samples) // 2
        return signal[start : start + n_samples]
    pad = n_samples - len(signal)
    return np.pad(signal, (pad // 2, pad - pad // 2))


class FeatureComputer:
    """Computes LOGMEL, encoder (HUBERT) or FUSION frames for a list of 16 kHz mono signals."""

    def __init__(self, config: FeatureConfig, *, device: str | torch.device = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.logmel = LogMelExtractor(config.logmel, device=self.device) if config.feature_type.uses_logmel else None
        self.mfcc_basis = mfcc_basis(config.logmel.n_mels, config.mfcc) if config.feature_type is FeatureType.MFCC else None
        self.encoder = None
        if config.feature_type.uses_encoder:
            from ser_dist.features.ssl import (
                SSLEncoder,  # transformers is only imported when an encoder is used
            )

            self.encoder = SSLEncoder(config.ssl, device=self.device)

    @property
    def dim(self) -> int:
        if self.config.base_dim is not None:
            return self.config.base_dim * (1 + self.config.deltas)
        if self.config.feature_type is FeatureType.HUBERT:
            return self.encoder.dim
        return self.logmel.dim + self.encoder.dim

    @property
    def frame_rate(self) -> float:
        if not self.config.feature_type.uses_encoder:
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
        if self.config.fixed_seconds is not None:
            n_samples = round(self.config.fixed_seconds * self.config.logmel.sample_rate)
            signals = [fix_length_centred(s, n_samples) for s in signals]
        kind = self.config.feature_type
        if kind is FeatureType.LOGMEL:
            return [append_deltas(m, self.config.deltas) for m in self.logmel.extract(signals)]
        if kind is FeatureType.MFCC:
            return [append_deltas(logmel_to_mfcc(m, self.mfcc_basis), self.config.deltas) for m in self.logmel.extract(signals)]
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
