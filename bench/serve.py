"""Serving throughput and latency: the Ray Serve application under concurrent HTTP requests of 3-s clips.

For each model (LOGMEL, and FUSION with a Whisper-tiny encoder), each batching setting (off:
max_batch_size 1; on: max_batch_size 16, 10 ms wait) and each concurrency (1, 8, 32 client threads),
N requests of 3-s EMODB clips (WAV bytes, utterances tiled or cut to 3 s) are sent with urllib from a
thread pool after a warm-up; the figures are requests/s over the wall time, p50/p99 of the
per-request latency (send to answer), requests that failed (HTTP error, connection error, timeout)
and requests the replica reports having run (its /stats), so a lost request shows. One replica on a
local Ray cluster (2 CPUs), torch on one thread; the FUSION replica loads its encoder once, in its
constructor. Without --model the checkpoints are UNTRAINED models with the default TimNet options
(speed only); FUSION uses layer 2 of the encoder at --ssl-model (skipped with --ssl-model '').

    python bench/serve.py                      # -> bench/results/serve.json
    python bench/serve.py --requests 64 --model runs/EMODB_LOGMEL_loso --ssl-model ''
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

try:
    from bench.common import write_result
    from bench.predict import DEFAULT_SHARED, UNTRAINED, untrained_checkpoint
except ImportError:  # run as `python bench/serve.py`
    from common import write_result
    from predict import DEFAULT_SHARED, UNTRAINED, untrained_checkpoint

CLIP_SECONDS = 3.0
CONCURRENCY = (1, 8, 32)
BATCHING = {"off": 1, "on": 16}
FUSION_LAYER = 2
MAX_WARMUP = 8  # warm-up requests per cell: max(2, concurrency), at most this many
# Targets of issue #13.
TARGET_P99_MS = 100.0  # LOGMEL p99 at concurrency 8
TARGET_SPEEDUP = 1.5  # batching on vs off, requests/s at concurrency 32


def clips(files: list[Path], n: int) -> list[bytes]:
    from ser_dist.audio import TARGET_SAMPLE_RATE, load_audio

    size = int(CLIP_SECONDS * TARGET_SAMPLE_RATE)
    out = []
    for path in files[:n]:
        signal = load_audio(path)
        signal = np.tile(signal, size // len(signal) + 1)[:size]
        buffer = io.BytesIO()
        sf.write(buffer, signal, TARGET_SAMPLE_RATE, format="WAV", subtype="PCM_16")
        out.append(buffer.getvalue())
    return out


def post(url: str, body: bytes) -> tuple[float, str | None]:
    """Latency in seconds and None, or the latency and what went wrong."""
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "audio/wav"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            answer = json.loads(response.read())
            error = None if response.status == 200 and "emotion" in answer else f"status {response.status}"
    except (urllib.error.URLError, OSError, ValueError) as exc:  # HTTPError is a URLError
        error = f"{type(exc).__name__}: {exc}"
    return time.perf_counter() - start, error


def served(base: str) -> int:
    with urllib.request.urlopen(f"{base}/stats", timeout=60) as response:
        return int(json.loads(response.read())["requests"])


def measure(base: str, bodies: list[bytes], *, concurrency: int, n_requests: int) -> dict:
    url = f"{base}/predict"
    work = [bodies[i % len(bodies)] for i in range(n_requests)]
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda b: post(url, b), work[: max(2, min(concurrency, MAX_WARMUP))]))  # warm-up
        before = served(base)
        start = time.perf_counter()
        results = list(pool.map(lambda b: post(url, b), work))
        wall = time.perf_counter() - start
    ran = served(base) - before
    ms = np.array([latency for latency, _ in results]) * 1000
    errors = sorted({error for _, error in results if error})
    return {"concurrency": concurrency, "requests": n_requests, "requests_per_s": n_requests / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "wall_s": wall,
            "failed": sum(1 for _, error in results if error), "served_by_replica": ran, **({"errors": errors[:5]} if errors else {})}


def targets(rows: list[dict]) -> list[dict]:
    """Issue #13's targets, met or not, from the figures."""
    cell = {(r["features"], r["batching"], r["concurrency"]): r for r in rows}
    out = []
    for setting in BATCHING:
        if ("LOGMEL", setting, 8) in cell:
            p99 = cell["LOGMEL", setting, 8]["p99_ms"]
            out.append({"target": f"LOGMEL p99 <= {TARGET_P99_MS:g} ms at concurrency 8, batching {setting}",
                        "value": round(p99, 1), "met": p99 <= TARGET_P99_MS})
    for features in dict.fromkeys(r["features"] for r in rows):
        if (features, "off", 32) in cell and (features, "on", 32) in cell:
            ratio = cell[features, "on", 32]["requests_per_s"] / cell[features, "off", 32]["requests_per_s"]
            out.append({"target": f"{features}: batching >= {TARGET_SPEEDUP:g}x unbatched requests/s at concurrency 32",
                        "value": round(ratio, 2), "met": ratio >= TARGET_SPEEDUP})
    failed = sum(r["failed"] for r in rows)
    lost = sum(r["requests"] - r["failed"] - r["served_by_replica"] for r in rows)
    out.append({"target": "no request lost or failed under load", "value": f"{failed} failed, {lost} unaccounted",
                "met": failed == 0 and lost == 0})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a trained checkpoint or run folder (default: untrained LOGMEL)")
    parser.add_argument("--data", default=str(DEFAULT_SHARED / "data" / "emodb" / "wav"))
    parser.add_argument("--requests", type=int, default=96, help="requests per (batching, concurrency) cell, LOGMEL")
    parser.add_argument("--ssl-model", default=str(DEFAULT_SHARED / "models" / "whisper-tiny.en"),
                        help=f"encoder folder for an untrained FUSION model (layer {FUSION_LAYER}); '' skips FUSION")
    parser.add_argument("--fusion-requests", type=int, default=48, help="requests per cell, FUSION")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.pop("RAY_ADDRESS", None)
    import ray
    from ray import serve

    from ser_dist.features.config import FeatureConfig, FeatureType, SSLConfig
    from ser_dist.serve.app import EmotionRecognizer, ServeAppConfig

    files = sorted(Path(args.data).glob("*.wav"))
    bodies = clips(files[:: max(1, len(files) // 32)], 32)
    with tempfile.TemporaryDirectory() as tmp:
        models = {"LOGMEL": (args.model or str(untrained_checkpoint(FeatureConfig(), files, Path(tmp) / "logmel")),
                             args.model or UNTRAINED, args.requests)}
        if args.ssl_model:
            fusion = FeatureConfig(feature_type=FeatureType.FUSION, ssl=SSLConfig(model=args.ssl_model, layers=(FUSION_LAYER,)))
            models["FUSION"] = (str(untrained_checkpoint(fusion, files, Path(tmp) / "fusion")),
                                 f"{UNTRAINED}; FUSION = LOGMEL + {Path(args.ssl_model).name} layer {FUSION_LAYER}",
                                 args.fusion_requests)
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        rows = []
        try:
            for features, (model, _, n_requests) in models.items():
                for setting, max_batch in BATCHING.items():
                    config = ServeAppConfig(model=model, max_batch_size=max_batch, batch_wait_timeout_s=0.01)
                    app = EmotionRecognizer.options(ray_actor_options={"num_cpus": 1}).bind(config)  # Ray sets OMP_NUM_THREADS=1
                    started = time.perf_counter()
                    serve.run(app, name="bench", route_prefix="/")
                    deploy_s = time.perf_counter() - started
                    for concurrency in CONCURRENCY:
                        row = {"features": features, "batching": setting, "max_batch_size": max_batch,
                               **measure(f"http://127.0.0.1:{port}", bodies, concurrency=concurrency, n_requests=n_requests),
                               "deploy_s": round(deploy_s, 1)}
                        print(row, flush=True)
                        rows.append(row)
                    serve.delete("bench")
        finally:
            serve.shutdown()
            ray.shutdown()
    write_result("serve", {
        "what": f"Ray Serve app, one replica (1 CPU), POST /predict with {CLIP_SECONDS:g}-s WAV clips over HTTP (urllib threads); "
                f"warm-up max(2, concurrency) requests, at most {MAX_WARMUP}, before each cell; deploy_s: serve.run of the "
                "setting's app (replica start and model load, the encoder's included)",
        "models": {features: note for features, (_, note, _) in models.items()},
        "note": "2-core machine shared with other CPU benchmarks while this ran (CPU load average ~30-45); "
                "client, proxy and replica share the cores",
        "figures": rows,
        "targets": targets(rows),
    })


if __name__ == "__main__":
    main()
