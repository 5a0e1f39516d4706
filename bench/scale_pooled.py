"""Pooled training bench: LOSO over EMODB+RAVDESS on their shared classes, scored per corpus, next to each
corpus's own LOSO on the same classes (same preset, seed, epochs, normalisation).

Question: does training on the pool (the other corpus's speakers added to every fold's training side) help or
hurt each corpus's speaker-independent UAR, and by how much? Every test speaker is scored twice, once by the
pooled fold that holds them out and once by their own corpus's fold, so the per-speaker differences are paired.

Conditions, all in the JSON: LOGMEL stores extracted by the main pipeline (read only); classes = the six both
corpora label directly (angry, disgust, fear, happy, neutral, sad) with configs/mapping_shared_only.yaml, which
leaves EMODB boredom and RAVDESS calm/surprise out instead of merging them into neutral (pass --mapping default for
the project's table); normalisation train_global (statistics of each fold's training part; not transductive), or
`--normalization per_corpus` (each corpus by its own training-part statistics; not transductive under LOSO);
epoch chosen on validation speakers carved from each fold's training side. The pooled run's validation speakers
come from both corpora, so its epoch choice is made on a different validation set than the own-corpus runs'.

    python bench/scale_pooled.py                 # writes bench/results/scale_pooled.json
    python bench/scale_pooled.py --epochs 15     # fewer epochs than the preset's 45 (stated in the JSON)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import write_result  # noqa: E402

from ser_dist.training.config import TrainConfig  # noqa: E402
from ser_dist.training.kfold import KFoldConfig, run_kfold  # noqa: E402

MAIN_FEATURES = Path(os.environ.get("SER_DIST_FEATURES", REPO / "data" / "features")) / "LOGMEL"
DEFAULT_MAPPING = REPO / "configs" / "mapping_shared_only.yaml"


def train_config(args, *, single_corpus: bool = False) -> TrainConfig:
    """The run's TrainConfig; for one corpus per_corpus IS train_global (one corpus, its training part), so the
    own-corpus baselines run (and are resumed) as train_global."""
    normalization = "train_global" if single_corpus and args.normalization == "per_corpus" else args.normalization
    changes = {"preset": args.preset, "seed": args.seed, "normalization": normalization}
    if args.epochs is not None:
        changes |= {"epochs": args.epochs, "patience": args.epochs}
    return TrainConfig.from_dict(changes)


def per_speaker_uar(summary: dict) -> dict[str, float]:
    """Test speaker -> that LOSO fold's UAR (one speaker per fold)."""
    return {f["test_speakers"][0]: f["uar"] for f in summary["folds"] if len(f["test_speakers"]) == 1}


def run(name: str, stores: list[str], args, runs: Path, classes: tuple[str, ...]) -> tuple[dict, float]:
    config = KFoldConfig(features_path=stores[0], pool=tuple(stores[1:]), pool_classes=classes,
                         mapping_file=args.mapping_file, protocol="loso", seed=args.seed, out=str(runs), name=name,
                         train=train_config(args, single_corpus=len(stores) == 1))
    started = time.perf_counter()
    summary = run_kfold(config)
    return summary, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", nargs="+", default=[str(MAIN_FEATURES / "EMODB_LOGMEL"), str(MAIN_FEATURES / "RAVDESS_LOGMEL")])
    parser.add_argument("--mapping", default=str(DEFAULT_MAPPING), help="YAML/JSON mapping file, or 'default' (the project's table)")
    parser.add_argument("--preset", default="speaker_independent")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (patience follows)")
    parser.add_argument("--normalization", default="train_global", choices=["train_global", "per_corpus"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default=str(REPO / "runs" / "bench_pooled"))
    parser.add_argument("--name", default="scale_pooled")
    args = parser.parse_args()
    args.mapping_file = None if args.mapping == "default" else args.mapping
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    from ser_dist.ray_runtime import ensure_ray
    from ser_dist.training.pool import build_pool

    pool = build_pool(args.stores, mapping_file=args.mapping_file).metadata["pool"]
    classes = tuple(pool["classes"])
    corpora = pool["corpora"]
    runs = Path(args.runs)
    tag = f"{args.normalization}_e{train_config(args).epochs}_s{args.seed}"
    load_before = os.getloadavg()
    ensure_ray()
    results: dict = {"question": "does pooling EMODB+RAVDESS help or hurt each corpus's LOSO UAR, and by how much?",
                     "pool": pool, "runs": {}, "comparison": [], "per_speaker": []}

    def save() -> None:
        train = train_config(args)
        config = {"stores": args.stores, "mapping": args.mapping, "classes": list(classes), "protocol": "loso", "preset": args.preset,
                  "epochs": train.epochs, "preset_epochs": TrainConfig.from_dict({"preset": args.preset}).epochs,
                  "epochs_note": None if args.epochs is None else f"{args.epochs} epochs instead of the preset's to fit the time on a "
                  "shared 2-core machine; every run uses the same number",
                  "seed": args.seed, "normalization": args.normalization, "train_config": train.to_dict()}
        write_result(args.name, {"config": config, **results,
                                 "load_average": {"before": load_before, "after": os.getloadavg()}})

    own: dict[str, dict] = {}
    for corpus, store in zip(corpora, args.stores, strict=True):
        own_tag = f"{train_config(args, single_corpus=True).normalization}_e{train_config(args).epochs}_s{args.seed}"
        summary, wall = run(f"{corpus}_own_loso_{own_tag}", [store], args, runs, classes)
        own[corpus] = summary
        results["runs"][f"{corpus} own"] = {"run": str(runs / summary["run"]), "uar": summary["uar"], "war": summary["war"],
                                            "n_test": summary["n_test"], "n_folds": len(summary["folds"]), "wall_s": wall,
                                            "normalization": summary["normalization"]}
        save()
    pooled, wall = run(f"{'+'.join(corpora)}_pooled_loso_{tag}", args.stores, args, runs, classes)
    results["runs"]["pooled"] = {"run": str(runs / pooled["run"]), "uar": pooled["uar"], "war": pooled["war"], "n_test": pooled["n_test"],
                                 "n_folds": len(pooled["folds"]), "wall_s": wall, "normalization": pooled["normalization"],
                                 "per_corpus": {c: {k: v for k, v in s.items() if k != "per_class"} for c, s in pooled["per_corpus"].items()}}
    pooled_speakers = per_speaker_uar(pooled)
    for corpus in corpora:
        mine, theirs = per_speaker_uar(own[corpus]), pooled["per_corpus"][corpus]
        diffs = np.array([pooled_speakers[s] - u for s, u in mine.items()])
        results["per_speaker"] += [{"corpus": corpus, "speaker": s, "own_uar": u, "pooled_uar": pooled_speakers[s],
                                    "delta": pooled_speakers[s] - u} for s, u in sorted(mine.items())]
        results["comparison"].append({
            "corpus": corpus, "own_loso_uar": own[corpus]["uar"], "pooled_loso_uar": theirs["uar"], "delta_uar": theirs["uar"] - own[corpus]["uar"],
            "own_loso_war": own[corpus]["war"], "pooled_loso_war": theirs["war"], "delta_war": theirs["war"] - own[corpus]["war"],
            "speakers": len(diffs), "speakers_better_pooled": int((diffs > 0).sum()),
            "mean_speaker_delta_uar": float(diffs.mean()), "std_speaker_delta_uar": float(diffs.std()),
            "n_test": theirs["n_test"],
        })
    save()


if __name__ == "__main__":
    main()
