"""Sweep benchmark: does a Ray Tune sweep beat the untuned TIM-Net on EMODB LOGMEL, leave-one-speaker-out?

Protocol: the sweep (Optuna + ASHA) scores each trial by validation UAR on the training sides of the
first --inner-folds LOSO folds only (validation speakers carved from each training side; test speakers
never read by a trial). The best config then gets a full 10-fold LOSO run whose pooled test UAR is
compared with the untuned config's LOSO UAR from bench/results/accuracy.json (same folds, same
seed, same base options; the untuned run trained 50 epochs). The search space includes the feature
normalisation (training-part statistics, or each speaker's own statistics: transductive, the test
speaker's unlabelled audio sets its own statistics). Caveat, also in the JSON: with LOSO, the test
speakers of folds >= --inner-folds were in the sweep's training sides, so the final run's folds that
the sweep never read are reported apart (`unseen_by_sweep`).
Writes bench/results/sweep.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import write_result  # noqa: E402
from ser_dist.api import ExtractConfig, extract  # noqa: E402
from ser_dist.training.config import AugmentOptions, ModelOptions, TrainConfig  # noqa: E402
from ser_dist.tuning import SearchSpace, TuneConfig, run_sweep  # noqa: E402

SHARED = Path(os.environ.get("SER_DIST_SHARED", REPO.parent / "shared"))


def base_config() -> TrainConfig:
    """The untuned LOGMEL config of bench/accuracy.py (every option the sweep does not search)."""
    model = ModelOptions(width=64, n_blocks=8, time_pool=4, dropout=0.1, input_dropout=0.1)
    return TrainConfig(epochs=50, patience=16, batch_size=32, lr=2e-3, model=model, augment=AugmentOptions())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--inner-folds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30, help="most epochs per trial and in the final run")
    parser.add_argument("--data-root", default=str(SHARED / "data"))
    parser.add_argument("--features-out", default=str(REPO / "data" / "features"))
    parser.add_argument("--runs", default=str(REPO / "runs" / "bench_sweep"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

    features = extract(ExtractConfig(corpus="EMODB", features="LOGMEL", data_root=args.data_root, out=args.features_out)).directory
    space = SearchSpace(lr=(3e-4, 3e-3), weight_decay=(1e-4, 1e-1), dropout=(0.0, 0.4), width=(32, 64), n_blocks=(6, 8),
                        batch_size=(16, 32), label_smoothing=(0.0, 0.2), normalization=("train_global", "per_speaker"))
    config = TuneConfig(features_path=str(features), protocol="loso", seed=0, inner_folds=args.inner_folds,
                        num_samples=args.trials, epochs=args.epochs, grace_period=5, reduction_factor=3, space=space,
                        base=base_config(), out=args.runs, name=f"emodb_logmel_loso_t{args.trials}_i{args.inner_folds}_e{args.epochs}",
                        final_run=True)
    started = time.perf_counter()
    summary = run_sweep(config)
    wall = time.perf_counter() - started
    untuned = _untuned_loso_uar()
    final = summary["final_summary"] or {}
    figures = [
        {"figure": "sweep best validation UAR (inner folds, no test data)", "value": summary["best_val_uar"]},
        {"figure": "tuned config, EMODB LOSO pooled test UAR", "value": final.get("uar")},
        {"figure": "tuned config, EMODB LOSO pooled test WAR", "value": final.get("war")},
        {"figure": "untuned config, EMODB LOSO pooled test UAR (bench/results/accuracy.json)", "value": untuned},
        {"figure": "sweep + final run wall time (s)", "value": wall},
        {"figure": "sweep alone wall time (s)", "value": summary["sweep_wall_s"]},
    ]
    targets = []
    if untuned is not None and final.get("uar") is not None:
        targets.append({"target": "tuned LOSO UAR > untuned", "measured": final["uar"], "reference": untuned, "met": bool(final["uar"] > untuned)})
    write_result("sweep", {
        "protocol_notes": __doc__.split("\n\n")[1], "config": {**vars(args), "search_space": asdict(space), "base": base_config().to_dict()},
        "figures": figures, "targets": targets, "best_params": summary["best_params"], "n_trials": summary["n_trials"],
        "n_errors": summary["n_errors"], "objective": summary["objective"],
        "final": {k: final.get(k) for k in ("uar", "war", "macro_f1", "fold_uar", "n_test", "unseen_by_sweep", "note")},
        "results_table": _relative(summary["results_table"]),
    })


def _untuned_loso_uar() -> float | None:
    path = REPO / "bench" / "results" / "accuracy.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return next((m["uar"] for m in data.get("models", []) if m["protocol"] == "loso" and m["model"].endswith("LOGMEL")), None)


def _relative(path: str) -> str:
    try:
        return str(Path(path).relative_to(REPO))
    except ValueError:
        return path


if __name__ == "__main__":
    main()
