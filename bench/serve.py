"""Serving throughput and latency: the Ray Serve application under concurrent HTTP requests of 3-s clips.

For each batching setting (off: max_batch_size 1; on: max_batch_size 16, 10 ms wait) and each
concurrency (1, 8, 32 client threads), N requests of 3-s EMODB clips (WAV bytes, utterances tiled or
cut to 3 s) are sent with urllib from a thread pool after a warm-up; the figures are requests/s over
the wall time and p50/p99 of the per-request latency (send to answer). One replica on a local Ray
cluster (2 CPUs), torch on one thread. Without --model the checkpoint is an UNTRAINED LOGMEL model
with the default TimNet options (speed only).

    python bench/serve.py                      # -> bench/results/serve.json
    python bench/serve.py --requests 64 --model runs/EMODB_LOGMEL_loso
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

try:
    from bench.common import write_result
    from bench.predict import untrained_checkpoint
except ImportError:  # run as `python bench/serve.py`
    from common import write_result
    from predict import untrained_checkpoint

CLIP_SECONDS = 3.0
CONCURRENCY = (1, 8, 32)
BATCHING = {"off": 1, "on": 16}


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


def post(url: str, body: bytes) -> float:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "audio/wav"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")
    return time.perf_counter() - start


def measure(url: str, bodies: list[bytes], *, concurrency: int, n_requests: int) -> dict:
    work = [bodies[i % len(bodies)] for i in range(n_requests)]
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda b: post(url, b), work[: max(2, concurrency)]))  # warm-up
        start = time.perf_counter()
        latencies = list(pool.map(lambda b: post(url, b), work))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": n_requests, "requests_per_s": n_requests / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a trained checkpoint or run folder (default: untrained LOGMEL)")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "emodb" / "wav"))
    parser.add_argument("--requests", type=int, default=96, help="requests per (batching, concurrency) cell")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.pop("RAY_ADDRESS", None)
    import ray
    from ray import serve

    from ser_dist.features.config import FeatureConfig
    from ser_dist.serve.app import EmotionRecognizer, ServeAppConfig

    files = sorted(Path(args.data).glob("*.wav"))
    bodies = clips(files[:: max(1, len(files) // 32)], 32)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(untrained_checkpoint(FeatureConfig(), files, Path(tmp) / "checkpoint"))
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        rows = []
        try:
            for setting, max_batch in BATCHING.items():
                config = ServeAppConfig(model=model, max_batch_size=max_batch, batch_wait_timeout_s=0.01)
                app = EmotionRecognizer.options(ray_actor_options={"num_cpus": 1}).bind(config)  # Ray sets OMP_NUM_THREADS=1
                serve.run(app, name="bench", route_prefix="/")
                for concurrency in CONCURRENCY:
                    row = {"batching": setting, "max_batch_size": max_batch,
                           **measure(f"http://127.0.0.1:{port}/predict", bodies, concurrency=concurrency, n_requests=args.requests)}
                    print(row, flush=True)
                    rows.append(row)
                serve.delete("bench")
        finally:
            serve.shutdown()
            ray.shutdown()
    write_result("serve", {
        "what": f"Ray Serve app, one replica (1 CPU), POST /predict with {CLIP_SECONDS:g}-s WAV clips over HTTP (urllib threads)",
        "model": args.model or "untrained model (default TimNet options, random weights): speed only",
        "note": "2-core machine shared with other CPU benchmarks while this ran; client, proxy and replica share the cores",
        "figures": rows,
    })


if __name__ == "__main__":
    main()
