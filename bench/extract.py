"""Feature extraction throughput and peak memory over EMODB: Ray Data vs a plain single-process loop.

What it measures (seconds of audio per wall second, "audio s/s"):

- LOGMEL, HUBERT (the HuBERT-base config with random weights: speed only) and the Whisper-tiny.en
  encoder (real weights, from <shared>/models), each
  * through the real pipeline, `extract_features(...)` with 1 and 2 Ray workers, into a fresh store
    folder (nothing is skipped as already done); the clock covers the whole call, on a running cluster;
  * as a plain loop in one fresh process doing the same work: `load_audio`, `FeatureComputer.compute`
    and one Parquet part per batch (`features_to_table` + the store's `write_part_atomically`), on the
    same length-sorted batches, torch on one thread like a one-CPU Ray worker. Its clock covers the
    imports, the model load and the loop;
  * for the encoders, the bare encoder calls (the time inside `FeatureComputer.compute`, which is
    `SSLEncoder.encode`) on those same batches.
- The fixed cost of a Ray call: the wall time of a one-utterance call with the same config and workers.
- LOGMEL on EMODB and on a synthetic N x EMODB (each row repeated with distinct ids `<id>_r<k>`, same
  files), with the peak RSS of the driver and the sum over all Ray worker processes (`ray::*` below
  the driver), sampled every 0.2 s.

The targets of the issue are checked from the figures and written next to them.

    python bench/extract.py                 # everything (quiet machine; see --help)
    python bench/extract.py --quick         # smoke run: 60 utterances, LOGMEL only
    python bench/extract.py --limit 20 --skip-logmel --skip-whisper   # HuBERT on 20 utterances

Writes bench/results/extract.json (extract_quick.json with --quick, extract_partial.json for any other subset or skip).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import pandas as pd

from ser_dist.features.extract import ExtractionOptions

if __package__:  # python -m bench.extract
    from bench.common import MemorySampler, write_result
else:  # python bench/extract.py
    from common import MemorySampler, write_result

logger = logging.getLogger("bench.extract")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = Path(os.environ.get("SER_DIST_SHARED", REPO_ROOT.parent / "shared"))
CORPUS = "EMODB"
SAMPLE_RATE = 16_000
FEATURES = ("LOGMEL", "HUBERT", "WHISPER")
LABELS = {
    "LOGMEL": "log-mel, 128 bands",
    "HUBERT": "HuBERT-base config, random weights (speed only)",
    "WHISPER": "Whisper-tiny.en encoder, real weights",
}
QUICK_UTTERANCES = 60
QUIET_CHILD_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # transformers' load/save bars in the spawned processes
FEATURE_WORKERS = {"feature_workers": "ray::MapWorker"}  # the actor pool's processes (Ray Data names them so)
# The targets: (key, description, comparison, threshold).
TARGET_RULES = {
    "scaling": ("2 Ray workers vs 1 (throughput ratio)", ">=", 1.6),
    "ray_vs_plain": ("Ray with 1 worker vs the plain loop (throughput ratio; 'within 25%')", ">=", 0.75),
    "ray_vs_bare": ("Ray with 1 worker vs bare encoder calls on the same batches (throughput ratio; 'within 20%')", ">=", 0.8),
    "scale_throughput": ("N x EMODB vs 1 x EMODB (throughput ratio)", ">=", 0.9),
    "scale_memory": ("N x EMODB vs 1 x EMODB (peak RSS of driver + workers, ratio)", "<=", 1.5),
}


# --------------------------------------------------------------------------- memory


def _merge_memory(summaries: list[dict]) -> dict:
    """Peaks over repeats: the largest of each."""
    merged = dict(summaries[0])
    for summary in summaries[1:]:
        for key, value in summary.items():
            if key.startswith("peak_") or key.startswith("max_"):
                merged[key] = max(merged[key], value)
    return merged


# --------------------------------------------------------------------------- manifests and batches


def load_manifest(corpus_dir: Path, *, limit: int | None, seed: int) -> pd.DataFrame:
    from ser_dist.corpora import prepare

    manifest = prepare(CORPUS, corpus_dir)
    if limit is not None and limit < len(manifest):
        manifest = manifest.sample(n=limit, random_state=seed).sort_values("utterance_id").reset_index(drop=True)
    return manifest


def replicate(manifest: pd.DataFrame, copies: int) -> pd.DataFrame:
    """`copies` x the manifest: same files, utterance ids `<id>_r<k>`, so every row is stored anew."""
    if copies == 1:
        return manifest
    frames = [manifest.assign(utterance_id=manifest["utterance_id"] + f"_r{k}") for k in range(copies)]
    return pd.concat(frames, ignore_index=True)


def length_sorted_batches(manifest: pd.DataFrame, batch_size: int) -> list[pd.DataFrame]:
    """The batches `extract_features` makes: rows sorted by duration (stable), `batch_size` at a time."""
    ordered = manifest.sort_values("duration_s", kind="stable")
    return [ordered.iloc[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def warm_page_cache(manifest: pd.DataFrame) -> int:
    """Read every audio file once, so no run pays for a cold disk; returns bytes read."""
    return sum(len(Path(path).read_bytes()) for path in manifest["path"].unique())


# --------------------------------------------------------------------------- encoders


def save_random_hubert(directory: Path, *, seed: int) -> None:
    """HuBERT-base (transformers' HubertConfig defaults: 12 layers, 768 hidden) with random weights."""
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(seed)
    HubertModel(HubertConfig()).save_pretrained(directory)


def feature_config(feature: str, *, hubert_dir: Path | None, whisper_dir: Path):
    from ser_dist.features.config import FeatureConfig, FeatureType, SSLConfig

    if feature == "LOGMEL":
        return FeatureConfig(feature_type=FeatureType.LOGMEL)
    model = hubert_dir if feature == "HUBERT" else whisper_dir
    return FeatureConfig(feature_type=FeatureType.HUBERT, ssl=SSLConfig(model=str(model)))


# --------------------------------------------------------------------------- plain loop (own process)


def plain_loop(manifest: pd.DataFrame, config: dict, out_dir: str, batch_size: int, torch_threads: int) -> dict:
    """The Ray worker's work in one process, timed: imports + model load, then load / compute / write."""
    started, started_cpu = time.perf_counter(), time.process_time()
    import torch

    from ser_dist.audio import load_audio
    from ser_dist.errors import AudioError
    from ser_dist.features.compute import FeatureComputer
    from ser_dist.features.config import FeatureConfig
    from ser_dist.features.store import features_to_table, write_part_atomically

    torch.set_num_threads(torch_threads)
    config = FeatureConfig.from_dict(config)
    computer = FeatureComputer(config)
    setup_s = time.perf_counter() - started
    load_s = compute_s = compute_cpu_s = write_s = audio_s = 0.0
    n_ok, skipped = 0, []
    for batch in length_sorted_batches(manifest, batch_size):
        t0 = time.perf_counter()
        signals, kept = [], []
        for position, row in enumerate(batch.itertuples(index=False)):
            try:
                signals.append(load_audio(row.path))
                kept.append(position)
            except AudioError as exc:
                skipped.append({"utterance_id": row.utterance_id, "reason": exc.problem})
        t1 = time.perf_counter()
        load_s += t1 - t0
        if not signals:
            continue
        cpu = time.process_time()
        matrices = computer.compute(signals)
        compute_cpu_s += time.process_time() - cpu
        t2 = time.perf_counter()
        compute_s += t2 - t1
        provenance = {"dim": int(matrices[0].shape[1]), "encoder": computer.encoder_metadata()}
        write_part_atomically(Path(out_dir), features_to_table(batch.iloc[kept], matrices, config.storage_dtype, provenance=provenance))
        write_s += time.perf_counter() - t2
        audio_s += sum(len(s) for s in signals) / SAMPLE_RATE
        n_ok += len(signals)
    return {
        "wall_s": time.perf_counter() - started,
        "cpu_s": time.process_time() - started_cpu,  # with wall_s: how much of a core the loop got
        "setup_s": setup_s,
        "load_s": load_s,
        "compute_s": compute_s,
        "compute_cpu_s": compute_cpu_s,
        "write_s": write_s,
        "audio_s": audio_s,
        "n_extracted": n_ok,
        "n_skipped": len(skipped),
        "torch_threads": torch.get_num_threads(),
    }


def _child_entry(conn, target, kwargs: dict) -> None:
    try:
        conn.send(("ok", target(**kwargs)))
    except BaseException:  # the parent re-raises it with the child's traceback
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_in_fresh_process(target, kwargs: dict, *, env: dict[str, str], interval_s: float) -> tuple[dict, dict]:
    """`target(**kwargs)` in a spawned process with `env` added; (its return value, its memory peaks)."""
    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # a spawned child copies the environment at start
    try:
        process = ctx.Process(target=_child_entry, args=(sender, target, kwargs), daemon=True)
        process.start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    sender.close()
    with MemorySampler(process.pid, interval_s=interval_s) as memory:
        try:
            status, value = receiver.recv()
        except EOFError:
            process.join()
            status, value = "error", f"the child process died (exit code {process.exitcode})"
    process.join()
    if status != "ok":
        raise RuntimeError(f"{getattr(target, '__name__', target)} failed in its process:\n{value}")
    return value, memory.summary()


# --------------------------------------------------------------------------- Ray runs


def ray_run(manifest: pd.DataFrame, config, *, workers: int, batch_size: int, work_dir: Path, interval_s: float) -> dict:
    """One `extract_features` call into a fresh folder: wall time, audio seconds, memory peaks."""
    from ser_dist.features.extract import extract_features

    out_root = Path(tempfile.mkdtemp(prefix="ray-", dir=work_dir))
    try:
        options = ExtractionOptions(num_workers=workers, batch_size=batch_size)
        with MemorySampler(os.getpid(), interval_s=interval_s, track=FEATURE_WORKERS) as memory:
            started = time.perf_counter()
            result = extract_features(manifest, config, out_root, corpus=CORPUS, options=options)
            wall_s = time.perf_counter() - started
    finally:
        shutil.rmtree(out_root, ignore_errors=True)
    if result.n_extracted + len(result.skipped) != len(manifest):
        raise RuntimeError(f"Ray run stored {result.n_extracted} + skipped {len(result.skipped)} of {len(manifest)} utterances")
    return {
        "wall_s": wall_s,
        "audio_s": result.audio_seconds,
        "n_extracted": result.n_extracted,
        "n_skipped": len(result.skipped),
        "memory": memory.summary(),
    }


def start_ray(num_cpus: int, *, verbose: bool) -> float:
    """A new local cluster of this process's own (never joins another); seconds it took."""
    import ray
    import ray.data

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = time.perf_counter()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    elapsed = time.perf_counter() - started
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        # Expected in the one-utterance probes with 2 workers: one input cannot keep 2 actors busy.
        warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)
    return elapsed


