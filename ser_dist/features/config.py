"""Feature types and their typed configs. A config's hash names the stored version of its features."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Literal

from ser_dist.errors import ConfigError, UnknownNameError


class FeatureType(StrEnum):
    LOGMEL = "LOGMEL"
    MFCC = "MFCC"  # orthonormal DCT-II of the same log-mel (dB units, as librosa.feature.mfcc)
    HUBERT = "HUBERT"  # any transformers speech encoder; HuBERT-base is the default
    FUSION = "FUSION"  # LOGMEL on the encoder's frame grid, concatenated per frame

    @classmethod
    def parse(cls, name: str) -> FeatureType:
        try:
            return cls(name.upper())
        except ValueError:
            raise UnknownNameError("feature type", name, [t.value for t in cls]) from None

    @property
    def uses_encoder(self) -> bool:
        return self in (FeatureType.HUBERT, FeatureType.FUSION)

    @property
    def uses_logmel(self) -> bool:
        return self is not FeatureType.HUBERT


@dataclass(frozen=True)
class LogMelConfig:
    """Log mel spectrogram: 128 bands, 25 ms Hann window, 10 ms hop at 16 kHz, natural log with a floor."""

    sample_rate: int = 16_000
    n_mels: int = 128
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms -> 100 frames/s
    n_fft: int = 512
    f_min: float = 0.0
    f_max: float = 8_000.0
    log_floor: float = 1e-6  # log(max(power, floor))

    def __post_init__(self):
        if self.win_length > self.n_fft:
            raise ConfigError(f"win_length {self.win_length} exceeds n_fft {self.n_fft}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ConfigError(f"need 0 <= f_min < f_max <= {self.sample_rate / 2}, got {self.f_min}, {self.f_max}")


@dataclass(frozen=True)
class MfccConfig:
    """MFCCs as `librosa.feature.mfcc(S=power_to_db(mel, amin=floor, top_db=None), n_mfcc=n_mfcc)`:
    the first `n_mfcc` coefficients of the orthonormal DCT-II over the mel bands of the log-mel in dB."""

    n_mfcc: int = 39

    def __post_init__(self):
        if not isinstance(self.n_mfcc, int) or self.n_mfcc < 1:
            raise ConfigError(f"MfccConfig.n_mfcc must be a positive integer, got {self.n_mfcc!r}")


DEFAULT_SSL_MODEL = "facebook/hubert-base-ls960"


@dataclass(frozen=True)
class SSLConfig:
    """A transformers speech encoder (HuBERT, wav2vec 2.0, WavLM, Whisper) and the layer(s) to keep.

    `layers` index `hidden_states` (0 = the embedding/CNN output, -1 = the last layer); several
    indices are averaged.
    """

    model: str = DEFAULT_SSL_MODEL  # local directory or hub id
    layers: tuple[int, ...] = (-1,)
    half_on_gpu: bool = True
    max_batch_seconds: float = 64.0  # audio seconds per encoder call (length-grouped batches)

    def __post_init__(self):
        if not self.layers:
            raise ConfigError("SSLConfig.layers must name at least one hidden layer")
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))

    @property
    def is_default_hubert(self) -> bool:
        return self.model.rstrip("/").endswith("hubert-base-ls960")

    @property
    def slug(self) -> str:
        """Short folder-safe name of the encoder and layers, e.g. 'whisper-tiny.en-L2'."""
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", self.model.rstrip("/").split("/")[-1])
        return f"{name}-L{'+'.join(str(x) for x in self.layers)}"


StorageDtype = Literal["float32", "float16"]


@dataclass(frozen=True)
class FeatureConfig:
    feature_type: FeatureType = FeatureType.LOGMEL
    logmel: LogMelConfig = field(default_factory=LogMelConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    storage_dtype: StorageDtype = "float32"
    # Trim leading and trailing audio quieter than the loudest frame minus this many dB before any
    # feature is computed (None: keep everything). Corpora differ in how much silence surrounds each
    # utterance (RAVDESS ~1 s each side, EMODB almost none); left in, it shifts pooled statistics.
    trim_db: float | None = None
    mfcc: MfccConfig = field(default_factory=MfccConfig)  # used by FeatureType.MFCC
    # Append time derivatives (librosa.feature.delta, width 9): 1 = deltas, 2 = deltas + delta-deltas.
    # LOGMEL and MFCC only.
    deltas: int = 0
    # Centre-pad (zeros) or centre-crop every signal to this many seconds before features, as TIM-Net's
    # reference code does (96,000 samples at 22.05 kHz = 4.354 s). None: keep each signal's length.
    fixed_seconds: float | None = None

    def __post_init__(self):
        if self.storage_dtype not in ("float32", "float16"):
            raise UnknownNameError("storage dtype", self.storage_dtype, ["float32", "float16"])
        if self.trim_db is not None and not 10 <= float(self.trim_db) <= 80:
            raise ConfigError(f"trim_db must be between 10 and 80 dB below the loudest frame (or None), got {self.trim_db}")
        if self.deltas not in (0, 1, 2):
            raise ConfigError(f"deltas must be 0 (off), 1 (deltas) or 2 (deltas + delta-deltas), got {self.deltas!r}")
        if self.deltas and self.feature_type not in (FeatureType.LOGMEL, FeatureType.MFCC):
            raise ConfigError(f"deltas apply to LOGMEL and MFCC features, not {self.feature_type.value}")
        if self.fixed_seconds is not None and not 0.1 <= float(self.fixed_seconds) <= 600:
            raise ConfigError(f"fixed_seconds must be between 0.1 and 600 (or None), got {self.fixed_seconds}")

    @property
    def base_dim(self) -> int | None:
        """Feature size before deltas for LOGMEL/MFCC (None: depends on the encoder)."""
        if self.feature_type is FeatureType.LOGMEL:
            return self.logmel.n_mels
        if self.feature_type is FeatureType.MFCC:
            return self.mfcc.n_mfcc
        return None

    def to_dict(self) -> dict:
        out = {"feature_type": self.feature_type.value, "storage_dtype": self.storage_dtype}
        if self.feature_type.uses_logmel:
            out["logmel"] = asdict(self.logmel)
        if self.feature_type is FeatureType.MFCC:
            out["mfcc"] = asdict(self.mfcc)
        if self.feature_type.uses_encoder:
            ssl = asdict(self.ssl)
            ssl["layers"] = list(self.ssl.layers)
            ssl.pop("max_batch_seconds")  # batching does not change the features
            out["ssl"] = ssl
        if self.trim_db is not None:  # absent when off, so untrimmed versions keep their hash
            out["trim_db"] = float(self.trim_db)
        if self.deltas:  # absent when off (older versions keep their hash)
            out["deltas"] = int(self.deltas)
        if self.fixed_seconds is not None:
            out["fixed_seconds"] = float(self.fixed_seconds)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> FeatureConfig:
        ssl = dict(data.get("ssl") or {})
        if "layers" in ssl:
            ssl["layers"] = tuple(ssl["layers"])
        return cls(
            feature_type=FeatureType.parse(data["feature_type"]),
            logmel=LogMelConfig(**(data.get("logmel") or {})),
            ssl=SSLConfig(**ssl),
            storage_dtype=data.get("storage_dtype", "float32"),
            trim_db=data.get("trim_db"),
            mfcc=MfccConfig(**(data.get("mfcc") or {})),
            deltas=int(data.get("deltas", 0)),
            fixed_seconds=data.get("fixed_seconds"),
        )

    def version(self) -> str:
        """Stable 10-hex-digit hash of everything that changes the stored numbers.

        A local encoder folder counts by its folder name, not the path it was reached by, so
        `../shared/models/x`, `/abs/shared/models/x` and the same folder mounted elsewhere on a
        cluster node share one version (the weight hash in each part's provenance is checked when
        a version is completed).
        """
        identity = self.to_dict()
        if "ssl" in identity and _is_local_path(identity["ssl"]["model"]):
            identity["ssl"]["model"] = "local:" + identity["ssl"]["model"].rstrip("/").split("/")[-1]
        blob = json.dumps(identity, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]

    def dataset_name(self, corpus: str) -> str:
        """`{CORPUS}_{TYPE}` for LOGMEL and the default HuBERT; other encoders get their own name."""
        name = f"{corpus}_{self.feature_type.value}"
        if self.deltas:
            name += "_D" if self.deltas == 1 else "_DD"
        if self.fixed_seconds is not None:
            name += f"_fixed{float(self.fixed_seconds):g}s"
        if self.feature_type.uses_encoder and not self.ssl.is_default_hubert:
            name += f"_{self.ssl.slug}"
        return name


def _is_local_path(model: str) -> bool:
    """A folder on disk (absolute, ./ or ../ relative, or existing) rather than a hub id like org/name."""
    import os

    return model.startswith(("/", "./", "../", "~")) or os.path.isdir(model)
