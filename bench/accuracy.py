"""EMODB accuracy benchmark: TIM-Net on LOGMEL and on FUSION (Whisper-tiny), three protocols, with
classical references on the very same folds, and parallel-vs-sequential fold timing.

    python bench/accuracy.py                       # everything (about an hour on 2 cores)
    python bench/accuracy.py --protocols loso --features LOGMEL --epochs 20   # a smaller run

Protocols: leave-one-speaker-out (10 folds, speaker-independent), stratified random 10-fold and the
seed's random 2-fold (both speaker-dependent). In every fold the epoch is chosen on a validation part
of the training side; for FUSION the Whisper layer is also chosen per fold on that validation part
(pooled-feature SVM), never on the test fold. Runs are resumable: finished folds are reused.
Writes bench/results/accuracy.json.
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
from ser_dist.api import ExtractConfig, extract  # noqa: E402
from ser_dist.features.store import load_features  # noqa: E402
from ser_dist.training.config import AugmentOptions, ModelOptions, TrainConfig  # noqa: E402
from ser_dist.training.kfold import KFoldConfig, duplicate_groups, run_kfold  # noqa: E402
from ser_dist.training.splits import make_folds  # noqa: E402

SHARED = Path(os.environ.get("SER_DIST_SHARED", REPO.parent / "shared"))
PROTOCOLS = {"loso": ("loso", None), "kfold10": ("kfold", 10), "kfold2": ("kfold", 2)}
TARGETS = {
    ("FUSION", "loso", "uar"): 0.90, ("FUSION", "kfold10", "war"): 0.957,
    ("LOGMEL", "loso", "uar"): 0.80, ("LOGMEL", "kfold10", "war"): 0.92,
}


def train_config(features: str, epochs: int, normalization: str = "train_global") -> TrainConfig:
    model = ModelOptions(width=64, n_blocks=8, time_pool=4 if features == "LOGMEL" else 2, dropout=0.1, input_dropout=0.1)
    return TrainConfig(epochs=epochs, patience=max(10, epochs // 3), batch_size=32, lr=2e-3, model=model, augment=AugmentOptions(),
                       normalization=normalization)


def ensure_features(data_root: Path, out: Path, whisper: Path, layers: list[int]) -> dict[str, list[str]]:
    paths = {"LOGMEL": [str(extract(ExtractConfig(corpus="EMODB", features="LOGMEL", data_root=str(data_root), out=str(out))).directory)]}
    paths["FUSION"] = [
        str(extract(ExtractConfig(corpus="EMODB", features="FUSION", data_root=str(data_root), out=str(out), ssl_model=str(whisper), ssl_layers=(layer,))).directory)
        for layer in layers
    ]
    return paths


def references(feature_paths: dict[str, list[str]], protocol: str, n_folds: int | None, cache: Path) -> list[dict]:
    from bench.references import opensmile_functionals, pooled_svm_on_folds, svm_on_folds

    table = load_features(feature_paths["LOGMEL"][0])
    meta = table.meta.assign(duplicate_group=duplicate_groups(table))
    folds = make_folds(meta, protocol=protocol, n_folds=n_folds, seed=0, val_fraction=0.15, groups="duplicate_group")
    labels = meta["label"].to_numpy()
    paths = [str(SHARED / "data" / "emodb" / "wav" / f"{u}.wav") for u in meta["utterance_id"]]
    rows = []
    for feature_set in ("eGeMAPSv02", "ComParE_2016"):
        started = time.perf_counter()
        try:
            X = opensmile_functionals(paths, feature_set, cache_dir=cache)
        except ImportError as exc:
            rows.append({"reference": f"openSMILE {feature_set} + SVM", "error": f"opensmile unavailable: {exc}"})
            continue
        result = svm_on_folds(X, labels, folds)
        rows.append({"reference": f"openSMILE {feature_set} functionals + SVM", **_headline(result), "seconds": time.perf_counter() - started})
    for path in feature_paths.get("FUSION", []):
        fusion = load_features(path)
        encoder = fusion.metadata.get("encoder", {})
        dim = fusion.dim - 128  # the encoder part of the fused frames (LogMel comes first)
        matrices = [m[:, 128:] for m in fusion.features]
        result = pooled_svm_on_folds(matrices, labels, folds)
        rows.append({"reference": f"Whisper-tiny layer {encoder.get('layers')} mean+std pooled ({2 * dim}-d) + SVM", **_headline(result)})
    return rows


def _headline(result: dict) -> dict:
    return {
        "uar": result["uar"], "war": result["war"], "macro_f1": result.get("macro_f1"),
        "fold_uar_mean": result["fold_uar"]["mean"], "fold_uar_std": result["fold_uar"]["std"],
        "fold_war_mean": result["fold_war"]["mean"], "fold_war_std": result["fold_war"]["std"],
    }


def _relative(path: Path) -> str:
    """Path relative to the repo when inside it, so results carry no machine-specific prefix."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def model_run(features: str, paths: list[str], protocol_key: str, epochs: int, runs: Path, *, name_suffix: str = "", **train_changes) -> dict:
    protocol, n_folds = PROTOCOLS[protocol_key]
    config = KFoldConfig(
        features_path=paths[0], candidate_features=tuple(paths[1:]), protocol=protocol, n_folds=n_folds, seed=0,
        out=str(runs), name=f"EMODB_{features}_{protocol_key}_e{epochs}{name_suffix}",
        train=TrainConfig(**{**train_config(features, epochs).__dict__, **train_changes}),
    )
    started = time.perf_counter()
    summary = run_kfold(config)
    return {
        "model": f"TIM-Net {features}", "protocol": protocol_key, "speaker_independent": summary["protocol"]["speaker_independent"],
        "uar": summary["uar"], "war": summary["war"], "macro_f1": summary["macro_f1"],
        "fold_uar_mean": summary["fold_uar"]["mean"], "fold_uar_std": summary["fold_uar"]["std"],
        "fold_war_mean": summary["fold_war"]["mean"], "fold_war_std": summary["fold_war"]["std"],
        "per_class_f1": {k: round(v["f1"], 4) for k, v in summary["per_class"].items()},
        "features_chosen": [Path(f["features"]).parent.name for f in summary["folds"]],
        "wall_s": time.perf_counter() - started, "folds_trained_this_run": summary["folds_trained_this_run"],
        "run_dir": _relative(runs / summary["run"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocols", default="loso,kfold10,kfold2")
    parser.add_argument("--features", default="LOGMEL,FUSION")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--layers", default="1,2,3,4", help="Whisper-tiny layers that FUSION may choose from (per fold, on validation)")
    parser.add_argument("--timing-epochs", type=int, default=6, help="epochs of the parallel-vs-sequential LOSO timing run (0 = skip)")
    parser.add_argument("--skip-references", action="store_true")
    parser.add_argument("--data-root", default=str(SHARED / "data"))
    parser.add_argument("--features-out", default=str(REPO / "data" / "features"))
    parser.add_argument("--runs", default=str(REPO / "runs" / "bench"))
    parser.add_argument("--name", default="accuracy")
    parser.add_argument("--normalization", default="train_global", choices=["train_global", "per_speaker"],
                        help="per_speaker: each speaker's own statistics (test speakers' unlabelled audio included: transductive)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    from ser_dist.ray_runtime import ensure_ray

    ensure_ray()
    whisper = SHARED / "models" / "whisper-tiny.en"
    feature_kinds = [f.strip().upper() for f in args.features.split(",") if f.strip()]
    paths = ensure_features(Path(args.data_root), Path(args.features_out), whisper, [int(x) for x in args.layers.split(",")])
    paths = {k: v for k, v in paths.items() if k in feature_kinds or k == "LOGMEL"}
    runs = Path(args.runs)
    results: dict = {"protocol_notes": __doc__.split("\n\n")[2], "models": [], "references": [], "timing": [], "targets": []}

    def save() -> None:
        config = {"epochs": args.epochs, "layers": args.layers, "normalization": args.normalization,
                  "train_configs": {f: train_config(f, args.epochs, args.normalization).to_dict() for f in feature_kinds}}
        write_result(args.name, {"config": config, **results})

    for protocol_key in [p.strip() for p in args.protocols.split(",") if p.strip()]:
        protocol, n_folds = PROTOCOLS[protocol_key]
        if not args.skip_references:
            for row in references(paths, protocol, n_folds, REPO / "bench" / "cache"):
                results["references"].append({"protocol": protocol_key, **row})
            save()
        for features in feature_kinds:
            suffix = "_perspk" if args.normalization == "per_speaker" else ""
            results["models"].append(model_run(features, paths[features], protocol_key, args.epochs, runs, name_suffix=suffix,
                                               normalization=args.normalization))
            save()

    if args.timing_epochs:
        timing = {}
        for mode, limit in (("parallel", None), ("sequential", 1)):
            row = model_run("LOGMEL", paths["LOGMEL"], "loso", args.timing_epochs, runs, name_suffix=f"_{mode}_{int(time.time())}",
                            max_concurrent_folds=limit, patience=10_000)
            timing[mode] = row["wall_s"]
            results["timing"].append({"mode": mode, "folds": 10, "epochs_per_fold": args.timing_epochs, "wall_s": row["wall_s"],
                                      "max_concurrent_folds": limit or "auto (2 on 2 CPUs)"})
        results["timing"].append({"mode": "speedup parallel vs sequential", "wall_s": timing["sequential"] / timing["parallel"]})
        save()

    for (features, protocol_key, metric), target in TARGETS.items():
        rows = [m for m in results["models"] if m["model"] == f"TIM-Net {features}" and m["protocol"] == protocol_key]
        if rows:
            value = rows[0][metric]
            results["targets"].append({"target": f"{features} {protocol_key} {metric.upper()} >= {target:.3f}", "measured": value, "met": bool(value >= target)})
    fusion_loso = [m for m in results["models"] if m["model"] == "TIM-Net FUSION" and m["protocol"] == "loso"]
    pooled = [r for r in results["references"] if r["protocol"] == "loso" and "pooled" in r.get("reference", "")]
    if fusion_loso and pooled:
        best_pooled = max(r["uar"] for r in pooled)
        results["targets"].append({"target": "FUSION LOSO UAR above pooled Whisper + SVM (best layer)", "measured": fusion_loso[0]["uar"], "reference": best_pooled, "met": bool(fusion_loso[0]["uar"] > best_pooled)})
    compare = [r for r in results["references"] if r["protocol"] == "loso" and "ComParE" in r.get("reference", "") and "uar" in r]
    logmel_loso = [m for m in results["models"] if m["model"] == "TIM-Net LOGMEL" and m["protocol"] == "loso"]
    if compare and logmel_loso:
        results["targets"].append({"target": "LOGMEL LOSO UAR above ComParE + SVM", "measured": logmel_loso[0]["uar"], "reference": compare[0]["uar"], "met": bool(logmel_loso[0]["uar"] > compare[0]["uar"])})
    speedups = [t for t in results["timing"] if t["mode"].startswith("speedup")]
    if speedups:
        results["targets"].append({"target": "parallel folds >= 1.6x sequential", "measured": speedups[0]["wall_s"], "met": bool(speedups[0]["wall_s"] >= 1.6)})
    save()


if __name__ == "__main__":
    main()
