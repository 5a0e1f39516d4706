"""HTTP request bodies -> validated 16 kHz mono signals, or a `RequestError` with a status and a message.

Two body kinds for `POST /predict`:

    audio/wav, audio/flac, audio/x-wav, application/octet-stream   the bytes of a WAV or FLAC file
    application/json   {"audio": base64, "sample_rate": 16000, "encoding": "float32" | "int16" | "file",
                        "speaker": "optional id"}   ("file": base64 of a WAV/FLAC file; sample_rate optional)

No Ray and no torch here: the Serve deployment and the tests share it.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from ser_dist.audio import TARGET_SAMPLE_RATE, prepare_signal
from ser_dist.errors import AudioError

AUDIO_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/flac", "audio/x-flac", "application/octet-stream")
JSON_TYPE = "application/json"
ENCODINGS = {"float32": np.float32, "int16": np.int16}


@dataclass(frozen=True)
class RequestLimits:
    max_body_bytes: int = 16 * 1024 * 1024  # a 60 s 16-bit 48 kHz stereo WAV is 11.5 MB
    max_seconds: float = 60.0
    min_rate: int = 8_000
    max_rate: int = 96_000


class RequestError(ValueError):
    """A request the service refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        self.status, self.message = status, message
        super().__init__(message)


@dataclass(frozen=True)
class AudioRequest:
    signal: np.ndarray  # (N,) float32 at 16 kHz
    speaker: str | None


def check_body_size(content_length: str | None, limits: RequestLimits) -> None:
    """Refuse before reading when the declared size is too big."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limits.max_body_bytes:
        raise RequestError(413, f"body of {int(content_length)} bytes exceeds the limit of {limits.max_body_bytes} bytes")


def decode_request(body: bytes, content_type: str | None, limits: RequestLimits) -> AudioRequest:
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"body of {len(body)} bytes exceeds the limit of {limits.max_body_bytes} bytes")
    if not body:
        raise RequestError(400, "empty body; send a WAV/FLAC file or JSON {\"audio\": base64, \"sample_rate\": N}")
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind == JSON_TYPE:
        samples, rate, speaker = _from_json(body)
    elif kind in AUDIO_TYPES or not kind:
        samples, rate = _from_file(body)
        speaker = None
    else:
        raise RequestError(415, f"unsupported content type {kind!r}; expected one of {', '.join(AUDIO_TYPES + (JSON_TYPE,))}")
    if not limits.min_rate <= rate <= limits.max_rate:
        raise RequestError(422, f"unsupported sample rate {rate} Hz; expected {limits.min_rate} to {limits.max_rate} Hz")
    seconds = len(samples) / rate
    if seconds > limits.max_seconds:
        raise RequestError(413, f"audio too long: {seconds:.1f} s; at most {limits.max_seconds:g} s per request")
    try:
        signal = prepare_signal(samples, rate, source="request")
    except AudioError as exc:
        raise RequestError(400, f"unusable audio: {exc.problem}") from exc
    return AudioRequest(signal, speaker)


def _from_file(data: bytes) -> tuple[np.ndarray, int]:
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types for non-audio bytes  # noqa: BLE001
        raise RequestError(400, f"not a readable WAV/FLAC file ({type(exc).__name__}: {exc})") from exc
    return samples, int(rate)


def _from_json(body: bytes) -> tuple[np.ndarray, int, str | None]:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"body is not valid JSON ({exc})") from exc
    if not isinstance(payload, dict) or "audio" not in payload:
        raise RequestError(400, "JSON body needs \"audio\" (base64) and \"sample_rate\" (Hz)")
    encoding = payload.get("encoding", "float32")
    if encoding not in (*ENCODINGS, "file"):
        raise RequestError(400, f"unknown encoding {encoding!r}; expected one of {', '.join((*ENCODINGS, 'file'))}")
    try:
        raw = base64.b64decode(payload["audio"], validate=True)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise RequestError(400, f"\"audio\" is not valid base64 ({exc})") from exc
    speaker = payload.get("speaker")
    if speaker is not None and not isinstance(speaker, str | int):
        raise RequestError(400, "\"speaker\" must be a string")
    speaker = None if speaker is None else str(speaker)
    if encoding == "file":
        samples, rate = _from_file(raw)
        return samples, rate, speaker
    rate = payload.get("sample_rate")
    if not isinstance(rate, int) or isinstance(rate, bool):
        raise RequestError(400, f"\"sample_rate\" must be an integer number of Hz with {encoding} samples, got {rate!r}")
    dtype = np.dtype(ENCODINGS[encoding]).newbyteorder("<")
    if len(raw) % dtype.itemsize:
        raise RequestError(400, f"\"audio\" holds {len(raw)} bytes, not a whole number of {encoding} samples")
    samples = np.frombuffer(raw, dtype=dtype)
    if encoding == "int16":
        samples = samples.astype(np.float32) / 32768.0
    return samples.astype(np.float32), rate, speaker


def describe_limits(limits: RequestLimits) -> dict:
    return {"max_body_bytes": limits.max_body_bytes, "max_seconds": limits.max_seconds,
            "sample_rates_hz": [limits.min_rate, limits.max_rate], "output_sample_rate": TARGET_SAMPLE_RATE}
