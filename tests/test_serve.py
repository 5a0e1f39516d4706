"""The Serve application: request checks (no Ray), then the app on a local Ray cluster under concurrent HTTP load."""

from __future__ import annotations

import base64
import io
import json
import socket
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser_dist.audio import load_audio
from ser_dist.errors import ConfigError
from ser_dist.serve.requests import RequestError, RequestLimits, decode_request

sys.path.insert(0, str(Path(__file__).parent))
from test_predict import train_tiny_checkpoint  # noqa: E402

LIMITS = RequestLimits(max_body_bytes=2_000_000, max_seconds=8.0)


def wav_bytes(samples: np.ndarray, rate: int, *, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def json_body(samples: np.ndarray, rate: int, *, encoding: str = "float32", speaker: str | None = None) -> bytes:
    raw = (samples * 32767).astype("<i2").tobytes() if encoding == "int16" else samples.astype("<f4").tobytes()
    return json.dumps({"audio": base64.b64encode(raw).decode(), "sample_rate": rate, "encoding": encoding,
                       "speaker": speaker}).encode()


def bad_requests(signal: np.ndarray) -> list[tuple[str, bytes, str, int, str]]:
    """(name, body, content type, expected status, words the message must hold)."""
    return [
        ("not audio", b"hello, this is text" * 10, "audio/wav", 400, "not a readable WAV/FLAC file"),
        ("empty", b"", "audio/wav", 400, "empty body"),
        ("too short", wav_bytes(signal[:100], 16_000), "audio/wav", 400, "too short"),
        ("too long", wav_bytes(np.tile(signal, 10)[: 16_000 * 9], 16_000), "audio/wav", 413, "audio too long: 9.0 s"),
        ("unsupported rate", wav_bytes(signal[:16_000], 4_000), "audio/wav", 422, "unsupported sample rate 4000 Hz"),
        ("oversized", wav_bytes(np.zeros(1_100_000, np.float32), 16_000), "audio/wav", 413, "exceeds the limit of 2000000 bytes"),
        ("content type", b"abc", "text/plain", 415, "unsupported content type 'text/plain'"),
        ("bad json", b"{not json", "application/json", 400, "not valid JSON"),
        ("bad base64", json.dumps({"audio": "%%%", "sample_rate": 16000}).encode(), "application/json", 400, "not valid base64"),
        ("no rate", json.dumps({"audio": base64.b64encode(b"\0" * 8000).decode()}).encode(), "application/json", 400, "sample_rate"),
    ]


@pytest.fixture(scope="module")
def emodb_files(emodb_root: Path) -> list[Path]:
    files = sorted((emodb_root / "wav").glob("*.wav"))
    return files[:: len(files) // 30][:30]


def test_decode_request_accepts_files_and_json(emodb_files):
    signal = load_audio(emodb_files[0])
    for body, kind in ((wav_bytes(signal, 16_000, subtype="FLOAT"), "audio/wav"),
                       (wav_bytes(signal, 16_000, fmt="FLAC"), "audio/flac"),
                       (json_body(signal, 16_000, speaker="03"), "application/json; charset=utf-8")):
        request = decode_request(body, kind, LIMITS)
        tolerance = 0 if kind == "audio/wav" else 1e-4  # FLAC is 16-bit
        np.testing.assert_allclose(request.signal, signal, atol=tolerance)
    assert decode_request(json_body(signal, 16_000, speaker="03"), "application/json", LIMITS).speaker == "03"
    as_int16 = decode_request(json_body(signal, 16_000, encoding="int16"), "application/json", LIMITS).signal
    np.testing.assert_allclose(as_int16, signal, atol=1e-4)
    resampled = decode_request(json_body(signal[::2].copy(), 8_000), "application/json", LIMITS).signal
    assert abs(len(resampled) - len(signal)) <= 2  # 8 kHz in, 16 kHz out


def test_decode_request_names_each_problem(emodb_files):
    signal = load_audio(emodb_files[0])
    for name, body, kind, status, words in bad_requests(signal):
        with pytest.raises(RequestError) as caught:
            decode_request(body, kind, LIMITS)
        assert caught.value.status == status, name
        assert words in caught.value.message, (name, caught.value.message)


def test_app_arguments_are_checked():
    pytest.importorskip("ray.serve", reason="the Serve application needs ray[serve]")
    from ser_dist.serve.app import ServeAppConfig

    config = ServeAppConfig.from_args({"model": "runs/x", "max_batch_size": 4, "max_seconds": 5})
    assert config.limits.max_seconds == 5 and config.max_batch_size == 4
    with pytest.raises(ConfigError, match="unknown keys \\['batch'\\]; expected model and some of"):
        ServeAppConfig.from_args({"model": "runs/x", "batch": 4})
    with pytest.raises(ConfigError, match="no \"model\""):
        ServeAppConfig.from_args({})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: bytes | None = None, content_type: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
@pytest.mark.ray
def test_served_model_under_concurrent_load(ray_cluster, emodb_files, tmp_path):
    serve = pytest.importorskip("ray.serve", reason="the Serve application needs ray[serve]")
    from ser_dist.prediction import Predictor
    from ser_dist.serve.app import EmotionRecognizer, ServeAppConfig

    checkpoint = train_tiny_checkpoint(emodb_files, tmp_path / "checkpoint")
    predictor = Predictor.from_dir(checkpoint)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        config = ServeAppConfig.from_args({"model": str(checkpoint), "max_batch_size": 8, "batch_wait_timeout_s": 0.05,
                                           "max_body_bytes": LIMITS.max_body_bytes, "max_seconds": LIMITS.max_seconds})
        app = EmotionRecognizer.options(ray_actor_options={"num_cpus": 0}).bind(config)  # 2-CPU test cluster
        serve.run(app, name="ser_dist_test", route_prefix="/")
        url = f"http://127.0.0.1:{port}"

        signals = [load_audio(f) for f in emodb_files]
        good = []  # (body, content type, the signal the service should see)
        for i, signal in enumerate(signals):
            if i % 3 == 0:
                good.append((json_body(signal, 16_000, speaker=f"s{i}"), "application/json", signal))
            elif i % 3 == 1:
                good.append((wav_bytes(signal, 16_000, subtype="FLOAT"), "audio/wav", signal))
            else:
                flac = wav_bytes(signal, 16_000, fmt="FLAC")
                good.append((flac, "audio/flac", sf.read(io.BytesIO(flac), dtype="float32")[0]))
        bad = bad_requests(signals[0]) * 2
        jobs = [("good", *g) for g in good] + [("bad", *b) for b in bad]
        order = np.random.default_rng(0).permutation(len(jobs))
        jobs = [jobs[i] for i in order]
        assert len(jobs) == 50

        def send(job):
            if job[0] == "good":
                return http(f"{url}/predict", job[1], job[2])
            return http(f"{url}/predict", job[2], job[3])

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(send, jobs))

        expected = predictor.probabilities([j[3] for j in jobs if j[0] == "good"])
        got_good = [(j, a) for j, a in zip(jobs, answers, strict=True) if j[0] == "good"]
        for (job, (status, answer)), row in zip(got_good, expected, strict=True):
            assert status == 200, answer
            assert list(answer["probabilities"]) == predictor.labels
            np.testing.assert_allclose(list(answer["probabilities"].values()), row, atol=1e-5)
            assert answer["emotion"] == predictor.labels[int(row.argmax())]
            assert answer["model"] == "checkpoint" and answer["normalization"] == "train_global"
            if job[2] == "application/json":
                assert answer["speaker"] is not None
        for job, (status, answer) in zip(jobs, answers, strict=True):
            if job[0] == "bad":
                name, _, _, want, words = job[1:]
                assert status == want and 400 <= status < 500, (name, status, answer)
                assert words in answer["error"], (name, answer)

        assert http(f"{url}/healthz") == (200, {"status": "ok", "model": "checkpoint"})
        status, card = http(f"{url}/model")
        assert status == 200 and card["labels"] == predictor.labels
        assert card["feature_spec"]["feature_type"] == "LOGMEL" and card["limits"]["max_seconds"] == LIMITS.max_seconds
        status, stats = http(f"{url}/stats")
        assert stats["requests"] == len(good)
        assert stats["max_batch"] > 1, stats  # concurrent requests shared model calls
    finally:
        serve.shutdown()
