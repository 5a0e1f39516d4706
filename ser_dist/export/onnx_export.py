"""A trained run -> ONNX graphs and a JSON that says how to use them (read by `OnnxPredictor`).

    DIR/frontend.onnx  waveform (1, N) float32, 16 kHz mono -> features (1, T, D)    LOGMEL and MFCC
    DIR/model.onnx     features (B, T, D) float32, lengths (B,) int64 -> probabilities (B, C)
    DIR/export.json    labels, feature spec, signal preprocessing, normalisation, ensemble, protocol, scores

The front-end is the log-mel of `LogMelExtractor` as plain ONNX ops: reflect padding, the STFT as a
strided conv1d with a windowed DFT basis, |.|^2, the mel filterbank as a matmul, log with the floor;
MFCC adds dB scaling and the orthonormal DCT-II as a matmul; deltas are a Savitzky-Golay conv over
edge-padded frames with librosa's "interp" edges picked by a gather. The model graph holds every
member of the (fold) ensemble with its normalisation (training statistics, or the utterance's own
over its real frames for per-speaker runs), float16 rounding of stored features when the run was
trained on them, and averages the members' softmax outputs. Time is dynamic; padding is masked by
`lengths` exactly as in `TimNet`.

For encoder features (HUBERT, FUSION) only the model graph is written; export.json says the encoder
runs separately and names it, and `OnnxPredictor` then takes feature matrices.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ser_dist.errors import ConfigError
from ser_dist.features.config import FeatureConfig, FeatureType, LogMelConfig
from ser_dist.features.logmel import LogMelExtractor
from ser_dist.model.timnet import TimNet
from ser_dist.prediction.card import model_card
from ser_dist.prediction.predictor import Predictor

logger = logging.getLogger(__name__)

FRONTEND_FILE = "frontend.onnx"
MODEL_FILE = "model.onnx"
SPEC_FILE = "export.json"
FORMAT_VERSION = 1
DEFAULT_OPSET = 17
DB_PER_NEPER = 10.0 / float(np.log(10.0))  # natural-log power -> dB (power_to_db with ref=1)
DELTA_WIDTH = 9  # librosa.feature.delta's default window
EXPORT_FORMATS = ("onnx",)


@dataclass(frozen=True)
class ExportConfig:
    model: str  # a checkpoint folder or a run folder runs/<name> (every fold, averaged)
    out: str  # folder to write frontend.onnx, model.onnx and export.json into
    format: str = "onnx"
    opset: int = DEFAULT_OPSET

    def __post_init__(self):
        if self.format not in EXPORT_FORMATS:
            raise ConfigError(f"unknown export format {self.format!r}; expected one of {', '.join(EXPORT_FORMATS)}")


# ---- graphs ---------------------------------------------------------------------------------------


def _dynamic_positions(x: Tensor, dim: int) -> Tensor:
    """0., 1., ..., x.shape[dim]-1 (float) in a way that stays dynamic when traced (torch.arange would not)."""
    line = x.movedim(dim, -1)
    while line.dim() > 1:
        line = line[0]
    return torch.ones_like(line, dtype=torch.float32).cumsum(0) - 1  # (T,)


def _time_mask(lengths: Tensor, reference: Tensor, time_dim: int) -> Tensor:
    """(B, T) float mask of real frames; T is `reference.shape[time_dim]`."""
    t = _dynamic_positions(reference, time_dim)  # (T,)
    return (t[None, :] < lengths[:, None].to(t.dtype)).to(torch.float32)


class LogMelGraph(nn.Module):
    """waveform (1, N) -> LOGMEL (1, T, n_mels) or MFCC (1, T, n_mfcc), deltas appended; T = 1 + N // hop."""

    def __init__(self, config: FeatureConfig):
        super().__init__()
        c: LogMelConfig = config.logmel
        self.n_fft, self.hop, self.floor = c.n_fft, c.hop_length, c.log_floor
        self.n_bins = c.n_fft // 2 + 1
        extractor = LogMelExtractor(c)  # the window and filterbank the features were made with
        window = extractor.window.double().numpy()
        n = np.arange(c.n_fft)[None, :]
        k = np.arange(self.n_bins)[:, None]
        angle = 2 * np.pi * k * n / c.n_fft
        basis = np.concatenate([np.cos(angle) * window, -np.sin(angle) * window])  # (2F, n_fft)
        self.register_buffer("dft", torch.from_numpy(basis[:, None, :].astype(np.float32)))  # (2F, 1, n_fft)
        self.register_buffer("filterbank", extractor.filterbank.float())  # (n_mels, F)
        self.mfcc = config.feature_type is FeatureType.MFCC
        if self.mfcc:
            from scipy.fft import dct

            if config.mfcc.n_mfcc > c.n_mels:
                raise ConfigError(f"n_mfcc={config.mfcc.n_mfcc} exceeds the {c.n_mels} mel bands it is computed from")
            basis = dct(np.eye(c.n_mels), type=2, norm="ortho", axis=0)[: config.mfcc.n_mfcc]  # (n_mfcc, n_mels)
            self.register_buffer("dct", torch.from_numpy((DB_PER_NEPER * basis).astype(np.float32)))
        self.deltas = config.deltas
        if self.deltas:
            from scipy.signal import savgol_coeffs

            kernels = [savgol_coeffs(DELTA_WIDTH, k, deriv=k, use="conv")[::-1].copy() for k in range(1, self.deltas + 1)]
            self.register_buffer("savgol", torch.from_numpy(np.stack(kernels).astype(np.float32)))  # (order, width)

    def forward(self, waveform: Tensor) -> Tensor:  # (1, N) float32
        half = self.n_fft // 2
        x = F.pad(waveform[:, None, :], (half, half), mode="reflect")  # (1, 1, N + n_fft)
        spec = F.conv1d(x, self.dft, stride=self.hop)  # (1, 2F, T)
        power = spec[:, : self.n_bins].square() + spec[:, self.n_bins :].square()  # (1, F, T)
        mel = torch.matmul(self.filterbank, power)  # (1, n_mels, T)
        frames = torch.log(torch.clamp(mel, min=self.floor)).transpose(1, 2)  # (1, T, n_mels)
        if self.mfcc:
            frames = torch.matmul(frames, self.dct.t())  # (1, T, n_mfcc) of the dB spectrum
        if self.deltas:
            frames = torch.cat([frames] + [self._delta(frames, k) for k in range(self.deltas)], dim=2)
        return frames

    def _delta(self, frames: Tensor, k: int) -> Tensor:
        """librosa.feature.delta(order=k+1, width 9): "interp" edges when T >= 9, else "nearest"."""
        half = DELTA_WIDTH // 2
        d = frames.shape[2]
        x = frames.transpose(1, 2).reshape(d, 1, -1)  # (D, 1, T)
        x = torch.cat([x[:, :, :1].expand(d, 1, half), x, x[:, :, -1:].expand(d, 1, half)], dim=2)  # edge padding
        nearest = F.conv1d(x, self.savgol[k].view(1, 1, DELTA_WIDTH))[:, 0, :]  # (D, T)
        # A polynomial fit's derivative is constant over the first/last window: "interp" repeats frame 4 / T-5.
        t = _dynamic_positions(nearest, 1)  # (T,) float
        n = t[-1:] + 1  # (1,) T
        long_enough = n >= DELTA_WIDTH
        inner = torch.minimum(torch.maximum(t, torch.full_like(t, half)), n - 1 - half)
        index = torch.where(long_enough, inner, t).to(torch.int64)  # (T,)
        return nearest.index_select(1, index).t()[None]  # (1, T, D)