# --------------------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, args: argparse.Namespace, manifest: pd.DataFrame, work_dir: Path):
        self.args = args
        self.manifest = manifest
        self.work_dir = work_dir
        self.rows: list[dict] = []  # figures
        self.details: dict[str, dict] = {}  # every measurement, by run name
        self.child_env = {} if args.verbose else QUIET_CHILD_ENV

    # one figure row from the repeats of one measurement
    def record(self, name: str, *, feature: str, runner: str, workers: int | None, copies: int, runs: list[dict],
               startup_s: float | None = None, seconds_key: str = "wall_s") -> dict:
        seconds = [run[seconds_key] for run in runs]
        median = statistics.median(seconds)
        audio_s = runs[0]["audio_s"]
        memory = _merge_memory([run["memory"] for run in runs if "memory" in run]) if any("memory" in run for run in runs) else {}
        row = {
            "run": name,
            "feature": feature,
            "runner": runner,
            "workers": workers,
            "corpus": CORPUS if copies == 1 else f"{CORPUS} x{copies}",
            "utterances": runs[0]["n_extracted"],
            "audio_s": round(audio_s, 1),
            "seconds": round(median, 2),
            "audio_s_per_s": round(audio_s / median, 2),
            "startup_s": None if startup_s is None else round(startup_s, 2),
            "steady_audio_s_per_s": round(audio_s / (median - startup_s), 2) if startup_s is not None and median > startup_s else None,
            "peak_driver_mib": memory.get("peak_driver_mib"),
            "peak_workers_mib": memory.get("peak_workers_mib"),
            "peak_feature_workers_mib": memory.get("peak_feature_workers_mib"),
            "peak_driver_plus_workers_mib": memory.get("peak_driver_plus_workers_mib"),
        }
        self.rows.append(row)
        self.details[name] = {
            "label": LABELS[feature],
            "seconds_measured": seconds_key,
            "seconds_per_repeat": [round(s, 3) for s in seconds],
            "memory": memory,
            "runs": [{k: v for k, v in run.items() if k != "memory"} for run in runs],
        }
        logger.info("%s: %.1f audio s in %.2f s -> %.2f audio s/s", name, audio_s, median, audio_s / median)
        return row

    def plain(self, feature: str, config) -> None:
        runs = []
        for _ in range(self.args.repeats):
            out_dir = Path(tempfile.mkdtemp(prefix="plain-", dir=self.work_dir))
            try:
                kwargs = {"manifest": self.manifest, "config": config.to_dict(), "out_dir": str(out_dir),
                          "batch_size": self.args.batch_size, "torch_threads": 1}
                result, memory = run_in_fresh_process(plain_loop, kwargs, env={**self.child_env, "OMP_NUM_THREADS": "1"},
                                                      interval_s=self.args.interval)
            finally:
                shutil.rmtree(out_dir, ignore_errors=True)
            runs.append({**result, "memory": memory})
        self.record(f"{feature}/plain", feature=feature, runner="plain loop", workers=None, copies=1, runs=runs)
        if feature != "LOGMEL":
            bare = [{k: v for k, v in run.items() if k != "memory"} for run in runs]
            self.record(f"{feature}/bare", feature=feature, runner="bare encoder calls", workers=None, copies=1, runs=bare,
                        seconds_key="compute_s")

    def ray(self, feature: str, config, workers: int, *, copies: int = 1) -> None:
        manifest = replicate(self.manifest, copies)
        startup_s = None
        if self.args.startup_probe:
            tiny = self.manifest.nsmallest(1, "duration_s")
            probes = [ray_run(tiny, config, workers=workers, batch_size=self.args.batch_size, work_dir=self.work_dir,
                              interval_s=self.args.interval)["wall_s"] for _ in range(self.args.repeats)]
            startup_s = statistics.median(probes)
        runs = [ray_run(manifest, config, workers=workers, batch_size=self.args.batch_size, work_dir=self.work_dir,
                        interval_s=self.args.interval) for _ in range(self.args.repeats)]
        suffix = "" if copies == 1 else f"/x{copies}"
        self.record(f"{feature}/ray-{workers}w{suffix}", feature=feature, runner="ray", workers=workers, copies=copies,
                    runs=runs, startup_s=startup_s)

    def figure(self, name: str) -> dict | None:
        return next((row for row in self.rows if row["run"] == name), None)

    def targets(self) -> list[dict]:
        out = []

        def ratio(key: str, subject: str, numerator: dict | None, denominator: dict | None, field: str = "audio_s_per_s") -> None:
            if numerator is None or denominator is None:
                return
            what, op, threshold = TARGET_RULES[key]
            value = numerator[field] / denominator[field]
            met = value >= threshold if op == ">=" else value <= threshold
            out.append({"target": f"{subject}: {what}", "value": round(value, 3), "rule": f"{op} {threshold}", "met": bool(met),
                        "compares": f"{numerator['run']} / {denominator['run']}"})

        for feature in FEATURES:
            ratio("scaling", feature, self.figure(f"{feature}/ray-2w"), self.figure(f"{feature}/ray-1w"))
            ratio("ray_vs_plain", feature, self.figure(f"{feature}/ray-1w"), self.figure(f"{feature}/plain"))
        ratio("ray_vs_bare", "HUBERT", self.figure("HUBERT/ray-1w"), self.figure("HUBERT/bare"))
        workers, copies = self.args.scale_workers, self.args.scale_copies
        big, small = self.figure(f"LOGMEL/ray-{workers}w/x{copies}"), self.figure(f"LOGMEL/ray-{workers}w")
        ratio("scale_throughput", f"LOGMEL, {workers} workers", big, small)
        ratio("scale_memory", f"LOGMEL, {workers} workers", big, small, field="peak_driver_plus_workers_mib")
        return out


