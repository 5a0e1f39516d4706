"""An exported folder (see onnx_export.py) -> predictions with onnxruntime, numpy and soundfile/soxr only.

    OnnxPredictor.from_dir("exports/EMODB_LOGMEL").predict_file("a.wav")
    predictor.predict_files([...]); predictor.predict_signal(x, 44_100)
    predictor.predict_features([frames, ...])    # encoder features (HUBERT/FUSION exports)

No torch and no Ray: audio goes through `ser_dist.audio` (validated, mono, resampled to 16 kHz), the
signal preprocessing of export.json (silence trimming, fixed length) is applied in numpy, the
front-end graph makes the features one signal at a time, and the model graph scores length-sorted,
padded batches with their real lengths.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ser_dist.audio import TARGET_SAMPLE_RATE, load_audio, prepare_signal
from ser_dist.errors import ConfigError, ModelLoadError

SPEC_FILE = "export.json"
FORMAT = "ser-dist-onnx"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Prediction:  # the fields of ser_dist.prediction.Prediction (which would import torch)
    path: str | None
    emotion: str
    probabilities: dict[str, float]
    duration_s: float


class OnnxPredictor:
    def __init__(self, directory: Path, spec: dict, *, providers: Sequence[str] | None = None, batch_size: int = 16):
        self.directory = directory
        self.spec = spec
        self.labels: list[str] = list(spec["labels"])
        self.batch_size = batch_size
        providers = list(providers or ["CPUExecutionProvider"])
        self.model = ort.InferenceSession(str(directory / spec["model"]["file"]), providers=providers)
        frontend = spec.get("frontend")
        self.frontend = ort.InferenceSession(str(directory / frontend["file"]), providers=providers) if frontend else None
        pre = spec.get("preprocessing") or {}
        self.trim_db: float | None = pre.get("trim_db")
        self.fixed_seconds: float | None = pre.get("fixed_seconds")

    @classmethod
    def from_dir(cls, directory: Path | str, *, providers: Sequence[str] | None = None, batch_size: int = 16) -> OnnxPredictor:
        directory = Path(directory)
        path = directory / SPEC_FILE
        if not path.is_file():
            raise ModelLoadError(f"{directory} is not an ONNX export: no {SPEC_FILE}; make one with `ser-dist export`")
        spec = json.loads(path.read_text())
        if spec.get("format") != FORMAT or spec.get("format_version") != FORMAT_VERSION:
            raise ModelLoadError(f"{path}: format {spec.get('format')!r} v{spec.get('format_version')} is not {FORMAT} v{FORMAT_VERSION}")
        files = [spec["model"]["file"]] + ([spec["frontend"]["file"]] if spec.get("frontend") else [])
        missing = [f for f in files if not (directory / f).is_file()]
        if missing:
            raise ModelLoadError(f"{directory}: export.json names {', '.join(missing)}, which is missing")
        return cls(directory, spec, providers=providers, batch_size=batch_size)

    # ---- files and signals ---------------------------------------------------------------------

    def predict_file(self, path: Path | str) -> Prediction:
        return self._predictions([load_audio(path)], [str(path)])[0]

    def predict_files(self, paths: Sequence[Path | str]) -> list[Prediction]:
        return self._predictions([load_audio(p) for p in paths], [str(p) for p in paths])

    def predict_signal(self, samples: np.ndarray, sample_rate: int) -> Prediction:
        return self._predictions([prepare_signal(samples, sample_rate)], [None])[0]

    def predict_signals(self, signals: Sequence[np.ndarray], names: Sequence[str | None] | None = None) -> list[Prediction]:
        return self._predictions(list(signals), list(names) if names is not None else [None] * len(signals))

    def features(self, signal: np.ndarray) -> np.ndarray:
        """(T, D) features of one 16 kHz mono signal, as the run computed them."""
        if self.frontend is None:
            encoder = self.spec.get("encoder") or {}
            raise ConfigError(
                f"{self.directory}: {self.spec['feature_spec']['feature_type']} features need the encoder "
                f"{encoder.get('model')} (layers {encoder.get('layers')}), which is not part of the export; "
                f"compute them with it and call predict_features"
            )
        if self.trim_db is not None:
            signal = trim_silence(signal, self.trim_db)
        if self.fixed_seconds is not None:
            signal = fix_length_centred(signal, round(self.fixed_seconds * TARGET_SAMPLE_RATE))
        waveform = np.ascontiguousarray(signal, dtype=np.float32)[None, :]
        return self.frontend.run(None, {"waveform": waveform})[0][0]

    def probabilities(self, signals: Sequence[np.ndarray]) -> np.ndarray:
        return self.predict_features([self.features(s) for s in signals])

    def predict_features(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities (N, C), in input order, for (T_i, D) feature matrices."""
        out = np.zeros((len(features), len(self.labels)), np.float32)
        order = np.argsort([f.shape[0] for f in features], kind="stable")
        for first in range(0, len(order), self.batch_size):
            chunk = order[first : first + self.batch_size]
            lengths = np.array([features[i].shape[0] for i in chunk], np.int64)
            batch = np.zeros((len(chunk), int(lengths.max()), features[chunk[0]].shape[1]), np.float32)
            for row, i in enumerate(chunk):
                batch[row, : lengths[row]] = features[i]
            out[chunk] = self.model.run(None, {"features": batch, "lengths": lengths})[0]
        return out

    def _predictions(self, signals: list[np.ndarray], names: list[str | None]) -> list[Prediction]:
        probs = self.probabilities(signals)
        return [
            Prediction(name, self.labels[int(row.argmax())], {k: float(p) for k, p in zip(self.labels, row, strict=True)},
                       len(signal) / TARGET_SAMPLE_RATE)
            for name, signal, row in zip(names, signals, probs, strict=True)
        ]


# Signal preprocessing in numpy; tests hold both to ser_dist.features.compute's versions.


def trim_silence(signal: np.ndarray, top_db: float, *, sample_rate: int = TARGET_SAMPLE_RATE, min_seconds: float = 0.25) -> np.ndarray:
    """As `ser_dist.features.compute.trim_silence`: drop edges quieter than the loudest 25 ms frame - top_db."""
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


def fix_length_centred(signal: np.ndarray, n_samples: int) -> np.ndarray:
    """As `ser_dist.features.compute.fix_length_centred`: centre-crop or zero-pad to n_samples."""
    if len(signal) >= n_samples:
        start = (len(signal) - n_samples) // 2
        return signal[start : start + n_samples]
    pad = n_samples - len(signal)
    return np.pad(signal, (pad // 2, pad - pad // 2))
