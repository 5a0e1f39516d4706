"""Log mel spectrogram in torch, batched (runs on a GPU when given one).

Matches `librosa.feature.melspectrogram(center=True, pad_mode="reflect", power=2)` followed by
`log(max(., floor))`; tests hold it to that reference. Padding inside a batch never changes a
signal's frames: each signal is reflect-padded on its own before the batch is zero-padded.
"""

from __future__ import annotations

import librosa
import numpy as np
import torch

from ser_dist.features.config import LogMelConfig


def n_logmel_frames(n_samples: int, config: LogMelConfig) -> int:
    return 1 + n_samples // config.hop_length


MEL_BAND_GROUP = 16  # mel bands per dense block of the banded filterbank product


def banded_filterbank(filterbank: np.ndarray, group: int = MEL_BAND_GROUP) -> list[tuple[int, int, int, int, np.ndarray]]:
    """The (n_mels, n_bins) mel filterbank as blocks (band_lo, band_hi, bin_lo, bin_hi, (bins, bands) weights).

    Each triangular filter covers a few neighbouring bins, so `group` neighbouring bands together need
    only their own span of bins: the blocks' product does ~8x fewer multiplications than the full one
    and gives the same sums (the skipped weights are exact zeros)."""
    blocks = []
    for lo in range(0, filterbank.shape[0], group):
        hi = min(lo + group, filterbank.shape[0])
        used = np.flatnonzero(np.any(filterbank[lo:hi] != 0, axis=0))
        first, last = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 1)
        blocks.append((lo, hi, first, last, np.ascontiguousarray(filterbank[lo:hi, first:last].T)))
    return blocks


class LogMelExtractor:
    def __init__(self, config: LogMelConfig | None = None, *, device: str | torch.device = "cpu"):
        self.config = config or LogMelConfig()
        self.device = torch.device(device)
        c = self.config
        filterbank = librosa.filters.mel(sr=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, fmin=c.f_min, fmax=c.f_max)
        self.filterbank = torch.from_numpy(filterbank).to(self.device)  # (n_mels, n_fft//2+1)
        self.blocks = [(lo, hi, first, last, torch.from_numpy(w).to(self.device)) for lo, hi, first, last, w in banded_filterbank(filterbank)]
        window = torch.hann_window(c.win_length, periodic=True, dtype=torch.float32)
        left = (c.n_fft - c.win_length) // 2  # librosa centres a short window inside n_fft
        self.window = torch.nn.functional.pad(window, (left, c.n_fft - c.win_length - left)).to(self.device)

    @property
    def dim(self) -> int:
        return self.config.n_mels

    @torch.no_grad()
    def extract(self, signals: list[np.ndarray]) -> list[np.ndarray]:
        """One (T_i, n_mels) float32 matrix per 16 kHz mono signal; T_i = 1 + N_i // hop."""
        if not signals:
            return []
        c = self.config
        half = c.n_fft // 2
        padded = []
        for signal in signals:
            x = torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32))
            if x.numel() <= half:  # reflect padding needs more samples than the pad
                x = torch.nn.functional.pad(x, (0, half + 1 - x.numel()))
            padded.append(torch.nn.functional.pad(x[None, None], (half, half), mode="reflect")[0, 0])
        batch = torch.nn.utils.rnn.pad_sequence(padded, batch_first=True).to(self.device)  # (B, N+n_fft)
        spec = torch.stft(
            batch, n_fft=c.n_fft, hop_length=c.hop_length, window=self.window, center=False, return_complex=True
        ).transpose(1, 2)  # (B, T, F)
        parts = torch.view_as_real(spec)  # (B, T, F, 2)
        power = parts[..., 0].square() + parts[..., 1].square()  # (B, T, F), contiguous
        mel = torch.empty(power.shape[0], power.shape[1], c.n_mels, device=self.device)  # (B, T, n_mels)
        for lo, hi, first, last, weights in self.blocks:
            torch.matmul(power[:, :, first:last], weights, out=mel[:, :, lo:hi])
        logmel = torch.log_(torch.clamp_(mel, min=c.log_floor))
        out = logmel.float().cpu().numpy()
        # Leading-axis slices of one contiguous array: each is contiguous, no copy needed.
        return [out[i, : n_logmel_frames(len(s), c)] for i, s in enumerate(signals)]


def librosa_logmel(signal: np.ndarray, config: LogMelConfig | None = None) -> np.ndarray:
    """Reference implementation with librosa (tests and checks only): (T, n_mels)."""
    c = config or LogMelConfig()
    mel = librosa.feature.melspectrogram(
        y=signal, sr=c.sample_rate, n_fft=c.n_fft, win_length=c.win_length, hop_length=c.hop_length,
        window="hann", center=True, pad_mode="reflect", power=2.0, n_mels=c.n_mels, fmin=c.f_min, fmax=c.f_max,
    )
    return np.log(np.maximum(mel, c.log_floor)).T.astype(np.float32)
