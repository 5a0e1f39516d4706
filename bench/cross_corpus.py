"""Cross-corpus benchmark: EMODB -> RAVDESS and RAVDESS -> EMODB on the common classes, UAR.

For each direction and feature type (LOGMEL; FUSION with Whisper-tiny, its layer chosen on the
source's validation speakers among --layers), one TIM-Net is trained on the whole source corpus
(validation speakers held out for epoch selection), without and with LMMD adaptation to the
unlabelled target audio, on the same split and seed. Every score uses the explicit label mapping
(boredom, calm, surprise -> neutral); target classes without a counterpart are left out and counted.
Normalisation of the target: per-corpus statistics of its own unlabelled audio (transductive), and
also source-training statistics for the model without adaptation. With --per-speaker, a third model
per direction is trained with per-speaker normalisation and scored with each target speaker's own
statistics (transductive, unlabelled). The classical reference is
openSMILE ComParE_2016 functionals + linear SVM with per-corpus normalisation on the same classes.
In-corpus scores beside them come from bench/results/accuracy.json (EMODB LOSO) when present.
Writes bench/results/cross_corpus.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import write_result  # noqa: E402
from ser_dist.api import ExtractConfig, extract  # noqa: E402
from ser_dist.corpora import corpus_root, prepare  # noqa: E402
from ser_dist.evaluation.cross_corpus import EvaluationConfig, evaluate_cross_corpus  # noqa: E402
from ser_dist.evaluation.mapping import LabelMapping, common_label_space, map_labels  # noqa: E402
from ser_dist.training.config import ModelOptions, TrainConfig  # noqa: E402
from ser_dist.training.kfold import KFoldConfig, run_kfold  # noqa: E402
from ser_dist.training.metrics import classification_report  # noqa: E402

SHARED = Path(os.environ.get("SER_DIST_SHARED", REPO.parent / "shared"))
DIRECTIONS = (("EMODB", "RAVDESS"), ("RAVDESS", "EMODB"))


# feature kind -> (stored feature type, deltas)
FROM_SCRATCH = {"LOGMEL": ("LOGMEL", 0), "LOGMEL_DD": ("LOGMEL", 2), "MFCC": ("MFCC", 0), "MFCC_DD": ("MFCC", 2)}


def features(corpus: str, kind: str, layers: list[int], args) -> list[str]:
    common = dict(corpus=corpus, data_root=args.data_root, out=args.features_out, trim_db=args.trim_db)
    if kind in FROM_SCRATCH:
        feature_type, deltas = FROM_SCRATCH[kind]
        return [str(extract(ExtractConfig(features=feature_type, deltas=deltas, **common)).directory)]
    whisper = str(SHARED / "models" / "whisper-tiny.en")
    return [str(extract(ExtractConfig(features="FUSION", ssl_model=whisper, ssl_layers=(layer,), **common)).directory) for layer in layers]


def train_source(source_paths: list[str], target_path: str | None, name: str, args, lmmd_weight: float,
                 normalization: str = "train_global") -> str:
    if args.recipe:  # a named preset (ser_dist.training.presets), as the in-corpus benchmark uses
        changes = {"preset": args.recipe, "lmmd_weight": lmmd_weight, "normalization": normalization}
        if "FUSION" in source_paths[0]:
            changes["model"] = {"time_pool": 2}
        train = TrainConfig.from_dict(changes)
    else:
        model = ModelOptions(width=64, n_blocks=8, time_pool=4 if "FUSION" not in source_paths[0] else 2)
        train = TrainConfig(epochs=args.epochs, patience=max(10, args.epochs // 3), model=model, lmmd_weight=lmmd_weight,
                            normalization=normalization)
    config = KFoldConfig(features_path=source_paths[0], candidate_features=tuple(source_paths[1:]), protocol="full", seed=0,
                         out=args.runs, name=name, adapt_to=target_path, target_normalization="target", train=train)
    summary = run_kfold(config)
    return summary["folds"][0]["features"]


def compare_reference(source: str, target: str, args) -> dict:
    """ComParE_2016 functionals + linear SVM, per-corpus standardisation, common classes only."""
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from bench.references import opensmile_functionals

    mapping = LabelMapping()
    manifests = {c: prepare(c, corpus_root(args.data_root, c)).sort_values("utterance_id") for c in (source, target)}
    common = common_label_space(manifests[source]["label"], manifests[target]["label"], mapping)
    X, y = {}, {}
    for corpus, manifest in manifests.items():
        shared = np.array(map_labels(manifest["label"], mapping), dtype=object)
        keep = np.isin(shared, common)
        feats = opensmile_functionals(manifest["path"].tolist(), "ComParE_2016", cache_dir=REPO / "bench" / "cache")
        X[corpus] = StandardScaler().fit_transform(feats)[keep]  # per-corpus statistics (transductive)
        y[corpus] = shared[keep]
    model = SVC(kernel="linear", C=args.svm_c, class_weight="balanced").fit(X[source], y[source])
    report = classification_report(list(y[target]), list(model.predict(X[target])), common)
    return {"uar": report["uar"], "war": report["war"], "n": report["n"], "C": args.svm_c, "classes": common,
            "note": "C fixed a priori (no target data used to choose it)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", default="LOGMEL,FUSION")
    parser.add_argument("--layers", default="1,2,3,4", help="Whisper-tiny layers FUSION may choose from, on source validation data")
    parser.add_argument("--recipe", default=None, help="training preset (ser_dist.training.presets); default: the previous fixed config")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lmmd-weight", type=float, default=0.5)
    parser.add_argument("--svm-c", type=float, default=0.01)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--per-speaker", action="store_true", help="add a per-speaker-normalised model per direction")
    parser.add_argument("--trim-db", type=float, default=None, help="trim leading/trailing silence (dB below the loudest frame) before features")
    parser.add_argument("--tag", default="", help="suffix of the results file (bench/results/cross_corpus<_tag>.json)")
    parser.add_argument("--data-root", default=str(SHARED / "data"))
    parser.add_argument("--features-out", default=str(REPO / "data" / "features"))
    parser.add_argument("--runs", default=str(REPO / "runs" / "bench_cross"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    from ser_dist.ray_runtime import ensure_ray

    ensure_ray()
    layers = [int(x) for x in args.layers.split(",")]
    kinds = [k.strip().upper() for k in args.features.split(",") if k.strip()]
    rows, references = [], []
    in_corpus = _in_corpus_scores()
    started = time.perf_counter()
    for kind in kinds:
        paths = {c: features(c, kind, layers, args) for c in ("EMODB", "RAVDESS")}
        for source, target in DIRECTIONS:
            chosen = choose_features(paths[source])
            source_path, target_path = paths[source][chosen], paths[target][chosen]
            jobs = {}
            variants = [("without LMMD", 0.0, "train_global")]
            if args.lmmd_weight > 0:  # --lmmd-weight 0 skips the adapted model
                variants.append(("with LMMD", args.lmmd_weight, "train_global"))
            if args.per_speaker:
                variants.append(("without LMMD, per-speaker", 0.0, "per_speaker"))
            with ThreadPoolExecutor(2) as pool:  # two source models train side by side on the cluster
                for label, weight, normalization in variants:
                    tag = f"lmmd{weight:g}" if weight else "plain"
                    tag += "_perspk" if normalization == "per_speaker" else ""
                    tag += f"_trim{args.trim_db:g}" if args.trim_db else ""
                    name = f"{source}_to_{target}_{kind}_{tag}_" + (args.recipe if args.recipe else f"e{args.epochs}")
                    jobs[label] = (name, pool.submit(train_source, [source_path], target_path if weight else None, name, args, weight, normalization))
            for label, (name, future) in jobs.items():
                future.result()
                checkpoint = str(Path(args.runs) / name / "fold_0" / "checkpoint")
                norms = {"without LMMD": ("target", "source"), "with LMMD": ("target",), "without LMMD, per-speaker": ("per_speaker",)}[label]
                for norm in norms:
                    report = evaluate_cross_corpus(EvaluationConfig(source_run=checkpoint, target_features=target_path, mode="single", normalization=norm))
                    rows.append({"direction": f"{source}->{target}", "features": kind, "adaptation": label, "normalization": norm,
                                 "lmmd_weight": args.lmmd_weight if label == "with LMMD" else 0.0, "run": name,
                                 "uar": report["summary"]["uar"], "war": report["summary"]["war"], "n": report["summary"]["n"],
                                 "features_used": Path(target_path).parent.name,
                                 "source_val_uar": json.loads((Path(args.runs) / name / "fold_0" / "result.json").read_text())["best_val_uar"],
                                 "in_corpus_loso_uar_of_source": in_corpus.get((source, kind))})
                    _save(args, rows, references, started)
    if not args.skip_reference:
        for source, target in DIRECTIONS:
            references.append({"direction": f"{source}->{target}", "reference": "openSMILE ComParE_2016 + linear SVM", **compare_reference(source, target, args)})
    _save(args, rows, references, started, final=True)


def choose_features(source_paths: list[str]) -> int:
    """Index of the candidate (encoder layer) with the best validation UAR of a pooled-feature SVM on the
    source's whole-corpus split (validation speakers only; the target corpus plays no part)."""
    if len(source_paths) == 1:
        return 0
    from ser_dist.features.store import load_features
    from ser_dist.training.selection import pooled_statistics, select_candidate
    from ser_dist.training.splits import full_training_fold

    tables = [load_features(p) for p in source_paths]
    fold = full_training_fold(tables[0].meta, seed=0)
    index, scores = select_candidate([pooled_statistics(t.features) for t in tables], tables[0].meta["label"].to_numpy(), fold.train, fold.val)
    logging.getLogger(__name__).info("source layer choice %s -> %s", [round(x, 3) for x in scores], Path(source_paths[index]).parent.name)
    return index


