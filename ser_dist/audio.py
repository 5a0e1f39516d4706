"""The one audio loader: every read in ser-dist goes through `load_audio`.

soundfile reads, channels are averaged to mono, soxr resamples to 16 kHz, the result is float32.
Files that cannot serve as speech input raise `AudioError` naming the file and the problem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ser_dist.errors import AudioError

TARGET_SAMPLE_RATE = 16_000
# HuBERT/wav2vec2's convolutional front end needs 400 samples (25 ms at 16 kHz) for one frame.
MIN_SAMPLES = 400
_READABLE_FORMATS = {"WAV", "WAVEX", "FLAC", "OGG", "MP3", "RF64", "W64"}


def load_audio(path: Path | str, *, sample_rate: int = TARGET_SAMPLE_RATE, min_samples: int = MIN_SAMPLES) -> np.ndarray:
    """Mono float32 samples at `sample_rate` of the file at `path`, shape (N,)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "no such file")
    try:  # one open: the header fields come from the same handle that reads the samples
        with sf.SoundFile(str(path)) as handle:
            container, subtype_info = handle.format, handle.format_info
            samples = handle.read(dtype="float32", always_2d=True)
            native_rate = handle.samplerate
    except Exception as exc:  # libsndfile raises several types for non-audio bytes
        raise AudioError(path, f"not a readable audio file ({type(exc).__name__}: {exc})") from exc
    if path.suffix.lower() == ".wav" and container not in ("WAV", "WAVEX", "RF64", "W64"):
        raise AudioError(path, f"named .wav but its content is {container} ({subtype_info}); convert it to WAV")
    if container not in _READABLE_FORMATS:
        raise AudioError(path, f"unsupported container {container}")
    return prepare_signal(samples, native_rate, sample_rate=sample_rate, min_samples=min_samples, source=path)


def prepare_signal(
    samples: np.ndarray,
    native_rate: int,
    *,
    sample_rate: int = TARGET_SAMPLE_RATE,
    min_samples: int = MIN_SAMPLES,
    source: object = "<signal>",
) -> np.ndarray:
    """Validate an in-memory signal (N,) or (N, C) and bring it to mono float32 at `sample_rate`."""
    samples = np.asarray(samples)
    if samples.ndim == 2:
        samples = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    elif samples.ndim != 1:
        raise AudioError(source, f"expected samples of shape (N,) or (N, channels), got {samples.shape}")
    if samples.size == 0:
        raise AudioError(source, "the audio holds no samples")
    if not np.issubdtype(samples.dtype, np.floating):
        raise AudioError(source, f"expected float samples, got {samples.dtype}")
    samples = samples.astype(np.float32, copy=False)
    if not np.all(np.isfinite(samples)):
        raise AudioError(source, "the audio holds NaN or infinite samples")
    if native_rate <= 0:
        raise AudioError(source, f"invalid sample rate {native_rate}")
    if native_rate != sample_rate:
        samples = soxr.resample(samples, native_rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    if samples.size < min_samples:
        raise AudioError(
            source,
            f"too short: {samples.size} samples at {sample_rate} Hz ({samples.size / sample_rate * 1000:.1f} ms); "
            f"at least {min_samples} ({min_samples / sample_rate * 1000:.0f} ms, one encoder frame) are needed",
        )
    return np.ascontiguousarray(samples)