def run_bench(args: argparse.Namespace) -> dict:
    corpus_dir = args.corpus_dir or args.shared / "data" / "emodb"
    whisper_dir = args.whisper_model or args.shared / "models" / "whisper-tiny.en"
    features = [f for f, skip in (("LOGMEL", args.skip_logmel), ("HUBERT", args.skip_hubert), ("WHISPER", args.skip_whisper)) if not skip]
    if "WHISPER" in features and not (whisper_dir / "config.json").is_file():
        raise FileNotFoundError(f"no Whisper model at {whisper_dir} (config.json missing); pass --whisper-model DIR, or --skip-whisper")
    manifest = load_manifest(corpus_dir, limit=args.limit, seed=args.seed)
    logger.info("%s: %d utterances, %.1f s of audio (%s)", CORPUS, len(manifest), manifest["duration_s"].sum(), corpus_dir)
    warm_page_cache(manifest)
    load_at_start = os.getloadavg()
    work_dir = Path(tempfile.mkdtemp(prefix="ser-dist-bench-", dir=args.work_dir))
    bench = Bench(args, manifest, work_dir)
    phases: dict[str, float] = {}
    started = time.perf_counter()
    try:
        hubert_dir = None
        if "HUBERT" in features:
            hubert_dir = work_dir / "hubert-base-random"
            run_in_fresh_process(save_random_hubert, {"directory": hubert_dir, "seed": args.seed}, env=bench.child_env,
                                 interval_s=1.0)
        configs = {f: feature_config(f, hubert_dir=hubert_dir, whisper_dir=whisper_dir) for f in features}

        # Phase 1, no Ray running: the plain loops (and the bare encoder calls they time).
        if not args.skip_plain:
            for feature in features:
                t0 = time.perf_counter()
                bench.plain(feature, configs[feature])
                phases[f"{feature}/plain"] = time.perf_counter() - t0

        # Phase 2: one local cluster for every Ray run.
        import ray

        ray_init_s = start_ray(args.num_cpus, verbose=args.verbose)
        try:
            if configs:  # first Ray Data call of the process (imports, plan): not measured
                first = next(iter(configs.values()))
                ray_run(manifest.nsmallest(1, "duration_s"), first, workers=1, batch_size=args.batch_size, work_dir=work_dir,
                        interval_s=args.interval)
            for feature in features:
                for workers in args.workers:
                    t0 = time.perf_counter()
                    bench.ray(feature, configs[feature], workers)
                    phases[f"{feature}/ray-{workers}w"] = time.perf_counter() - t0
            if "LOGMEL" in features and not args.skip_scale:
                if args.scale_workers not in args.workers:
                    bench.ray("LOGMEL", configs["LOGMEL"], args.scale_workers)
                t0 = time.perf_counter()
                bench.ray("LOGMEL", configs["LOGMEL"], args.scale_workers, copies=args.scale_copies)
                phases[f"LOGMEL/ray-{args.scale_workers}w/x{args.scale_copies}"] = time.perf_counter() - t0
        finally:
            ray.shutdown()
    finally:
        if args.keep_work_dir:
            logger.info("kept %s", work_dir)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    return {
        "figures": bench.rows,
        "targets": bench.targets(),
        "notes": [
            "audio_s_per_s = seconds of audio / wall seconds of the whole call (Ray: extract_features on a running cluster; "
            "plain loop: imports + model load + load/compute/write in a fresh process).",
            "startup_s = wall time of a one-utterance call with the same config and workers; steady_audio_s_per_s "
            "= audio_s / (seconds - startup_s).",
            "bare encoder calls: time inside FeatureComputer.compute (= SSLEncoder.encode) in the plain loop, same batches.",
            "HUBERT figures use random weights (transformers HubertConfig defaults = base size): speed only, "
            "features meaningless.",
            "Memory: RSS, sampled every memory_interval_s; workers = every 'ray::' process under the driver (the feature "
            "actors, Ray Data's helper actors, idle workers; not Ray's agents); details give the feature actors alone "
            "(peak_feature_workers_mib) and Ray's system processes. RSS counts shared pages once per process.",
            *([args.note] if args.note else []),
        ],
        "partial_run": args.output != "extract" or args.limit is not None or len(features) < len(FEATURES)
        or args.skip_plain or args.skip_scale,
        "config": {
            "corpus": CORPUS,
            "corpus_dir": str(corpus_dir),
            "utterances": len(manifest),
            "audio_s_manifest": round(float(manifest["duration_s"].sum()), 1),
            "limit": args.limit,
            "features": {f: {"label": LABELS[f], "feature_config": configs[f].to_dict()} for f in features},
            "workers": args.workers,
            "num_cpus": args.num_cpus,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "summary_statistic": "median over repeats (memory: max)",
            "scale_copies": args.scale_copies,
            "scale_workers": args.scale_workers,
            "startup_probe": args.startup_probe,
            "memory_interval_s": args.interval,
            "plain_loop_torch_threads": 1,
            "ray_init_s": round(ray_init_s, 2),
            "phase_seconds": {k: round(v, 1) for k, v in phases.items()},
            # A busy machine shows here: load averages above the CPU count, plain loops with cpu_s << wall_s.
            "load_average_1_5_15_start": [round(x, 2) for x in load_at_start],
            "load_average_1_5_15_end": [round(x, 2) for x in os.getloadavg()],
            "total_seconds": round(time.perf_counter() - started, 1),
        },
        "details": bench.details,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared folder (env SER_DIST_SHARED; default %(default)s)")
    parser.add_argument("--corpus-dir", type=Path, default=None, help="EMODB folder (default: <shared>/data/emodb)")
    parser.add_argument("--whisper-model", type=Path, default=None, help="Whisper folder (default: <shared>/models/whisper-tiny.en)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_UTTERANCES} utterances, no HuBERT, no Whisper, output extract_quick.json")
    parser.add_argument("--limit", type=int, default=None, help="a seeded random subset of this many utterances")
    parser.add_argument("--skip-logmel", action="store_true", help="no LOGMEL runs (and so no scale runs)")
    parser.add_argument("--skip-hubert", action="store_true")
    parser.add_argument("--skip-whisper", action="store_true")
    parser.add_argument("--skip-plain", action="store_true", help="no plain loops (and so no bare encoder figures)")
    parser.add_argument("--skip-scale", action="store_true", help="no N x EMODB run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts to run (default: 1 2)")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=ExtractionOptions().batch_size,
                        help="utterances per batch and per Parquet part (default %(default)s, as ExtractionOptions)")
    parser.add_argument("--scale-copies", type=int, default=8, help="N of the synthetic N x EMODB (default %(default)s)")
    parser.add_argument("--scale-workers", type=int, default=2, help="Ray workers for the 1x / N x comparison (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per measurement; figures are medians (default %(default)s)")
    parser.add_argument("--no-startup-probe", dest="startup_probe", action="store_false",
                        help="skip the one-utterance calls that measure Ray's fixed cost")
    parser.add_argument("--interval", type=float, default=0.2, help="memory sampling interval, seconds (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset and of the random HuBERT weights (default %(default)s)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where temporary stores go (default: the system temp dir)")
    parser.add_argument("--keep-work-dir", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=None, help="default: bench/results")
    parser.add_argument("--output", default=None,
                        help="result name (default: extract; extract_quick with --quick, extract_partial with a subset or a skip)")
    parser.add_argument("--note", default=None, help="free text stored with the result (e.g. 'machine busy')")
    parser.add_argument("--verbose", action="store_true", help="show ser_dist's and Ray Data's progress logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit = args.limit or QUICK_UTTERANCES
        args.skip_hubert = args.skip_whisper = True
    for name in ("limit", "batch_size", "scale_copies", "scale_workers", "repeats", "num_cpus"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if min(args.workers) < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    partial = args.limit is not None or args.skip_logmel or args.skip_hubert or args.skip_whisper or args.skip_plain or args.skip_scale
    args.output = args.output or ("extract_quick" if args.quick else "extract_partial" if partial else "extract")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    payload = run_bench(args)
    write_result(args.output, payload, results_dir=args.results_dir)


if __name__ == "__main__":
    main()
