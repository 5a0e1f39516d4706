"""LOGMEL extraction at corpus scale: N x EMODB as a `table:` corpus, plain loop vs Ray Data with 1 and 2 workers.

The corpus is a CSV listing every EMODB wav N times (distinct utterance ids `<id>_cNN` and speakers), prepared
with the library's own `table:PATH` reader. Three runs, each into a fresh store folder:

- plain: the worker's work in this process, no Ray (`load_audio`, `FeatureComputer.compute`,
  `features_to_table`, `write_part_atomically`, on the same length-sorted batches), torch on one thread;
- ray-1w, ray-2w: `extract_features(...)` on a local cluster started before the clock (its start-up is excluded).

Steady state: every part file's mtime is the moment its batch was finished. The first 5% of parts (at
least one) are the warm-up (actor start, imports, model load, first batches); steady audio s/s = seconds of
audio in the parts finished after the warm-up / (last part's mtime - warm-up's last part's mtime). The wall
figure covers the whole call. `os.getloadavg()` is recorded before and after each run: the machine is shared.

    python bench/scale_extract.py --label after                   # this checkout's code
    PYTHONPATH=../other-checkout python bench/scale_extract.py --label before   # another checkout's library

Each label's figures replace that label's in bench/results/scale_extract.json; the other label's are kept.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

if __package__:
    from bench.common import RESULTS_DIR, write_result
else:
    from common import RESULTS_DIR, write_result

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = Path(os.environ.get("SER_DIST_SHARED", REPO_ROOT.parent / "shared"))
SAMPLE_RATE = 16_000
WARMUP_FRACTION = 0.05
TARGETS = {"scaling_2w_vs_1w": 1.6, "steady_2w_audio_s_per_s": 3000.0}


def write_scaled_table(emodb_dir: Path, copies: int, path: Path) -> int:
    """A CSV corpus listing every EMODB file `copies` times with distinct ids and speakers; rows written."""
    from ser_dist.corpora import prepare

    manifest = prepare("EMODB", emodb_dir)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "speaker", "utterance_id", "gender"])
        for k in range(copies):
            for row in manifest.itertuples(index=False):
                writer.writerow([row.path, row.label, f"{row.speaker.split('_')[-1]}c{k:02d}", f"{row.utterance_id}_c{k:02d}", row.gender])
    return copies * len(manifest)


def part_timeline(directory: Path, durations: dict[str, float]) -> dict:
    """Steady-state throughput from the part files' mtimes (see the module docstring)."""
    parts = sorted((p.stat().st_mtime, p) for p in directory.rglob("part-*.parquet"))
    audio = [sum(durations[u] for u in pq.read_table(p, columns=["utterance_id"]).column(0).to_pylist()) for _, p in parts]
    n_warm = max(1, round(WARMUP_FRACTION * len(parts)))
    if len(parts) <= n_warm:
        return {"parts": len(parts), "steady_audio_s_per_s": None}
    window = parts[-1][0] - parts[n_warm - 1][0]
    return {
        "parts": len(parts),
        "warmup_parts": n_warm,
        "steady_window_s": round(window, 2),
        "steady_audio_s": round(sum(audio[n_warm:]), 1),
        "steady_audio_s_per_s": round(sum(audio[n_warm:]) / window, 1) if window > 0 else None,
        "first_part_s": parts[0][0],
    }


def plain_loop(manifest: pd.DataFrame, out_dir: Path, batch_size: int) -> float:
    """The Ray worker's per-batch work in this process; returns audio seconds extracted."""
    import torch

    from ser_dist.audio import load_audio
    from ser_dist.errors import AudioError
    from ser_dist.features.compute import FeatureComputer
    from ser_dist.features.config import FeatureConfig
    from ser_dist.features.store import features_to_table, write_part_atomically

    torch.set_num_threads(1)
    config = FeatureConfig()
    computer = FeatureComputer(config)
    ordered = manifest.sort_values("duration_s", kind="stable")
    audio_s = 0.0
    for start in range(0, len(ordered), batch_size):
        batch = ordered.iloc[start : start + batch_size]
        signals, kept = [], []
        for position, path in enumerate(batch["path"]):
            try:
                signals.append(load_audio(path))
                kept.append(position)
            except AudioError:
                continue
        if not signals:
            continue
        matrices = computer.compute(signals)
        table = features_to_table(batch.iloc[kept], matrices, config.storage_dtype, provenance={"dim": int(matrices[0].shape[1]), "encoder": {}})
        write_part_atomically(out_dir, table)
        audio_s += sum(len(s) for s in signals) / SAMPLE_RATE
    return audio_s


