"""EMODB accuracy benchmark: TIM-Net (a named recipe) on from-scratch features and on FUSION (Whisper-tiny),
with classical references on the very same folds, under both normalisations, over several seeds.

    python bench/accuracy.py                                               # LOSO, MFCC+deltas and FUSION, 3 seeds
    python bench/accuracy.py --features MFCC_DD --seeds 0 --normalizations train_global   # a smaller run

Protocol: leave-one-speaker-out (10 folds, speaker-independent); kfold10 (stratified, speaker-dependent) on
request. In every fold the epoch is chosen on validation speakers carved from the training side; for
FUSION the Whisper layer is also chosen per fold on that validation part (pooled-feature SVM), never on
the test fold. Normalisations: train_global (training-part statistics, not transductive) and per_speaker
(each speaker's own statistics, TRANSDUCTIVE: a test speaker's unlabelled audio sets its statistics).
The references (openSMILE eGeMAPS / ComParE_2016 functionals + SVM, Whisper-tiny mean+std pooled + SVM with
its layer chosen per fold on validation) run on the same folds under the same two normalisations.
Runs are resumable: finished folds are reused. Writes bench/results/<name>.json.
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

from bench.common import write_result  # noqa: E402
from ser_dist.api import ExtractConfig, extract  # noqa: E402
from ser_dist.features.store import load_features  # noqa: E402
from ser_dist.training.config import TrainConfig  # noqa: E402
from ser_dist.training.kfold import KFoldConfig, duplicate_groups, run_kfold  # noqa: E402
from ser_dist.training.splits import make_folds  # noqa: E402

SHARED = Path(os.environ.get("SER_DIST_SHARED", REPO.parent / "shared"))
PROTOCOLS = {"loso": ("loso", None), "kfold10": ("kfold", 10)}
# feature kind -> (stored feature type, deltas); FUSION is LogMel + one Whisper-tiny layer per candidate
FEATURES = {"LOGMEL": ("LOGMEL", 0), "LOGMEL_DD": ("LOGMEL", 2), "MFCC": ("MFCC", 0), "MFCC_DD": ("MFCC", 2), "FUSION": ("FUSION", 0)}


def ensure_features(kinds: list[str], data_root: Path, out: Path, whisper: Path, layers: list[int]) -> dict[str, list[str]]:
    paths = {}
    for kind in {*kinds, "LOGMEL"}:  # LOGMEL's table gives the references their folds
        feature_type, deltas = FEATURES[kind]
        if feature_type == "FUSION":
            paths[kind] = [
                str(extract(ExtractConfig(corpus="EMODB", features="FUSION", data_root=str(data_root), out=str(out),
                                          ssl_model=str(whisper), ssl_layers=(layer,))).directory)
                for layer in layers
            ]
        else:
            paths[kind] = [str(extract(ExtractConfig(corpus="EMODB", features=feature_type, deltas=deltas,
                                                     data_root=str(data_root), out=str(out))).directory)]
    return paths


def recipe_config(recipe: str, kind: str, normalization: str, seed: int, epochs: int | None) -> TrainConfig:
    changes = {"preset": recipe, "normalization": normalization, "seed": seed}
    if kind == "FUSION":  # 50 frames/s already: no further time pooling
        changes["model"] = {"time_pool": 2}
    if epochs is not None:
        changes |= {"epochs": epochs, "patience": epochs}
    return TrainConfig.from_dict(changes)


def references(feature_paths: dict[str, list[str]], protocol: str, n_folds: int | None, cache: Path) -> list[dict]:
    """Classical references on the very folds the models use, each under both normalisations:
    train-part statistics (not transductive) and per-speaker z-normalisation (transductive)."""
    from bench.references import (
        opensmile_functionals,
        per_speaker_standardised,
        svm_choose_candidate_on_folds,
        svm_on_folds,
    )
    from ser_dist.training.selection import pooled_statistics

    table = load_features(feature_paths["LOGMEL"][0])
    meta = table.meta.assign(duplicate_group=duplicate_groups(table))
    folds = make_folds(meta, protocol=protocol, n_folds=n_folds, seed=0, val_fraction=0.15, groups="duplicate_group")
    labels = meta["label"].to_numpy()
    speakers = meta["speaker"].to_numpy()
    paths = [str(SHARED / "data" / "emodb" / "wav" / f"{u}.wav") for u in meta["utterance_id"]]
    rows = []
    for feature_set in ("eGeMAPSv02", "ComParE_2016"):
        started = time.perf_counter()
        try:
            X = opensmile_functionals(paths, feature_set, cache_dir=cache)
        except ImportError as exc:
            rows.append({"reference": f"openSMILE {feature_set} + SVM", "error": f"opensmile unavailable: {exc}"})
            continue
        for normalization, Z in (("train_global", X), ("per_speaker", per_speaker_standardised(X, speakers))):
            result = svm_on_folds(Z, labels, folds)
            rows.append({"reference": f"openSMILE {feature_set} functionals + SVM", "normalization": normalization,
                         "transductive": normalization == "per_speaker", **_headline(result),
                         "seconds": time.perf_counter() - started})
    layers = {}
    for path in feature_paths.get("FUSION", []):
        fusion = load_features(path)
        layer = str(fusion.metadata.get("encoder", {}).get("layers"))
        layers[f"layer {layer}"] = pooled_statistics([m[:, 128:] for m in fusion.features])  # encoder part (LogMel first)
    if layers:
        for normalization in ("train_global", "per_speaker"):
            candidates = layers if normalization == "train_global" else {k: per_speaker_standardised(v, speakers) for k, v in layers.items()}
            result = svm_choose_candidate_on_folds(candidates, labels, folds)
            rows.append({"reference": "Whisper-tiny mean+std pooled + SVM, layer chosen per fold on validation",
                         "normalization": normalization, "transductive": normalization == "per_speaker", **_headline(result),
                         "layers_chosen": result["chosen"]})
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


def model_run(kind: str, paths: list[str], protocol_key: str, train: TrainConfig, runs: Path, recipe: str) -> dict:
    protocol, n_folds = PROTOCOLS[protocol_key]
    config = KFoldConfig(
        features_path=paths[0], candidate_features=tuple(paths[1:]), protocol=protocol, n_folds=n_folds, seed=0,
        out=str(runs), name=f"EMODB_{kind}_{protocol_key}_{recipe}_{train.normalization}_e{train.epochs}_s{train.seed}", train=train,
    )
    started = time.perf_counter()
    summary = run_kfold(config)
    return {
        "model": f"TIM-Net {kind}", "recipe": recipe, "protocol": protocol_key, "normalization": train.normalization,
        "transductive": summary["normalization"]["transductive"], "seed": train.seed,
        "speaker_independent": summary["protocol"]["speaker_independent"],
        "uar": summary["uar"], "war": summary["war"], "macro_f1": summary["macro_f1"],
        "fold_uar_mean": summary["fold_uar"]["mean"], "fold_uar_std": summary["fold_uar"]["std"],
        "per_class_f1": {k: round(v["f1"], 4) for k, v in summary["per_class"].items()},
        "features_chosen": [Path(f["features"]).parent.name for f in summary["folds"]],
        "wall_s": time.perf_counter() - started, "folds_trained_this_run": summary["folds_trained_this_run"],
        "run_dir": _relative(runs / summary["run"]),
    }


def aggregate(models: list[dict]) -> list[dict]:
    """Mean +- std over seeds of each (model, protocol, normalisation)."""
    groups: dict[tuple, list[dict]] = {}
    for row in models:
        groups.setdefault((row["model"], row["recipe"], row["protocol"], row["normalization"]), []).append(row)
    out = []
    for (model, recipe, protocol, normalization), rows in groups.items():
        uar, war = np.array([r["uar"] for r in rows]), np.array([r["war"] for r in rows])
        out.append({"model": model, "recipe": recipe, "protocol": protocol, "normalization": normalization,
                    "transductive": rows[0]["transductive"], "seeds": len(rows),
                    "uar_mean": float(uar.mean()), "uar_std": float(uar.std()), "war_mean": float(war.mean()), "war_std": float(war.std()),
                    "wall_s_mean": float(np.mean([r["wall_s"] for r in rows]))})
    return out


def targets(summary: list[dict], references: list[dict]) -> list[dict]:
    rows = []
    loso = [s for s in summary if s["protocol"] == "loso"]
    for normalization in ("train_global", "per_speaker"):
        compare = [r for r in references if r["protocol"] == "loso" and "ComParE" in r.get("reference", "")
                   and r.get("normalization") == normalization and "uar" in r]
        scratch = [s for s in loso if s["normalization"] == normalization and "FUSION" not in s["model"]]
        if compare and scratch:
            best = max(scratch, key=lambda s: s["uar_mean"])
            rows.append({"target": f"best from-scratch LOSO UAR >= ComParE + SVM ({normalization})", "measured": best["uar_mean"],
                         "model": best["model"], "reference": compare[0]["uar"], "met": bool(best["uar_mean"] >= compare[0]["uar"])})
        whisper = [r for r in references if r["protocol"] == "loso" and "Whisper" in r.get("reference", "")
                   and r.get("normalization") == normalization and "uar" in r]
        fusion = [s for s in loso if s["normalization"] == normalization and "FUSION" in s["model"]]
        if whisper and fusion:
            rows.append({"target": f"FUSION LOSO UAR above pooled Whisper + SVM ({normalization})", "measured": fusion[0]["uar_mean"],
                         "reference": whisper[0]["uar"], "met": bool(fusion[0]["uar_mean"] > whisper[0]["uar"])})
            if normalization == "train_global":
                rows.append({"target": "FUSION LOSO UAR >= 0.92 without transductive normalisation (moonshot)",
                             "measured": fusion[0]["uar_mean"], "met": bool(fusion[0]["uar_mean"] >= 0.92)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocols", default="loso")
    parser.add_argument("--features", default="MFCC_DD,FUSION", help=f"comma-separated, of {', '.join(FEATURES)}")
    parser.add_argument("--recipe", default="speaker_independent", help="training preset (ser_dist.training.presets)")
    parser.add_argument("--normalizations", default="train_global,per_speaker")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--layers", default="1,2,3,4", help="Whisper-tiny layers that FUSION may choose from (per fold, on validation)")
    parser.add_argument("--skip-references", action="store_true")
    parser.add_argument("--references-only", action="store_true", help="features and references, no TIM-Net runs")
    parser.add_argument("--references-from", default=None,
                        help="with --skip-references: take the reference rows (same folds) from bench/results/<NAME>.json for the targets")
    parser.add_argument("--data-root", default=str(SHARED / "data"))
    parser.add_argument("--features-out", default=str(REPO / "data" / "features"))
    parser.add_argument("--runs", default=str(REPO / "runs" / "bench"))
    parser.add_argument("--name", default="accuracy")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    from ser_dist.ray_runtime import ensure_ray

    ensure_ray()
    kinds = [f.strip().upper() for f in args.features.split(",") if f.strip()]
    normalizations = [n.strip() for n in args.normalizations.split(",") if n.strip()]
    whisper = SHARED / "models" / "whisper-tiny.en"
    paths = ensure_features(kinds, Path(args.data_root), Path(args.features_out), whisper, [int(x) for x in args.layers.split(",")])
    runs = Path(args.runs)
    results: dict = {"protocol_notes": __doc__.split("\n\n")[2], "references": [], "models": [], "summary": [], "targets": []}
    if args.references_from:
        import json

        stored = json.loads((REPO / "bench" / "results" / f"{args.references_from}.json").read_text())
        results["references"] = [r | {"from": f"{args.references_from}.json"} for r in stored["references"]]

    def save() -> None:
        results["summary"] = aggregate(results["models"])
        results["targets"] = targets(results["summary"], results["references"])
        config = {"recipe": args.recipe, "seeds": args.seeds, "layers": args.layers, "normalizations": normalizations,
                  "train_configs": {f"{k}/{n}": recipe_config(args.recipe, k, n, 0, args.epochs).to_dict() for k in kinds for n in normalizations}}
        write_result(args.name, {"config": config, **results})

    for protocol_key in [p.strip() for p in args.protocols.split(",") if p.strip()]:
        protocol, n_folds = PROTOCOLS[protocol_key]
        if not args.skip_references:
            for row in references(paths, protocol, n_folds, REPO / "bench" / "cache"):
                results["references"].append({"protocol": protocol_key, **row})
            save()
        for normalization in normalizations if not args.references_only else []:
            for kind in kinds:
                for seed in args.seeds:
                    train = recipe_config(args.recipe, kind, normalization, seed, args.epochs)
                    results["models"].append(model_run(kind, paths[kind], protocol_key, train, runs, args.recipe))
                    save()
    save()


if __name__ == "__main__":
    main()
