"""Prediction speed on CPU: files per second and real-time factor (processing time / audio duration).

What it measures, over the EMODB files (all 535 unless --limit):

- `Predictor.predict_files(paths)` (batched by length): the clock covers audio loading, feature
  computation, normalisation and the model; a warm-up call on a few files comes first, and the
  model load (`Predictor.from_dir`) is timed on its own;
- `Predictor.predict_file(path)` one file at a time on the first --single files (latency per file);
- `Predictor.predict_timeline` on a synthetic long recording (EMODB utterances with 0.5 s pauses),
  with voice activity segmentation (silero-vad) and with fixed 3-s windows.

Torch runs on one thread unless --threads says otherwise (on a shared, busy machine several
threads can be far slower than one). For LOGMEL, and for FUSION when --ssl-model names an encoder folder (e.g. <shared>/models/whisper-tiny.en).
Without --model the checkpoints are UNTRAINED models with the default TimNet options, normalised on
30 EMODB files: the figures are speed only, their predictions mean nothing.

    python bench/predict.py                                   # LOGMEL, untrained model
    python bench/predict.py --ssl-model ../shared/models/whisper-tiny.en   # + FUSION
    python bench/predict.py --model runs/EMODB_loso           # a trained checkpoint or run folder
    python bench/predict.py --quick                           # 60 files, LOGMEL

Writes bench/results/predict.json (predict_quick.json with --quick, predict_<N>files.json with --limit N).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ser_dist.audio import TARGET_SAMPLE_RATE, load_audio
from ser_dist.corpora.emodb import parse_emodb_name
from ser_dist.features.compute import FeatureComputer
from ser_dist.features.config import FeatureConfig, FeatureType, SSLConfig
from ser_dist.prediction import Predictor, SegmentationConfig, Segmenter
from ser_dist.training.checkpoint import save_checkpoint
from ser_dist.training.config import TrainConfig
from ser_dist.training.data import Standardizer
from ser_dist.training.loop import build_model

if __package__:  # python -m bench.predict
    from bench.common import write_result
else:  # python bench/predict.py
    from common import write_result

logger = logging.getLogger("bench.predict")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = Path(os.environ.get("SER_DIST_SHARED", REPO_ROOT.parent / "shared"))
N_NORM_FILES = 30
UNTRAINED = "untrained model (default TimNet options, random weights): speed only"


def untrained_checkpoint(feature_config: FeatureConfig, files: list[Path], directory: Path) -> Path:
    """A checkpoint with random weights and real normalisation statistics: same compute as a trained one."""
    computer = FeatureComputer(feature_config)
    sample = files[:: max(1, len(files) // N_NORM_FILES)][:N_NORM_FILES]
    features = computer.compute([load_audio(f) for f in sample])
    labels = sorted({parse_emodb_name(f)["label"] for f in files})
    torch.manual_seed(0)
    model, model_config = build_model(TrainConfig(), computer.dim, len(labels))
    return save_checkpoint(
        directory, model_config=model_config, state_dict=model.state_dict(), standardizer=Standardizer.fit(features),
        labels=labels, feature_config=feature_config.to_dict() | {"encoder": computer.encoder_metadata()},
        extra={"normalization": "train_global", "note": UNTRAINED},
    )


def long_recording(files: list[Path], seconds: float, directory: Path) -> Path:
    """EMODB utterances with 0.5 s of near-silence between them, about `seconds` long, as a WAV file."""
    rng = np.random.default_rng(0)
    parts, total = [], 0.0
    for f in files:
        speech = load_audio(f)
        parts += [speech, 1e-4 * rng.standard_normal(TARGET_SAMPLE_RATE // 2).astype(np.float32)]
        total += len(speech) / TARGET_SAMPLE_RATE + 0.5
        if total >= seconds:
            break
    path = directory / "long.wav"
    sf.write(path, np.concatenate(parts), TARGET_SAMPLE_RATE, subtype="FLOAT")
    return path


def figure(features: str, mode: str, *, n_files: int, audio_s: float, wall_s: float, **extra) -> dict:
    return {"features": features, "mode": mode, "files": n_files, "audio_s": round(audio_s, 2), "wall_s": round(wall_s, 3),
            "files_per_s": n_files / wall_s, "rtf": wall_s / audio_s, "x_real_time": audio_s / wall_s, **extra}


def bench_one(name: str, model_dir: Path, files: list[Path], *, n_single: int, long_path: Path, durations: dict) -> list[dict]:
    started = time.perf_counter()
    predictor = Predictor.from_dir(model_dir)
    load_s = time.perf_counter() - started
    logger.info("%s: model loaded in %.2f s from %s", name, load_s, model_dir)
    predictor.predict_files(files[:4])  # warm-up: first-call allocations, lazy imports
    audio_s = sum(durations[f] for f in files)
    started = time.perf_counter()
    predictions = predictor.predict_files(files)
    wall = time.perf_counter() - started
    rows = [figure(name, f"predict_files (batch {predictor.batch_size})", n_files=len(predictions), audio_s=audio_s, wall_s=wall, model_load_s=round(load_s, 2))]
    single = files[:n_single]
    latencies = []
    for f in single:
        started = time.perf_counter()
        predictor.predict_file(f)
        latencies.append(time.perf_counter() - started)
    rows.append(figure(name, "predict_file, one at a time", n_files=len(single), audio_s=sum(durations[f] for f in single),
                       wall_s=sum(latencies), median_latency_s=round(statistics.median(latencies), 4)))
    long_s = sf.info(str(long_path)).duration
    for method in (Segmenter.VAD, Segmenter.FIXED):
        config = SegmentationConfig(method=method)
        predictor.predict_timeline(long_path, config)  # warm-up (loads silero-vad once)
        started = time.perf_counter()
        timeline = predictor.predict_timeline(long_path, config)
        wall = time.perf_counter() - started
        rows.append(figure(name, f"predict_timeline ({method.value})", n_files=1, audio_s=long_s, wall_s=wall, segments=len(timeline.segments)))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a trained checkpoint or run folder (default: an untrained LOGMEL model, speed only)")
    parser.add_argument("--ssl-model", help="encoder folder for an untrained FUSION model too, e.g. <shared>/models/whisper-tiny.en")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared folder (env SER_DIST_SHARED; default %(default)s)")
    parser.add_argument("--limit", type=int, help="first N EMODB files (default: all)")
    parser.add_argument("--single", type=int, default=20, help="files for the one-at-a-time latency (default %(default)s)")
    parser.add_argument("--long-s", type=float, default=60.0, help="length of the synthetic long recording (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default %(default)s: a per-core figure, as one Ray CPU; 0 = torch's choice)")
    parser.add_argument("--quick", action="store_true", help="60 files, 5 single, 20-s long recording; LOGMEL only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.quick:
        args.limit, args.single, args.long_s, args.ssl_model = 60, 5, 20.0, None
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    files = sorted((args.shared / "data" / "emodb" / "wav").glob("*.wav"))
    if not files:
        raise SystemExit(f"no EMODB files under {args.shared / 'data' / 'emodb' / 'wav'}; set --shared or SER_DIST_SHARED")
    files = files[: args.limit] if args.limit else files
    durations = {f: sf.info(str(f)).duration for f in files}
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        long_path = long_recording(files, args.long_s, tmp)
        models: list[tuple[str, Path, str]] = []
        if args.model:
            models.append((Predictor.from_dir(args.model).feature_config.feature_type.value, args.model, str(args.model)))
        else:
            models.append(("LOGMEL", untrained_checkpoint(FeatureConfig(), files, tmp / "logmel"), UNTRAINED))
        if args.ssl_model:
            fusion = FeatureConfig(feature_type=FeatureType.FUSION, ssl=SSLConfig(model=str(args.ssl_model)))
            models.append((f"FUSION ({Path(args.ssl_model).name})", untrained_checkpoint(fusion, files, tmp / "fusion"), UNTRAINED))
        for name, model_dir, _ in models:
            figures += bench_one(name, model_dir, files, n_single=args.single, long_path=long_path, durations=durations)
    payload = {
        "figures": figures,
        "config": {
            "files": len(files), "corpus": "EMODB", "device": "cpu", "torch_threads": torch.get_num_threads(),
            "models": {name: note for name, _, note in models}, "long_recording_s": args.long_s,
            "rtf": "processing wall time / audio duration (lower is faster; x_real_time is its inverse)",
        },
    }
    name = "predict_quick" if args.quick else f"predict_{args.limit}files" if args.limit else "predict"
    write_result(name, payload)


if __name__ == "__main__":
    main()