def cpu_stages(emodb_dir: Path, batch_size: int, repeats: int = 3) -> dict:
    """CPU seconds (process_time, one thread) of load / compute / write over one EMODB pass, best of `repeats`.

    CPU time, unlike wall time, barely moves when other processes share the cores, so it compares two
    libraries fairly on a busy machine (it leaves out Ray's own costs)."""
    import torch

    from ser_dist.audio import load_audio
    from ser_dist.corpora import prepare
    from ser_dist.features.compute import FeatureComputer
    from ser_dist.features.config import FeatureConfig
    from ser_dist.features.store import features_to_table, write_part_atomically

    torch.set_num_threads(1)
    manifest = prepare("EMODB", emodb_dir).sort_values("duration_s", kind="stable")
    computer = FeatureComputer(FeatureConfig())
    best: dict | None = None
    for _ in range(repeats):
        spent = {"load": 0.0, "compute": 0.0, "write": 0.0}
        with tempfile.TemporaryDirectory() as out:
            for start in range(0, len(manifest), batch_size):
                batch = manifest.iloc[start : start + batch_size]
                t0 = time.process_time()
                signals = [load_audio(path) for path in batch["path"]]
                t1 = time.process_time()
                matrices = computer.compute(signals)
                t2 = time.process_time()
                write_part_atomically(out, features_to_table(batch, matrices, "float32", provenance={"dim": 128, "encoder": {}}))
                t3 = time.process_time()
                spent["load"] += t1 - t0
                spent["compute"] += t2 - t1
                spent["write"] += t3 - t2
        if best is None or sum(spent.values()) < sum(best.values()):
            best = spent
    total = sum(best.values())
    return {"cpu_s": {k: round(v, 3) for k, v in best.items()}, "total_cpu_s": round(total, 3),
            "audio_s": round(float(manifest["duration_s"].sum()), 1),
            "audio_s_per_cpu_s": round(float(manifest["duration_s"].sum()) / total, 1), "repeats": repeats}