class EnsembleGraph(nn.Module):
    """features (B, T, D), lengths (B,) -> class probabilities averaged over the members (B, C)."""

    def __init__(self, predictor: Predictor):
        super().__init__()
        self.models = nn.ModuleList(m.model.cpu().eval() for m in predictor.members)
        self.per_utterance = [m.per_utterance_norm for m in predictor.members]
        self.register_buffer("mean", torch.from_numpy(np.stack([m.standardizer.mean for m in predictor.members])).float())
        self.register_buffer("std", torch.from_numpy(np.stack([m.standardizer.std for m in predictor.members])).float())
        self.round_to_float16 = predictor.feature_config.storage_dtype == "float16"
        for i, model in enumerate(self.models):  # the fusion weights as the model computes them, fixed
            self.register_buffer(f"fusion_{i}", torch.tensor(model.block_weights(), dtype=torch.float32))

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        x = features.half().float() if self.round_to_float16 else features  # (B, T, D)
        real = _time_mask(lengths, x, 1)  # (B, T)
        n = lengths.to(x.dtype)[:, None]  # (B, 1)
        total = torch.zeros((), dtype=x.dtype)
        for i, model in enumerate(self.models):
            if self.per_utterance[i]:  # the utterance's own statistics over its real frames (Standardizer.fit)
                mean = torch.einsum("btd,bt->bd", x, real) / n  # (B, D)
                centred = (x - mean[:, None, :]) * real[:, :, None]
                std = torch.sqrt(torch.einsum("btd,btd->bd", centred, centred) / n + 1e-5)  # (B, D)
                normalised = (x - mean[:, None, :]) / std[:, None, :]
            else:
                normalised = (x - self.mean[i]) / self.std[i]
            logits = _timnet_logits(model, normalised, lengths, getattr(self, f"fusion_{i}"))
            total = total + torch.softmax(logits, dim=-1)
        return total / len(self.models)  # (B, C)


