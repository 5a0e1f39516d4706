"""Choose a speaker-independent recipe for EMODB on VALIDATION speakers only.

Every candidate (a feature type and a training recipe) is trained on the same leave-one-speaker-out
folds as the product (`make_folds(protocol="loso", seed=0, val_fraction=0.15)`): each fold's
validation part is made of whole training speakers. Candidates are ranked by the mean over folds of
the validation UAR at the selected epoch; the test speaker of a fold never takes part in training,
early stopping, normalisation statistics (train_global) or the ranking. Test UAR is recorded for the
record only and is printed in a separate column. Runs in-process (no Ray), one fold per process.

    python bench/recipe_search.py --candidates base mfcc_dd crop_avg --seeds 0
    python bench/recipe_search.py --list

Writes bench/results/recipe_search.json (one entry per candidate and seed; reruns skip finished ones).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import RESULTS_DIR, write_result  # noqa: E402

SHARED = Path(os.environ.get("SER_DIST_SHARED", REPO.parent / "shared"))
CACHE = REPO / "data" / "bench_cache"

BASE_MODEL = {"width": 64, "n_blocks": 8, "time_pool": 4, "dropout": 0.1, "input_dropout": 0.1}
BASE = {"epochs": 50, "patience": 50, "batch_size": 32, "lr": 2e-3, "model": BASE_MODEL}
SMALL_MODEL = {"width": 32, "n_blocks": 6, "time_pool": 4}
SMALL = {"epochs": 30, "patience": 30, "batch_size": 32, "lr": 3e-3, "model": SMALL_MODEL}


def _small(features: tuple[str, int], normalization: str, **changes) -> dict:
    return {"features": features, "train": SMALL | {"normalization": normalization} | changes}


CANDIDATES: dict[str, dict] = {
    # features: (feature type, deltas); train: TrainConfig overrides. The "small" family fits the CPU budget
    # of these machines (about 20 s per fold on one core); "base" is the previous default size.
    "logmel_base": {"features": ("LOGMEL", 0), "train": BASE},
    "mfcc_dd_base": {"features": ("MFCC", 2), "train": BASE},
    "mfcc_dd_base_per_speaker": {"features": ("MFCC", 2), "train": BASE | {"normalization": "per_speaker"}},
}
for _norm, _suffix in (("train_global", ""), ("per_speaker", "_per_speaker")):
    CANDIDATES |= {
        f"small_mfcc_dd{_suffix}": _small(("MFCC", 2), _norm),
        f"small_mfcc{_suffix}": _small(("MFCC", 0), _norm),
        f"small_logmel{_suffix}": _small(("LOGMEL", 0), _norm),
        f"small_mfcc_dd_e45{_suffix}": _small(("MFCC", 2), _norm, epochs=45, patience=45),
        f"small_mfcc_dd_w48{_suffix}": _small(("MFCC", 2), _norm, model=SMALL_MODEL | {"width": 48}),
        f"small_mfcc_dd_crop_avg{_suffix}": _small(("MFCC", 2), _norm, augment={"max_frames": 300},
                                                   model=SMALL_MODEL | {"eval_window": 300}),
        f"small_mfcc_dd_nomix{_suffix}": _small(("MFCC", 2), _norm, augment={"mixup_alpha": 0.0}),
        f"small_logmel_dd{_suffix}": _small(("LOGMEL", 2), _norm),
        f"small_logmel_e45{_suffix}": _small(("LOGMEL", 0), _norm, epochs=45, patience=45),
        f"small_logmel_w48{_suffix}": _small(("LOGMEL", 0), _norm, model=SMALL_MODEL | {"width": 48}),
        f"small_logmel_crop_avg{_suffix}": _small(("LOGMEL", 0), _norm, augment={"max_frames": 300},
                                                  model=SMALL_MODEL | {"eval_window": 300}),
    }


def features(kind: str, deltas: int, data_root: Path):
    """(manifest, list of (T, D) matrices) for EMODB, cached in data/bench_cache."""
    from ser_dist.audio import load_audio
    from ser_dist.corpora import prepare
    from ser_dist.features.compute import FeatureComputer
    from ser_dist.features.config import FeatureConfig, FeatureType

    config = FeatureConfig(feature_type=FeatureType.parse(kind), deltas=deltas)
    cache = CACHE / f"EMODB_{config.version()}.npz"
    manifest = prepare("EMODB", data_root / "emodb").sort_values("utterance_id").reset_index(drop=True)
    if cache.is_file():
        stored = np.load(cache, allow_pickle=False)
        return manifest, [stored[u] for u in manifest["utterance_id"]]
    computer = FeatureComputer(config)
    matrices = [computer.compute([load_audio(p)])[0] for p in manifest["path"]]
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **dict(zip(manifest["utterance_id"], matrices, strict=True)))
    return manifest, matrices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--data-root", type=Path, default=SHARED / "data")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--name", default="recipe_search", help="result file name under bench/results (one per concurrent process)")
    args = parser.parse_args()
    if args.list:
        print(json.dumps(CANDIDATES, indent=1))
        return
    from ser_dist.training.metrics import classification_report, mean_std
    from ser_dist.training.splits import make_folds

    out_path = RESULTS_DIR / f"{args.name}.json"
    done = json.loads(out_path.read_text())["results"] if out_path.is_file() else []
    results = list(done)
    for name in args.candidates:
        spec = CANDIDATES[name]
        manifest, matrices = features(*spec["features"], args.data_root)
        labels = sorted(manifest["label"].unique())
        y = manifest["label"].map({c: i for i, c in enumerate(labels)}).to_numpy(np.int64)
        folds = make_folds(manifest, protocol="loso", seed=0, val_fraction=0.15)
        for seed in args.seeds:
            if any(r["candidate"] == name and r["seed"] == seed for r in results):
                continue
            train_dict = spec["train"] | {"seed": seed}
            jobs = [{"fold": f.index, "train_positions": f.train.tolist(), "val": f.val.tolist(), "test": f.test.tolist(),
                     "matrices": matrices, "speakers": manifest["speaker"].tolist(), "labels": labels, "y": y,
                     "ids": manifest["utterance_id"].tolist(), "train_config": train_dict} for f in folds]
            started = time.perf_counter()
            with ProcessPoolExecutor(args.processes) as pool:
                outs = list(pool.map(run_fold, jobs))
            pairs = [pair for o in outs for pair in o["test_predictions"]]
            report = classification_report([p[0] for p in pairs], [p[1] for p in pairs], labels)
            entry = {
                "candidate": name, "seed": seed, "features": list(spec["features"]), "train": train_dict,
                "val_uar": mean_std([o["val_uar"] for o in outs]),
                "test_uar_pooled": report["uar"], "test_war_pooled": report["war"],
                "best_epochs": [o["best_epoch"] for o in outs], "wall_s": round(time.perf_counter() - started, 1),
                "fold_seconds": round(float(np.mean([o["seconds"] for o in outs])), 1),
            }
            results.append(entry)
            print(f"{name} seed {seed}: val UAR {entry['val_uar']['mean']:.3f} | test UAR {report['uar']:.3f} "
                  f"WAR {report['war']:.3f} | {entry['wall_s']} s", flush=True)
            write_result(args.name, {"protocol": "EMODB LOSO (10 folds), validation speakers carved from each training side",
                                           "selection_rule": "highest mean validation UAR; test UAR never used to choose",
                                           "results": results, "ranking": ranking(results)})


def ranking(results: list[dict]) -> list[dict]:
    rows: dict[str, list[dict]] = {}
    for r in results:
        rows.setdefault(r["candidate"], []).append(r)
    table = [{"candidate": k, "seeds": len(v), "val_uar": round(float(np.mean([r["val_uar"]["mean"] for r in v])), 4),
              "test_uar (not used to choose)": round(float(np.mean([r["test_uar_pooled"] for r in v])), 4),
              "wall_s": round(float(np.mean([r["wall_s"] for r in v])), 1)} for k, v in rows.items()]
    return sorted(table, key=lambda row: -row["val_uar"])


def run_fold(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from ser_dist.training.config import TrainConfig
    from ser_dist.training.data import normalise
    from ser_dist.training.loop import FoldData, fit_fold

    config = TrainConfig.from_dict(job["train_config"])
    train, val, test = (np.asarray(job[k], np.int64) for k in ("train_positions", "val", "test"))
    matrices, standardizer = normalise(job["matrices"], job["speakers"], train_positions=train, mode=config.normalization)
    data = FoldData(job["labels"], matrices, job["y"], job["ids"], train, val, test, standardizer)
    t0 = time.perf_counter()
    outcome = fit_fold(data, config)
    return {"fold": job["fold"], "val_uar": outcome.best_val_uar, "best_epoch": outcome.best_epoch,
            "test_predictions": [(p["true"], p["pred"]) for p in outcome.test_predictions], "seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    main()