def write_cpu_stages(args: argparse.Namespace, batch_size: int) -> None:
    import ser_dist

    load_before = os.getloadavg()
    row = {"label": args.label, **cpu_stages(args.shared / "data" / "emodb", batch_size),
           "library": str(Path(ser_dist.__file__).resolve().parents[1]),
           "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()]}
    path = RESULTS_DIR / f"{args.output}_cpu_stages.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    rows = [r for r in previous.get("figures", []) if r.get("label") != args.label] + [row]
    write_result(f"{args.output}_cpu_stages", {"figures": rows, "notes": [cpu_stages.__doc__.split("\n\n")[0] + " One EMODB pass, batches of "
                                                                       f"{batch_size} length-sorted utterances, float32 parts."]})


def measure(name: str, run, manifest: pd.DataFrame, work_dir: Path) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work_dir))
    load_before = os.getloadavg()
    started_wall, started = time.time(), time.perf_counter()
    cpu0 = time.process_time()
    try:
        audio_s = run(out)
        wall = time.perf_counter() - started
        driver_cpu = time.process_time() - cpu0
        timeline = part_timeline(out, dict(zip(manifest["utterance_id"], manifest["duration_s"], strict=True)))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    first = timeline.pop("first_part_s", None)
    row = {
        "run": name,
        "utterances": len(manifest),
        "audio_s": round(audio_s, 1),
        "wall_s": round(wall, 2),
        "audio_s_per_s": round(audio_s / wall, 1),
        "to_first_part_s": None if first is None else round(first - started_wall, 2),
        **timeline,
        "driver_cpu_s": round(driver_cpu, 2),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True, help="whose code is measured, e.g. before / after")
    parser.add_argument("--copies", type=int, default=40, help="N of N x EMODB (default %(default)s)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--batch-size", type=int, default=None, help="default: ExtractionOptions' default")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--work-dir", type=Path, default=None, help="where the table and temporary stores go")
    parser.add_argument("--output", default="scale_extract")
    parser.add_argument("--note", default=None)
    parser.add_argument("--cpu-stages", action="store_true",
                        help="only the CPU seconds of load/compute/write over one EMODB pass (-> <output>_cpu_stages.json)")
    args = parser.parse_args(argv)

    import ser_dist
    from ser_dist.corpora import prepare
    from ser_dist.features.config import FeatureConfig
    from ser_dist.features.extract import ExtractionOptions, extract_features

    batch_size = args.batch_size or ExtractionOptions().batch_size
    if args.cpu_stages:
        write_cpu_stages(args, batch_size)
        return
    work_dir = Path(tempfile.mkdtemp(prefix="scale-extract-", dir=args.work_dir))
    rows = []
    try:
        table = work_dir / f"emodb_x{args.copies}.csv"
        write_scaled_table(args.shared / "data" / "emodb", args.copies, table)
        t0 = time.perf_counter()
        manifest = prepare(f"table:{table}")
        prepare_s = time.perf_counter() - t0
        for path in manifest["path"].unique():  # warm page cache: no run pays for a cold disk
            Path(path).read_bytes()
        if not args.skip_plain:
            rows.append(measure("plain", lambda out: plain_loop(manifest, out, batch_size), manifest, work_dir))
        import ray
        import ray.data

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        ray_init_s = time.perf_counter() - t0
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=UserWarning, module="ray")
        try:
            for workers in args.workers:
                def run(out, workers=workers):
                    result = extract_features(manifest, FeatureConfig(), out, corpus="SCALE",
                                              options=ExtractionOptions(num_workers=workers, batch_size=batch_size))
                    return result.audio_seconds
                rows.append(measure(f"ray-{workers}w", run, manifest, work_dir))
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    for row in rows:
        row["label"] = args.label
    previous_path = RESULTS_DIR / f"{args.output}.json"
    previous = json.loads(previous_path.read_text()) if previous_path.is_file() else {}
    figures = [r for r in previous.get("figures", []) if r.get("label") != args.label] + rows
    configs = {k: v for k, v in previous.get("config_by_label", {}).items() if k != args.label}
    configs[args.label] = {
        "library": str(Path(ser_dist.__file__).resolve().parents[1]), "copies": args.copies, "utterances": len(manifest),
        "batch_size": batch_size, "num_cpus": 2, "plain_torch_threads": 1, "prepare_manifest_s": round(prepare_s, 2),
        "ray_init_s": round(ray_init_s, 2), "note": args.note,
    }
    by = {(r["label"], r["run"]): r for r in figures}
    targets = []
    for label in sorted({r["label"] for r in figures}):
        one, two = by.get((label, "ray-1w")), by.get((label, "ray-2w"))
        if one and two and one.get("steady_audio_s_per_s") and two.get("steady_audio_s_per_s"):
            ratio = two["steady_audio_s_per_s"] / one["steady_audio_s_per_s"]
            targets.append({"label": label, "target": "2 workers / 1 worker, steady audio s/s", "value": round(ratio, 2),
                            "rule": f">= {TARGETS['scaling_2w_vs_1w']}", "met": ratio >= TARGETS["scaling_2w_vs_1w"]})
            targets.append({"label": label, "target": "2 workers, steady audio s/s", "value": two["steady_audio_s_per_s"],
                            "rule": f">= {TARGETS['steady_2w_audio_s_per_s']:g}",
                            "met": two["steady_audio_s_per_s"] >= TARGETS["steady_2w_audio_s_per_s"]})
    write_result(args.output, {
        "figures": figures,
        "targets": targets,
        "notes": [
            "steady_audio_s_per_s: audio in the parts finished after the first 5% of parts / (last part mtime - "
            "mtime of the last warm-up part); excludes cluster start-up (ray.init before the clock), actor start-up "
            "and the bookkeeping after the last part. audio_s_per_s: over the whole call (wall_s).",
            "The machine (2 cores) is shared with other agents: see load_before/load_after (1, 5, 15 min) per run.",
        ],
        "config_by_label": configs,
    })


if __name__ == "__main__":
    main()
