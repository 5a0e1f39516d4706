"""Training at corpus scale: streamed folds vs the in-memory path on synthetic stores of k x EMODB.

    python bench/scale_train.py                       # LOGMEL and FUSION(float16), sizes 1 10 40, both paths
    python bench/scale_train.py --features LOGMEL --sizes 1 10 --paths stream memory

Stores: `data/scale/<FEATURE>_x<k>` (built once, reused): every row of the EMODB store copied k times
with new utterance ids and speakers (`<id>_c07`, `<speaker>_c07`); FUSION (Whisper-tiny, layer 2)
is stored as float16. Each (feature, size, path) runs in its own process with its own local Ray
cluster (2 CPUs): one fold (protocol "full": training part + validation speakers held out), 2
epochs, a small TIM-Net (the figure is about the data path, not the model). Measured:
utterances/s of each epoch's training pass (from history.csv's train_seconds), the whole run's wall
time, and peak RSS of the driver, of each Ray worker process (by title) and of all workers together
(bench.common.MemorySampler, psutil polling every 0.2 s; RSS counts shared object-store pages
once per process that touches them).

Writes bench/results/scale_train.json; logs under bench/results/logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import MemorySampler, format_table, write_result  # noqa: E402

FEATURES = Path(os.environ.get("SER_DIST_FEATURES", REPO / "data" / "features"))  # where `ser-dist extract` put EMODB's stores
SOURCES = {
    "LOGMEL": (str(FEATURES / "LOGMEL" / "EMODB_LOGMEL"), "float32"),
    "FUSION": (str(FEATURES / "FUSION" / "EMODB_FUSION_whisper-tiny.en-L2"), "float16"),
}
SCALE_DIR = REPO / "data" / "scale"
LOG_DIR = REPO / "bench" / "results" / "logs"
EPOCHS = 2
MODEL = {"width": 16, "n_blocks": 4, "time_pool": 4}


def build_store(feature: str, copies: int) -> Path:
    """`data/scale/<feature>_x<copies>`: the EMODB store's rows copied `copies` times (new ids and speakers)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ser_dist.features.store import part_files, read_metadata, resolve_version, write_metadata

    source, dtype = SOURCES[feature]
    out = SCALE_DIR / f"{feature}_x{copies}"
    if (out / "metadata.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    version = resolve_version(source)
    metadata = read_metadata(version) or {}
    value_type = pa.float16() if dtype == "float16" else pa.float32()
    rows = 0
    for part in part_files(version):
        table = pq.read_table(part.path)
        features = table.column("features").cast(pa.large_list(value_type))
        for c in range(copies):
            suffix = f"_c{c:02d}"
            copy = table.set_column(table.schema.get_field_index("utterance_id"), "utterance_id",
                                    pa.array([u + suffix for u in table.column("utterance_id").to_pylist()], pa.string()))
            copy = copy.set_column(copy.schema.get_field_index("speaker"), "speaker",
                                   pa.array([s + suffix for s in copy.column("speaker").to_pylist()], pa.string()))
            copy = copy.set_column(copy.schema.get_field_index("features"), "features", features)
            pq.write_table(copy, out / f"part-c{c:02d}-{Path(part.path).stem[5:]}.parquet", compression="zstd")
            rows += copy.num_rows
    feature_config = dict(metadata.get("feature_config", {}), storage_dtype=dtype)
    write_metadata(out, metadata | {"status": "complete", "dataset_name": f"EMODB_{feature}_x{copies}", "feature_config": feature_config,
                                    "scale_copies": copies, "rows": rows, "source": source})
    return out


def run_one(feature: str, copies: int, path: str, run_root: Path) -> dict:
    """One fold, 2 epochs, in this process with a fresh local Ray cluster; returns the measurements."""
    import pandas as pd
    import ray

    from ser_dist.training.config import ModelOptions, TrainConfig
    from ser_dist.training.kfold import KFoldConfig, run_kfold

    store = build_store(feature, copies)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    name = f"{feature}_x{copies}_{path}"
    train = TrainConfig(epochs=EPOCHS, patience=None, batch_size=32, warmup_epochs=1, model=ModelOptions(**MODEL))
    config = KFoldConfig(features_path=str(store), protocol="full", out=str(run_root), name=name, data_loading=path, train=train)
    if (run_root / name).exists():  # a finished fold would be skipped, not measured
        shutil.rmtree(run_root / name)
    with MemorySampler(os.getpid()) as memory:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        started = time.perf_counter()
        summary = run_kfold(config)
        wall = time.perf_counter() - started
        ray.shutdown()
    history = pd.read_csv(run_root / name / "fold_0" / "history.csv")
    n_train = summary["folds"][0]["n_train"]
    mem = memory.summary()
    return {
        "feature": feature, "size": copies, "path": path, "n_train": n_train, "n_val": summary["folds"][0]["n_val"],
        "epoch_utt_per_s": [round(n_train / s, 2) for s in history["train_seconds"]],
        "utt_per_s": round(EPOCHS * n_train / float(history["train_seconds"].sum()), 2),
        "run_wall_s": round(wall, 1),
        "peak_driver_mib": mem["peak_driver_mib"], "peak_workers_mib": mem["peak_workers_mib"],
        "peak_train_worker_mib": max([v for k, v in mem["peak_by_title_mib"].items() if "TrainWorker" in k] or [None]),
        "peak_by_title_mib": mem["peak_by_title_mib"], "load_avg_1m": os.getloadavg()[0],
    }


def targets(rows: list[dict]) -> list[dict]:
    out = []
    by = {(r["feature"], r["size"], r["path"]): r for r in rows if "error" not in r}
    for feature in sorted({r["feature"] for r in rows}):
        one, forty, memory = by.get((feature, 1, "stream")), by.get((feature, 40, "stream")), by.get((feature, 1, "memory"))
        if one and forty:
            for key in ("peak_driver_mib", "peak_train_worker_mib"):
                ratio = forty[key] / one[key]
                out.append({"feature": feature, "target": f"{key} 40x <= 1.5x 1x", "value": round(ratio, 2), "met": ratio <= 1.5})
            ratio = forty["utt_per_s"] / one["utt_per_s"]
            out.append({"feature": feature, "target": "utt/s 40x >= 0.9x 1x", "value": round(ratio, 2), "met": ratio >= 0.9})
        if one and memory:
            ratio = one["utt_per_s"] / memory["utt_per_s"]
            out.append({"feature": feature, "target": "stream >= 0.8x memory utt/s at 1x", "value": round(ratio, 2), "met": ratio >= 0.8})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", nargs="+", default=["LOGMEL", "FUSION"], choices=sorted(SOURCES))
    parser.add_argument("--sizes", nargs="+", type=int, default=[1, 10, 40])
    parser.add_argument("--paths", nargs="+", default=["stream", "memory"], choices=["stream", "memory"])
    parser.add_argument("--memory-max-size", type=int, default=10, help="largest size the in-memory path is run at")
    parser.add_argument("--one", nargs=3, metavar=("FEATURE", "SIZE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    run_root = REPO / "runs" / "scale_train"
    if args.one:
        result = run_one(args.one[0], int(args.one[1]), args.one[2], run_root)
        print("RESULT " + json.dumps(result))
        return
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    rows = []
    previous = REPO / "bench" / "results" / "scale_train.json"
    if previous.is_file():  # keep measurements of other sizes from earlier invocations
        rows = [r for r in json.loads(previous.read_text()).get("figures", []) if "error" not in r]
    for feature in args.features:
        for size in args.sizes:
            build_store(feature, size)
            for path in args.paths:
                if path == "memory" and size > args.memory_max_size:
                    continue
                rows = [r for r in rows if (r["feature"], r["size"], r["path"]) != (feature, size, path)]
                log = LOG_DIR / f"scale_train_{feature}_x{size}_{path}.log"
                env = os.environ | {"PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
                with log.open("w") as handle:
                    proc = subprocess.run([sys.executable, __file__, "--one", feature, str(size), path], cwd=REPO, env=env,
                                          stdout=subprocess.PIPE, stderr=handle, text=True)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                row = json.loads(lines[-1][7:]) if lines else {"feature": feature, "size": size, "path": path,
                                                                 "error": f"exit {proc.returncode}; see {log.relative_to(REPO)}"}
                rows.append(row)
                print(format_table([{k: v for k, v in row.items() if k != "peak_by_title_mib"}]), flush=True)
                write_result("scale_train", {"figures": rows, "targets": targets(rows), "config": {
                    "epochs": EPOCHS, "model": MODEL, "batch_size": 32, "protocol": "full (one fold)", "stream_buffer_rows": 256,
                    "ray": "local, num_cpus=2, one Ray Train worker (1 CPU)", "load_avg": os.getloadavg()}})


if __name__ == "__main__":
    main()
