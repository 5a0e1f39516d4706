"""TIM-Net on its own protocol: EMODB, MFCC-39, sklearn KFold(10, shuffle=True, random_state=46).

Runs `configs/timnet_paper_emodb.yaml` (the "timnet_paper" preset: the published model and recipe)
through the product's own path (Ray Data extraction -> k-fold on Ray Train), once per model seed,
and reports for every seed (a) the epoch chosen on a validation part carved from each fold's training
side and (b) the last epoch (the figure TIM-Net's authors published: WAR 90.28 / UAR 89.19 after 500
epochs). SPEAKER-DEPENDENT protocol: speakers and sentences occur on both sides of every fold.

    python bench/timnet_reproduce.py --data-root ../shared/data                  # 500 epochs, seeds 0 1 2
    python bench/timnet_reproduce.py --epochs 200 --seeds 0 --data-root ../shared/data

Writes bench/results/timnet_reproduce.json (resumable: finished folds are reused).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import write_result  # noqa: E402
from ser_dist.configuration import from_mapping, load_config_file  # noqa: E402
from ser_dist.pipeline import PipelineConfig  # noqa: E402
from ser_dist.training.kfold import KFoldConfig, run_kfold  # noqa: E402
from ser_dist.training.metrics import mean_std  # noqa: E402

PUBLISHED = {"war": 0.9028, "uar": 0.8919, "source": "TIM-Net (Ye et al., ICASSP 2023), EMODB, last of 500 epochs"}
SHARED = Path(os.environ.get("SER_DIST_SHARED", REPO.parent / "shared"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "timnet_paper_emodb.yaml"))
    parser.add_argument("--data-root", default=str(SHARED / "data"))
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's 500 epochs (CPU budget)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model seeds (the folds keep seed 46)")
    parser.add_argument("--val-fraction", type=float, default=None, help="override the config's validation share")
    parser.add_argument("--features-out", default=str(REPO / "data" / "features"))
    parser.add_argument("--runs-out", default=str(REPO / "bench" / "results" / "runs"))
    parser.add_argument("--tag", default="", help="suffix of the result file and run names")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    raw = load_config_file(args.config)
    raw["data_root"] = args.data_root
    raw["features_out"] = args.features_out
    if args.epochs is not None:
        raw.setdefault("train", {})["epochs"] = args.epochs
    if args.val_fraction is not None:
        raw["val_fraction"] = args.val_fraction
    config = from_mapping(PipelineConfig, raw)
    from ser_dist.api import extract

    started = time.perf_counter()
    features = extract(config.extract_config("EMODB")).directory
    runs = []
    for seed in args.seeds:
        train = config.train.__class__.from_dict(config.train.to_dict() | {"seed": seed})
        t0 = time.perf_counter()
        summary = run_kfold(KFoldConfig(
            features_path=str(features), protocol=config.protocol, n_folds=config.n_folds, seed=config.seed,
            val_fraction=config.val_fraction, out=args.runs_out, train=train,
            name=f"timnet_paper_e{train.epochs}_v{config.val_fraction:g}_s{seed}{args.tag}",
        ))
        runs.append({
            "seed": seed, "epochs": train.epochs, "val_fraction": config.val_fraction,
            "selected_war": summary["war"], "selected_uar": summary["uar"],
            "last_war": (summary.get("last_epoch") or {}).get("war", summary["war"] if not config.val_fraction else None),
            "last_uar": (summary.get("last_epoch") or {}).get("uar", summary["uar"] if not config.val_fraction else None),
            "fold_war": summary["fold_war"]["mean"], "wall_s": round(time.perf_counter() - t0, 1), "run": summary["location"],
        })
    figures = []
    for key, label in (("selected", "epoch chosen on validation (10 % of each training side)"), ("last", "last epoch (published protocol)")):
        wars = [r[f"{key}_war"] for r in runs if r[f"{key}_war"] is not None]
        uars = [r[f"{key}_uar"] for r in runs if r[f"{key}_uar"] is not None]
        if wars:
            figures.append({"scoring": label, "war": mean_std(wars), "uar": mean_std(uars), "n_seeds": len(wars)})
    write_result(f"timnet_reproduce{args.tag}", {
        "protocol": "EMODB, sklearn KFold(10, shuffle=True, random_state=46) over utterances in sorted-id order; "
                    "speaker-dependent; not transductive (training-part normalisation statistics)",
        "config": config.train.to_dict() | {"features": config.features, "fixed_seconds": config.fixed_seconds,
                                             "logmel": vars(config.logmel) if hasattr(config.logmel, "__dict__") else str(config.logmel)},
        "published": PUBLISHED, "runs": runs, "figures": figures,
        "target": {"war": 0.90, "met": bool(figures and figures[0]["war"]["mean"] >= 0.90)},
        "wall_seconds": round(time.perf_counter() - started, 1),
    })


if __name__ == "__main__":
    main()
