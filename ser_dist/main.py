"""The seed project's command line, kept working on top of the same library calls.

    python -m ser_dist.main --mode train --data EMODB --feature_type FUSION --epoch 50 --batch_size 32
    python -m ser_dist.main --mode test --data EMODB --feature_type FUSION --test_path runs/<name>
    python -m ser_dist.main --mode test --data IEMOCAP --test_path runs/<name> --source_data EMODB
    python -m ser_dist.main --mode train-lmmd --data EMODB --target_data RAVDESS --lmmd_weight 0.5

Differences from the seed, on purpose: training is speaker-independent (leave-one-speaker-out) unless
`--protocol kfold --folds 2` asks for the seed's random 2-fold; the test report counts test
utterances only. `RAVDE` is accepted as the seed's spelling of RAVDESS.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from ser_dist.api import ExtractConfig, extract
from ser_dist.corpora import corpus_name
from ser_dist.errors import ConfigError, SerDistError
from ser_dist.features.config import DEFAULT_SSL_MODEL
from ser_dist.runs import RunFolder
from ser_dist.training.config import TrainConfig

MODES = ("train", "test", "train-lmmd")
FEATURE_TYPES = ("LOGMEL", "HUBERT", "FUSION")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ser_dist.main", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--data", required=True, help="EMODB, IEMOCAP or RAVDESS (RAVDE accepted)")
    p.add_argument("--feature_type", default="LOGMEL", type=str.upper, choices=FEATURE_TYPES)
    p.add_argument("--epoch", type=int, default=TrainConfig.epochs)
    p.add_argument("--batch_size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--test_path", help="a trained run folder (runs/<name>) or one checkpoint folder")
    p.add_argument("--source_data", help="corpus the model at --test_path was trained on (cross-corpus test)")
    p.add_argument("--target_data", help="unlabelled target corpus for --mode train-lmmd")
    p.add_argument("--lmmd_weight", type=float, default=0.5)
    p.add_argument("--protocol", default="loso", help="loso (default), speaker_kfold, kfold (the seed used kfold with --folds 2)")
    p.add_argument("--folds", type=int, default=None)
    p.add_argument("--data_root", default="data/raw")
    p.add_argument("--features_dir", default="data/features")
    p.add_argument("--runs_dir", default="runs")
    p.add_argument("--ssl_model", default=DEFAULT_SSL_MODEL, help="encoder for HUBERT/FUSION (folder or hub id)")
    p.add_argument("--ssl_layer", type=int, default=-1)
    p.add_argument("--normalization", default="source", choices=["source", "target", "per_speaker"], help="cross-corpus normalisation")
    return p


def _extract(args, corpus: str) -> str:
    result = extract(ExtractConfig(corpus=corpus, features=args.feature_type, data_root=args.data_root, out=args.features_dir,
                                   ssl_model=args.ssl_model, ssl_layers=(args.ssl_layer,)))
    return str(result.directory)


def _train_config(args, **changes) -> TrainConfig:
    return replace(TrainConfig(), epochs=args.epoch, batch_size=args.batch_size, **changes)


def run_train(args) -> dict:
    from ser_dist.training.kfold import KFoldConfig, format_summary_table, run_kfold

    corpus = corpus_name(args.data)
    features = _extract(args, corpus)
    summary = run_kfold(KFoldConfig(features_path=features, protocol=args.protocol, n_folds=args.folds, out=args.runs_dir,
                                    name=f"{corpus}_{args.feature_type}_{args.protocol}", train=_train_config(args)))
    print(format_summary_table(summary))
    print(f"run folder: {Path(args.runs_dir, summary['run']).resolve()}")
    return summary


def run_test(args) -> dict:
    if not args.test_path:
        raise ConfigError("--mode test needs --test_path (a run folder or a checkpoint folder)")
    target = corpus_name(args.data)
    source_run = Path(args.test_path)
    run = RunFolder(source_run)
    source = corpus_name(args.source_data) if args.source_data else _run_corpus(source_run)
    if source == target and run.has_summary():  # in-corpus: the run's own test folds
        from ser_dist.reporting import write_run_report

        report = write_run_report(run)
        print(json.dumps({k: report["summary"][k] for k in ("uar", "war", "macro_f1")}, indent=2))
        for path in run.report_files():
            print(f"report: {path}")
        return report
    from ser_dist.evaluation.cross_corpus import EvaluationConfig, evaluate_cross_corpus

    target_features = _extract(args, target)
    mode = "fold_ensemble" if run.fold_dirs() else "single"
    report = evaluate_cross_corpus(EvaluationConfig(source_run=str(source_run), target_features=target_features, mode=mode,
                                                    normalization=args.normalization))
    print(json.dumps({k: report["summary"].get(k) for k in ("uar", "war", "macro_f1", "n")}, indent=2))
    return report


def run_train_lmmd(args) -> dict:
    """Two whole-corpus models on the same split, without and with LMMD, both scored on the target."""
    from ser_dist.evaluation.cross_corpus import EvaluationConfig, evaluate_cross_corpus
    from ser_dist.training.kfold import KFoldConfig, run_kfold

    if not args.target_data:
        raise ConfigError("--mode train-lmmd needs --target_data (the unlabelled target corpus)")
    source, target = corpus_name(args.data), corpus_name(args.target_data)
    source_features, target_features = _extract(args, source), _extract(args, target)
    scores = {}
    for label, weight in (("without_lmmd", 0.0), ("with_lmmd", args.lmmd_weight)):
        name = f"{source}_to_{target}_{args.feature_type}_{label}" + (f"_w{weight:g}" if weight else "")
        run_kfold(KFoldConfig(features_path=source_features, protocol="full", out=args.runs_dir, name=name,
                              adapt_to=target_features if weight else None, target_normalization=args.normalization,
                              train=_train_config(args, lmmd_weight=weight)))
        checkpoint = RunFolder(Path(args.runs_dir, name)).checkpoint_dir(0)  # protocol "full": one fold
        report = evaluate_cross_corpus(EvaluationConfig(source_run=str(checkpoint),
                                                        target_features=target_features, mode="single", normalization=args.normalization))
        scores[label] = report["summary"]["uar"]
    print(json.dumps({"source": source, "target": target, "cross_corpus_uar": scores,
                      "note": "same source split and seed; target labels used for scoring only"}, indent=2))
    return scores


def _run_corpus(path: Path) -> str:
    run = RunFolder.of(path)
    metadata = run.read_run_config().get("feature_metadata", {}) if run else {}
    if metadata.get("corpus"):
        return metadata["corpus"]
    raise ConfigError(f"cannot tell which corpus {path} was trained on; pass --source_data")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        {"train": run_train, "test": run_test, "train-lmmd": run_train_lmmd}[args.mode](args)
    except SerDistError as exc:
        print(f"ser_dist.main: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