def _in_corpus_scores() -> dict:
    path = REPO / "bench" / "results" / "accuracy.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {("EMODB", m["model"].split()[-1]): m["uar"] for m in data.get("models", []) if m["protocol"] == "loso"}


def selected_rows(rows: list[dict]) -> list[dict]:
    """Per direction and feature type, the unadapted model whose SOURCE validation UAR is best (global
    statistics scored with target-corpus statistics, or per-speaker statistics scored per target
    speaker). The choice reads only source validation speakers, never a target label."""
    chosen = []
    for key in dict.fromkeys((r["direction"], r["features"]) for r in rows):
        candidates = [r for r in rows if (r["direction"], r["features"]) == key and r["adaptation"].startswith("without LMMD")
                      and r["normalization"] in ("target", "per_speaker")]
        if candidates:
            best = max(candidates, key=lambda r: r["source_val_uar"])
            scores = ", ".join(f"{c['normalization']}: {c['source_val_uar']:.3f}" for c in candidates)
            chosen.append(best | {"selection": f"normalisation chosen on source validation UAR ({scores})"})
    return chosen


def _save(args, rows, references, started, *, final: bool = False) -> None:
    targets = []
    selected = selected_rows(rows)
    if final:
        for source, target in DIRECTIONS:
            ref = next((r["uar"] for r in references if r["direction"] == f"{source}->{target}"), None)
            for kind in dict.fromkeys(r["features"] for r in rows):
                goal = 0.55 if kind == "FUSION" else 0.45
                plain = [r for r in rows if r["direction"] == f"{source}->{target}" and r["features"] == kind and r["adaptation"] == "without LMMD" and r["normalization"] == "target"]
                adapted = [r for r in rows if r["direction"] == f"{source}->{target}" and r["features"] == kind and r["adaptation"] == "with LMMD"]
                if plain:
                    targets.append({"target": f"{kind} {source}->{target} UAR >= {goal}", "measured": plain[0]["uar"], "met": bool(plain[0]["uar"] >= goal)})
                    if ref is not None and kind in FROM_SCRATCH:
                        targets.append({"target": f"{kind} {source}->{target} above ComParE+SVM", "measured": plain[0]["uar"], "reference": ref, "met": bool(plain[0]["uar"] > ref)})
                if plain and adapted:
                    gain = adapted[0]["uar"] - plain[0]["uar"]
                    targets.append({"target": f"LMMD adds >= 5 points ({kind} {source}->{target})", "measured": gain, "met": bool(gain >= 0.05)})
                pick = [r for r in selected if r["direction"] == f"{source}->{target}" and r["features"] == kind]
                if pick:
                    targets.append({"target": f"{kind} {source}->{target} UAR >= {goal}, selected model ({pick[0]['normalization']})",
                                    "measured": pick[0]["uar"], "met": bool(pick[0]["uar"] >= goal)})
                    if ref is not None and kind in FROM_SCRATCH:
                        targets.append({"target": f"{kind} {source}->{target} above ComParE+SVM, selected model", "measured": pick[0]["uar"],
                                        "reference": ref, "met": bool(pick[0]["uar"] > ref)})
    write_result("cross_corpus" + (f"_{args.tag}" if args.tag else ""), {"protocol_notes": __doc__.split("\n\n")[1], "config": vars(args), "results": rows,
                                  "selected_on_source_validation": selected, "references": references, "targets": targets, "wall_s": time.perf_counter() - started})


if __name__ == "__main__":
    main()
