"""Long recordings -> spans to classify: voice activity (silero-vad) or fixed windows.

Spans are (start_s, end_s) in seconds of a 16 kHz mono signal. Nothing is dropped silently: a speech
burst shorter than `min_speech_s`, or a span too short for one feature frame, is returned in
`Segmentation.dropped` with the reason, and the prediction table lists it.

silero-vad ships its model inside the package (TorchScript, run by our torch on CPU), so voice
activity detection needs no download; without the package, `Segmenter.FIXED` still works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from ser_dist.audio import MIN_SAMPLES, TARGET_SAMPLE_RATE
from ser_dist.errors import ConfigError, ModelLoadError, UnknownNameError

SILERO_REQUIREMENT = "silero-vad>=6.2"


class Segmenter(StrEnum):
    VAD = "vad"  # speech regions found by silero-vad
    FIXED = "fixed"  # windows of window_s every hop_s seconds

    @classmethod
    def parse(cls, name: str | Segmenter) -> Segmenter:
        try:
            return cls(str(name).lower())
        except ValueError:
            raise UnknownNameError("segmenter", name, [s.value for s in cls]) from None


@dataclass(frozen=True)
class SegmentationConfig:
    """How a long recording is cut before each piece is classified."""

    method: Segmenter = Segmenter.VAD
    window_s: float = 3.0  # FIXED: window length
    hop_s: float = 1.5  # FIXED: step between window starts
    min_silence_s: float = 0.3  # VAD: pauses shorter than this stay inside one segment
    min_speech_s: float = 0.25  # VAD: shorter speech bursts are dropped (and reported)
    speech_pad_s: float = 0.03  # VAD: margin added on both sides of each speech region
    threshold: float = 0.5  # VAD: speech probability threshold

    def __post_init__(self):
        object.__setattr__(self, "method", Segmenter.parse(self.method))
        min_s = MIN_SAMPLES / TARGET_SAMPLE_RATE
        if self.window_s < min_s:
            raise ConfigError(f"window_s must be at least {min_s} s (one feature frame), got {self.window_s}")
        if not 0 < self.hop_s:
            raise ConfigError(f"hop_s must be > 0, got {self.hop_s}")
        if self.min_speech_s < min_s:
            raise ConfigError(f"min_speech_s must be at least {min_s} s (one feature frame), got {self.min_speech_s}")
        if self.min_silence_s < 0 or self.speech_pad_s < 0:
            raise ConfigError(f"min_silence_s and speech_pad_s must be >= 0, got {self.min_silence_s}, {self.speech_pad_s}")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")


@dataclass(frozen=True)
class DroppedSpan:
    start_s: float
    end_s: float
    reason: str


@dataclass
class Segmentation:
    spans: list[tuple[float, float]]  # (start_s, end_s), in time order
    dropped: list[DroppedSpan] = field(default_factory=list)


def fixed_windows(n_samples: int, sample_rate: int, window_s: float, hop_s: float) -> list[tuple[float, float]]:
    """Windows of `window_s` every `hop_s` covering the whole signal.

    Every window is full length: where the regular grid leaves a tail, one more window is aligned to
    the end of the signal (so no short last piece). A signal shorter than one window is one span.
    """
    if n_samples <= 0:
        return []
    window = int(round(window_s * sample_rate))
    hop = int(round(hop_s * sample_rate))
    if window <= 0 or hop <= 0:
        raise ConfigError(f"window_s and hop_s must give at least one sample, got {window_s}, {hop_s}")
    if n_samples <= window:
        return [(0.0, n_samples / sample_rate)]
    starts = list(range(0, n_samples - window + 1, hop))
    if starts[-1] + window < n_samples:
        starts.append(n_samples - window)
    return [(s / sample_rate, (s + window) / sample_rate) for s in starts]


class VoiceActivityDetector:
    """silero-vad's bundled model, loaded once; `segments` finds the speech regions of a signal."""

    sample_rate = TARGET_SAMPLE_RATE

    def __init__(self):
        try:
            from silero_vad import get_speech_timestamps, load_silero_vad
        except ImportError as exc:
            raise ModelLoadError(
                f"voice activity segmentation needs the silero-vad package ({exc}); install it with "
                f"`pip install '{SILERO_REQUIREMENT}'`, or segment with fixed windows (--segmenter fixed)"
            ) from exc
        try:
            self.model = load_silero_vad()  # TorchScript file shipped inside the package
        except (RuntimeError, OSError) as exc:
            raise ModelLoadError(f"silero-vad could not load its bundled model ({exc}); use --segmenter fixed") from exc
        self._speech_timestamps = get_speech_timestamps

    def segments(self, signal: np.ndarray, config: SegmentationConfig) -> Segmentation:
        """Speech spans of a 16 kHz mono float32 signal; bursts shorter than min_speech_s are dropped."""
        import torch

        audio = torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32))
        # min_speech 0: silero would drop short bursts without a word; we drop them here and report them
        found = self._speech_timestamps(
            audio, self.model, threshold=config.threshold, sampling_rate=self.sample_rate,
            min_speech_duration_ms=0, min_silence_duration_ms=int(round(config.min_silence_s * 1000)),
            speech_pad_ms=int(round(config.speech_pad_s * 1000)),
        )
        result = Segmentation(spans=[])
        for item in found:
            start, end = item["start"] / self.sample_rate, item["end"] / self.sample_rate
            if end - start < config.min_speech_s:
                result.dropped.append(DroppedSpan(start, end, f"speech burst of {end - start:.3f} s is shorter than min_speech_s={config.min_speech_s}"))
            else:
                result.spans.append((start, end))
        return result


def vad_segments(
    signal: np.ndarray,
    sample_rate: int = TARGET_SAMPLE_RATE,
    *,
    config: SegmentationConfig | None = None,
    detector: VoiceActivityDetector | None = None,
) -> list[tuple[float, float]]:
    """Speech spans (start_s, end_s) of a 16 kHz mono signal, found by silero-vad.

    Bursts shorter than `config.min_speech_s` are left out; use `segment_signal` to get them listed.
    """
    return segment_signal(signal, sample_rate, config=config or SegmentationConfig(method=Segmenter.VAD), detector=detector).spans


def segment_signal(
    signal: np.ndarray,
    sample_rate: int = TARGET_SAMPLE_RATE,
    *,
    config: SegmentationConfig,
    detector: VoiceActivityDetector | None = None,
    min_samples: int = MIN_SAMPLES,
) -> Segmentation:
    """Spans to classify and the spans dropped (with why), by `config.method`."""
    if sample_rate != TARGET_SAMPLE_RATE:
        raise ConfigError(f"segmentation works on {TARGET_SAMPLE_RATE} Hz signals, got {sample_rate}; load with ser_dist.audio.load_audio")
    if config.method is Segmenter.FIXED:
        result = Segmentation(fixed_windows(len(signal), sample_rate, config.window_s, config.hop_s))
    else:
        result = (detector or VoiceActivityDetector()).segments(signal, config)
    kept = []
    for start, end in result.spans:  # a span must give at least one feature frame
        if int(round(end * sample_rate)) - int(round(start * sample_rate)) < min_samples:
            result.dropped.append(DroppedSpan(start, end, f"{end - start:.3f} s is shorter than one feature frame ({min_samples} samples)"))
        else:
            kept.append((start, end))
    result.spans = kept
    result.dropped.sort(key=lambda d: d.start_s)
    return result
