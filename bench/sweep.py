"""Sweep benchmark: does a nested Ray Tune sweep beat the untuned TIM-Net on EMODB LOGMEL, leave-one-speaker-out?

Protocol: a nested sweep (Optuna + ASHA, --trials per outer fold). For each of the 10 LOSO outer folds,
only that fold's training side (training + validation speakers) is shipped to the trials; --inner-folds
inner LOSO folds are made from those rows alone (each trains on the other training-side speakers and is
scored on one held-out speaker), and the fold's config is its best trial's. The final 10-fold LOSO run
then trains and tests every outer fold once with its own config; its pooled test UAR is compared with the
untuned `speaker_independent` recipe's LOSO UAR from bench/results/accuracy.json (same folds, same base
options; mean of 3 seeds, under each normalisation: the sweep's figure is compared with the untuned row of
the normalisation its folds chose). Every test speaker is unseen by the sweep that chose its fold's config
(`unseen_by_sweep`, must be 100 %). For comparison, the cheaper shared sweep (one search on the training
sides of the first --shared-inner-folds outer folds, which hold the other folds' test speakers) is timed
on the same trials budget per search; its final run is optional (--shared-final). The search space
includes the feature normalisation (training-part statistics, or each speaker's own statistics:
transductive, the test speaker's unlabelled audio sets its own statistics).
Writes bench/results/sweep.json; --smoke writes bench/results/sweep_smoke.json instead (a check that the
bench runs, not a result).
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
from ser_dist.training.config import TrainConfig  # noqa: E402
from ser_dist.tuning import SearchSpace, TuneConfig, run_sweep  # noqa: E402

SHARED = Path(os.environ.get("SER_DIST_SHARED", REPO.parent / "shared"))


def base_config(epochs: int = 45) -> TrainConfig:
    """The untuned LOGMEL recipe of bench/accuracy.py (`speaker_independent`): every option the sweep does not search."""
    return TrainConfig.from_dict({"preset": "speaker_independent", "epochs": epochs, "patience": epochs})


def _folds(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8, help="trials per search (per outer fold when nested)")
    parser.add_argument("--inner-folds", type=int, default=2, help="inner LOSO folds per outer fold's training side")
    parser.add_argument("--shared-inner-folds", type=int, default=2, help="outer folds whose training sides the shared sweep reads")
    parser.add_argument("--epochs", type=int, default=45, help="most epochs per trial and in the final run")
    parser.add_argument("--outer-folds", type=_folds, default=None, help="sweep only these outer folds (e.g. 0,1; smoke runs); default all")
    parser.add_argument("--skip-shared", action="store_true", help="do not time the shared sweep")
    parser.add_argument("--shared-final", action="store_true", help="also run the shared sweep's final 10-fold run")
    parser.add_argument("--smoke", action="store_true", help="a check that the bench runs: writes sweep_smoke.json, not sweep.json")
    parser.add_argument("--data-root", default=str(SHARED / "data"))
    parser.add_argument("--features-out", default=str(REPO / "data" / "features"))
    parser.add_argument("--runs", default=str(REPO / "runs" / "bench_sweep"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

    features = extract(ExtractConfig(corpus="EMODB", features="LOGMEL", data_root=args.data_root, out=args.features_out)).directory
    space = SearchSpace(lr=(1e-3, 6e-3), weight_decay=(1e-4, 1e-1), dropout=(0.0, 0.4), width=(32, 64), n_blocks=(6, 8),
                        batch_size=(16, 32), label_smoothing=(0.0, 0.2), normalization=("train_global", "per_speaker"))
    tag = f"t{args.trials}_e{args.epochs}" + ("_smoke" if args.smoke else "")
    outer = "" if args.outer_folds is None else "_o" + "-".join(map(str, args.outer_folds))
    common = {"features_path": str(features), "protocol": "loso", "seed": 0, "num_samples": args.trials, "epochs": args.epochs,
              "grace_period": min(5, args.epochs), "reduction_factor": 3, "space": space, "base": base_config(args.epochs), "out": args.runs}
    nested_config = TuneConfig(**common, mode="nested", inner_folds=args.inner_folds, outer_folds=args.outer_folds,
                               name=f"emodb_logmel_loso_nested_{tag}_i{args.inner_folds}{outer}", final_run=True)
    started = time.perf_counter()
    nested = run_sweep(nested_config)
    nested_wall = time.perf_counter() - started

    shared, shared_wall = None, None
    if not args.skip_shared:
        shared_config = TuneConfig(**common, mode="shared", inner_folds=args.shared_inner_folds,
                                   name=f"emodb_logmel_loso_shared_{tag}_i{args.shared_inner_folds}", final_run=args.shared_final)
        started = time.perf_counter()
        shared = run_sweep(shared_config)
        shared_wall = time.perf_counter() - started

    untuned_rows = _untuned_loso_uar()
    final = nested["final_summary"] or {}
    chosen = sorted({str(_flat(c["train_overrides"]).get("normalization", base_config().normalization))
                     for c in nested["fold_configs"].values()})
    untuned = untuned_rows.get(chosen[0]) if len(chosen) == 1 else None
    unseen = final.get("unseen_by_sweep") or nested["unseen_by_sweep"]
    figures = [
        {"figure": "nested: tuned per outer fold, EMODB LOSO pooled outer test UAR", "value": final.get("uar")},
        {"figure": "nested: pooled outer test WAR", "value": final.get("war")},
        *[{"figure": f"untuned speaker_independent recipe, {norm}, EMODB LOSO pooled test UAR, mean of 3 seeds "
                     "(bench/results/accuracy.json)", "value": value} for norm, value in untuned_rows.items()],
        {"figure": "nested: normalisations chosen by the outer folds' sweeps", "value": chosen},
        {"figure": "nested: share of test speakers unseen by their fold's sweep", "value": unseen["share_of_test_speakers_unseen"]},
        {"figure": "nested: mean chosen inner validation UAR (no outer test data)", "value": nested["best_val_uar"]},
        {"figure": "nested: sweeps alone wall time (s)", "value": nested["sweep_wall_s"]},
        {"figure": "nested: sweeps + final run wall time (s)", "value": nested_wall},
    ]
    if shared is not None:
        figures += [
            {"figure": "shared: sweep alone wall time (s)", "value": shared["sweep_wall_s"]},
            {"figure": "shared: share of test speakers unseen by the sweep",
             "value": (shared["final_summary"] or shared)["unseen_by_sweep"]["share_of_test_speakers_unseen"]},
        ]
        if shared["final_summary"]:
            figures += [{"figure": "shared: pooled test UAR (not nested)", "value": shared["final_summary"]["uar"]},
                        {"figure": "shared: sweep + final run wall time (s)", "value": shared_wall}]
    targets = [{"target": "every test speaker unseen by its fold's sweep", "measured": unseen["share_of_test_speakers_unseen"],
                "reference": 1.0, "met": unseen["share_of_test_speakers_unseen"] == 1.0}]
    if untuned is not None and final.get("uar") is not None:
        targets.append({"target": f"nested tuned LOSO UAR > untuned ({chosen[0]})", "measured": final["uar"], "reference": untuned,
                        "met": bool(final["uar"] > untuned)})
    fold_configs = [{"fold": int(k), **{key: v for key, v in c.items() if key != "train_overrides"},
                     **{f"chosen_{key}": v for key, v in _flat(c["train_overrides"]).items()}}
                    for k, c in sorted(nested["fold_configs"].items(), key=lambda kv: int(kv[0]))]
    write_result("sweep_smoke" if args.smoke else "sweep", {
        "smoke_run": bool(args.smoke),
        "protocol_notes": __doc__.split("\n\n")[1], "config": {**vars(args), "search_space": asdict(space), "base": base_config(args.epochs).to_dict()},
        "figures": figures, "targets": targets, "fold_configs": fold_configs,
        "nested": {"objective": nested["objective"], "swept_folds": nested["swept_folds"], "not_swept_folds": nested["not_swept_folds"],
                   "n_trials": nested["n_trials"], "n_errors": nested["n_errors"], "results_table": _relative(nested["results_table"]),
                   "final": {k: final.get(k) for k in ("uar", "war", "macro_f1", "fold_uar", "n_test", "swept_folds", "note")},
                   "unseen_by_sweep": {k: v for k, v in unseen.items() if k != "per_fold"}},
        "shared": None if shared is None else {
            "objective": shared["objective"], "best_params": shared["best_params"], "n_trials": shared["n_trials"],
            "test_read": {k: v for k, v in shared["test_read"].items() if k != "per_fold"}, "sweep_wall_s": shared["sweep_wall_s"],
            "final": None if not shared["final_summary"] else {k: shared["final_summary"].get(k) for k in ("uar", "war", "fold_uar", "n_test")},
        },
    })


def _flat(overrides: dict) -> dict:
    return {k: v for k, v in overrides.items() if k != "model"} | {f"model.{k}": v for k, v in overrides.get("model", {}).items()}


def _untuned_loso_uar() -> dict[str, float]:
    """{normalisation: mean pooled LOSO UAR over seeds} of the untuned LOGMEL recipe in bench/results/accuracy.json."""
    path = REPO / "bench" / "results" / "accuracy.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {row["normalization"]: row["uar_mean"] for row in data.get("summary", [])
            if row["protocol"] == "loso" and row["model"].endswith("LOGMEL")}


def _relative(path: str) -> str:
    try:
        return str(Path(path).relative_to(REPO))
    except ValueError:
        return path


if __name__ == "__main__":
    main()