def _timnet_logits(model: TimNet, x: Tensor, lengths: Tensor, fusion: Tensor) -> Tensor:
    """`TimNet.forward` in eval mode, written with ops that keep the time axis dynamic when traced.

    Same submodules and weights; tests hold it to `TimNet.forward` on padded batches."""
    c = model.config
    lengths = lengths.to(torch.int64)
    real = _time_mask(lengths, x, 1)  # (B, T)
    h = (x * real[:, :, None]).transpose(1, 2)  # (B, D, T)
    mask = real[:, None, :]  # (B, 1, T)
    if c.time_pool > 1:  # masked mean per window = windowed sum of x*mask / windowed sum of mask
        p = c.time_pool
        summed = F.avg_pool1d(h * mask, p, p, ceil_mode=True)
        counts = F.avg_pool1d(mask, p, p, ceil_mode=True)
        h = summed / counts.clamp(min=1e-12)  # (B, D, ceil(T/p))
        lengths = torch.div(lengths + (p - 1), p, rounding_mode="floor")
        mask = _time_mask(lengths, h, 2)[:, None, :]
    if model.projection is not None:
        h = model.projection(h)  # (B, directions * width, T)
    elif model.directions == 2:
        h = torch.cat([h, h], dim=1)
    if model.directions == 2:
        width = c.width
        backward = h[:, width:]
        t = _dynamic_positions(backward, 2)  # (T,)
        last = lengths[:, None].to(t.dtype) - 1  # (B, 1)
        index = torch.where(t[None, :] <= last, last - t[None, :], t[None, :]).to(torch.int64)  # (B, T)
        backward = backward.gather(2, index[:, None, :].expand_as(backward))
        h = torch.cat([h[:, :width], backward], dim=1)
    h = h * mask
    n = lengths.to(h.dtype)[:, None]  # (B, 1)
    pooled = []
    for block in model.blocks:
        h = block(h, mask)  # (B, C, T)
        g = torch.einsum("bct,bt->bc", h, mask[:, 0, :]) / n  # (B, C)
        pooled.append(g.reshape(g.shape[0], model.directions, c.width).sum(dim=1))  # (B, width)
    fused = torch.einsum("bkw,k->bw", torch.stack(pooled, dim=1), fusion)  # (B, width)
    return model.classifier(fused)  # (B, C)


# ---- export ---------------------------------------------------------------------------------------


def export_onnx(config: ExportConfig) -> Path:
    """Write the graphs and export.json for `config.model` into `config.out`; returns the folder."""
    predictor = Predictor.from_dir(config.model, device="cpu")
    features = predictor.feature_config
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    dim = predictor.computer.dim
    frontend = None
    if not features.feature_type.uses_encoder:
        _export(LogMelGraph(features).eval(), (torch.zeros(1, 16_000),), out / FRONTEND_FILE, opset=config.opset,
                inputs=["waveform"], outputs=["features"], dynamic={"waveform": {1: "samples"}, "features": {1: "frames"}})
        frontend = {"file": FRONTEND_FILE, "input": {"name": "waveform", "shape": [1, "samples"], "dtype": "float32",
                                                     "sample_rate": features.logmel.sample_rate, "channels": 1},
                    "output": {"name": "features", "shape": [1, "frames", dim], "frames": f"1 + samples // {features.logmel.hop_length}"}}
    example = (torch.zeros(2, 37, dim), torch.tensor([37, 20]))
    _export(EnsembleGraph(predictor).eval(), example, out / MODEL_FILE, opset=config.opset, inputs=["features", "lengths"],
            outputs=["probabilities"], dynamic={"features": {0: "batch", 1: "frames"}, "lengths": {0: "batch"},
                                                "probabilities": {0: "batch"}})
    card = model_card(predictor)
    encoder = (predictor.computer.encoder_metadata() | {"separate": True}) if features.feature_type.uses_encoder else None
    spec = {
        "format": "ser-dist-onnx",
        "format_version": FORMAT_VERSION,
        "opset": config.opset,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": str(config.model),
        "labels": predictor.labels,
        "feature_config": features.to_dict(),
        "feature_spec": card["feature_spec"],
        "preprocessing": {"sample_rate": features.logmel.sample_rate, "mono": True, "trim_db": features.trim_db,
                          "fixed_seconds": features.fixed_seconds,
                          "order": "resample to mono 16 kHz, trim silence (trim_db), centre-pad/crop (fixed_seconds)"},
        "frontend": frontend,
        "encoder": encoder,
        "model": {"file": MODEL_FILE, "inputs": [{"name": "features", "shape": ["batch", "frames", dim], "dtype": "float32"},
                                                 {"name": "lengths", "shape": ["batch"], "dtype": "int64"}],
                  "output": {"name": "probabilities", "shape": ["batch", len(predictor.labels)]},
                  "ensemble": card["ensemble"], "float16_rounding": features.storage_dtype == "float16"},
        "normalization": card["normalization"] | {
            "applied_in_graph": True,
            "per_speaker_members_in_graph": "each input standardised by its own statistics (utterance normalisation: "
                                            "the graph has no speaker statistics; an approximation of per-speaker training)",
            "statistics": [{"mean": m.standardizer.mean.tolist(), "std": m.standardizer.std.tolist()} for m in predictor.members],
        },
        "protocol": card["protocol"],
        "scores": card["scores"],
    }
    (out / SPEC_FILE).write_text(json.dumps(spec, indent=2))
    logger.info("exported %s (%d member(s), %s) to %s", config.model, len(predictor.members), features.feature_type.value, out)
    return out


def _export(module: nn.Module, args: tuple, path: Path, *, opset: int, inputs: list[str], outputs: list[str], dynamic: dict) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about Python-side shape checks
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset, input_names=inputs,
                          output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True)
