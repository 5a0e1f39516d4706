"""`ser-dist` command line: parses arguments, builds a config dataclass, calls one library function."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields

from ser_dist.errors import ConfigError, SerDistError

CORPUS_HELP = "EMODB, RAVDESS, IEMOCAP, CREMAD, SAVEE, TESS, or table:PATH (a CSV/JSONL table: path,label,speaker)"
POOL_HELP = CORPUS_HELP + "; or several, comma-separated (EMODB,RAVDESS): each is extracted into its own store"
LABEL_MAP_HELP = "table:PATH corpora: JSON/YAML file {their_label: canonical_label}; null leaves a label out"


def _default(cls, name):
    for f in fields(cls):
        if f.name == name:
            return f.default
    raise KeyError(name)


def _layers(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.replace("+", ",").split(",") if x.strip())


def _fold_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _add_prepare(sub) -> None:
    from ser_dist.api import PrepareConfig

    p = sub.add_parser("prepare", help="turn a corpus folder into a manifest (Parquet)")
    p.add_argument("--corpus", required=True, help=CORPUS_HELP)
    p.add_argument("--data-root", default=_default(PrepareConfig, "data_root"), help="folder holding emodb/, ravdess/, iemocap/ (default: %(default)s)")
    p.add_argument("--out", default=_default(PrepareConfig, "out"), help="manifest folder (default: %(default)s)")
    p.add_argument("--on-error", choices=["raise", "skip"], default=_default(PrepareConfig, "on_error"))
    p.add_argument("--iemocap-label-set", choices=["four", "all"], default=_default(PrepareConfig, "iemocap_label_set"))
    p.add_argument("--label-map", default=_default(PrepareConfig, "label_map"), help=LABEL_MAP_HELP)
    p.set_defaults(run=_run_prepare)


def _run_prepare(args) -> None:
    from ser_dist.api import PrepareConfig, prepare_corpus

    manifest, path = prepare_corpus(
        PrepareConfig(corpus=args.corpus, data_root=args.data_root, out=args.out, on_error=args.on_error, iemocap_label_set=args.iemocap_label_set,
                      label_map=args.label_map)
    )
    print(f"{len(manifest)} utterances -> {path}")
    print(manifest["label"].value_counts().to_string())


def _add_extract(sub) -> None:
    from ser_dist.api import ExtractConfig
    from ser_dist.features.extract import ExtractionOptions

    p = sub.add_parser("extract", help="extract LOGMEL / MFCC / HUBERT / FUSION features on Ray Data into Parquet")
    p.add_argument("--corpus", required=True, help=POOL_HELP)
    p.add_argument("--label-map", default=_default(ExtractConfig, "label_map"), help=LABEL_MAP_HELP)
    p.add_argument("--features", default=_default(ExtractConfig, "features"), help="LOGMEL, MFCC, HUBERT or FUSION (default: %(default)s)")
    p.add_argument("--data-root", default=_default(ExtractConfig, "data_root"), help="(default: %(default)s)")
    p.add_argument("--out", default=_default(ExtractConfig, "out"), help="feature store root (default: %(default)s)")
    p.add_argument("--ssl-model", default=_default(ExtractConfig, "ssl_model"), help="transformers encoder: local folder or hub id (default: %(default)s)")
    p.add_argument("--ssl-layer", type=_layers, default=_default(ExtractConfig, "ssl_layers"), help="hidden layer index, or several averaged: 2 or 1,2 (default: last)")
    p.add_argument("--num-workers", type=int, default=_default(ExtractionOptions, "num_workers"), help="Ray actors (default: one per CPU or GPU)")
    p.add_argument("--batch-size", type=int, default=_default(ExtractionOptions, "batch_size"), help="(default: %(default)s)")
    p.add_argument("--float16", action="store_true", help="store features as float16 (halves disk)")
    p.add_argument("--trim-db", type=float, default=None,
                   help="trim leading/trailing audio this many dB below the loudest frame before computing features (e.g. 40; default: off)")
    p.add_argument("--deltas", type=int, choices=[0, 1, 2], default=_default(ExtractConfig, "deltas"),
                   help="LOGMEL/MFCC: 1 appends deltas, 2 deltas and delta-deltas (default: %(default)s)")
    p.add_argument("--n-mfcc", type=int, default=_default(ExtractConfig, "n_mfcc"), help="MFCC coefficients (default: %(default)s)")
    p.add_argument("--fixed-seconds", type=float, default=None,
                   help="centre-pad/crop every signal to this many seconds, as TIM-Net's reference code (4.354); default: off")
    p.add_argument("--on-error", choices=["raise", "skip"], default=_default(ExtractConfig, "on_error"))
    p.set_defaults(run=_run_extract)


def _run_extract(args) -> None:
    from ser_dist.corpora import split_corpora

    for corpus in split_corpora(args.corpus):  # a pool: one store per corpus
        _extract_one(args, corpus)


def _extract_one(args, corpus: str) -> None:
    from ser_dist.api import ExtractConfig, extract
    from ser_dist.corpora.table import table_path
    from ser_dist.features.extract import ExtractionOptions

    result = extract(
        ExtractConfig(
            corpus=corpus, label_map=args.label_map if table_path(corpus) is not None else None, features=args.features, data_root=args.data_root, out=args.out,
            ssl_model=args.ssl_model, ssl_layers=args.ssl_layer, on_error=args.on_error,
            storage_dtype="float16" if args.float16 else "float32", trim_db=args.trim_db,
            deltas=args.deltas, n_mfcc=args.n_mfcc, fixed_seconds=args.fixed_seconds,
            extraction=ExtractionOptions(num_workers=args.num_workers, batch_size=args.batch_size),
        )
    )
    print(
        f"{result.directory.redacted()}: {result.n_extracted} extracted, {result.n_already_done} already stored, "
        f"{len(result.skipped)} skipped, {result.seconds:.1f} s"
    )


def _add_train(sub) -> None:
    from ser_dist.training.config import ModelOptions, TrainConfig
    from ser_dist.training.kfold import KFoldConfig
    from ser_dist.training.presets import PRESETS

    p = sub.add_parser("train", help="k-fold cross-validation, each fold a Ray Train job, folds in parallel")
    p.add_argument("--corpus", required=True, help=CORPUS_HELP + "; or a pool, EMODB,RAVDESS: one table on the classes they "
                   "share through the emotion mapping, speakers namespaced by corpus, scored per corpus")
    p.add_argument("--mapping", default=None, help="pools: YAML/JSON {from: to} emotion mapping on top of the default (to: null drops a class)")
    p.add_argument("--classes", default=None, help="pools: comma-separated shared classes to train on (default: all the members share)")
    p.add_argument("--features", default="LOGMEL", help="LOGMEL, MFCC, HUBERT or FUSION (default: %(default)s)")
    p.add_argument("--features-dir", default="data/features", help="feature store root, or one dataset folder (default: %(default)s)")
    p.add_argument("--ssl-model", default=None, help="encoder used at extraction (names the dataset folder for HUBERT/FUSION)")
    p.add_argument("--ssl-layer", type=_layers, default=None, help="encoder layer(s) used at extraction")
    p.add_argument("--deltas", type=int, choices=[0, 1, 2], default=0, help="LOGMEL/MFCC extracted with deltas (names the dataset folder)")
    p.add_argument("--protocol", default=_default(KFoldConfig, "protocol"),
                   help="loso, speaker_kfold, losesso, kfold (random stratified), kfold_plain (TIM-Net's KFold) or, for pools, "
                        "leave_one_corpus_out (default: %(default)s)")
    p.add_argument("--folds", type=int, default=None, help="k for kfold / speaker_kfold")
    p.add_argument("--seed", type=int, default=_default(KFoldConfig, "seed"))
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a named recipe (ser_dist/training/presets.py); the options below override it when given")
    p.add_argument("--epochs", type=int, default=None, help=f"(default: {_default(TrainConfig, 'epochs')})")
    p.add_argument("--batch-size", type=int, default=None, help=f"(default: {_default(TrainConfig, 'batch_size')})")
    p.add_argument("--lr", type=float, default=None, help=f"(default: {_default(TrainConfig, 'lr')})")
    p.add_argument("--width", type=int, default=None, help=f"(default: {_default(ModelOptions, 'width')})")
    p.add_argument("--blocks", type=int, default=None, help=f"(default: {_default(ModelOptions, 'n_blocks')})")
    p.add_argument("--time-pool", type=int, default=None, help=f"(default: {_default(ModelOptions, 'time_pool')})")
    p.add_argument("--normalization", choices=["train_global", "per_speaker", "per_corpus"], default=None,
                   help="per_speaker is transductive: each test speaker's unlabelled audio sets its statistics; per_corpus (pools): each "
                        "corpus by its training-part statistics (a held-out corpus by its own: transductive) "
                        f"(default: {_default(TrainConfig, 'normalization')})")
    p.add_argument("--workers-per-fold", type=int, default=_default(TrainConfig, "num_workers"), help="Ray Train workers per fold (DDP when > 1)")
    p.add_argument("--max-concurrent-folds", type=int, default=None)
    p.add_argument("--data-loading", choices=["memory", "stream", "auto"], default=_default(KFoldConfig, "data_loading"),
                   help="memory: the driver loads the corpus; stream: each fold's workers read their parts from the Parquet store "
                        "through Ray Data (train_global normalisation, one corpus); auto: stream stores too big for memory (default: %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=_default(KFoldConfig, "checkpoint_every"),
                   help="save each fold's trainer state every N epochs so a lost worker resumes there; 0 = final only (default: %(default)s)")
    p.add_argument("--out", default=_default(KFoldConfig, "out"), help="(default: %(default)s)")
    p.add_argument("--name", default=None, help="run folder name (default: <dataset>_<protocol>)")
    p.set_defaults(run=_run_train)


def _features_path(args, corpus: str | None = None) -> str:
    """The stored dataset of `corpus` (default args.corpus) under --features-dir, or --features-dir itself when it is one."""
    from ser_dist.corpora import corpus_name
    from ser_dist.features.config import FeatureConfig, FeatureType, SSLConfig
    from ser_dist.features.store import METADATA_FILE, dataset_dir
    from ser_dist.storage import as_location

    corpus = args.corpus if corpus is None else corpus
    root = as_location(args.features_dir)  # a local folder or a URI
    if (root / METADATA_FILE).is_file() or root.glob("v_*"):
        if corpus != args.corpus:
            raise ConfigError(f"--features-dir {root} is one corpus's dataset folder; for the pool {args.corpus} give the feature store "
                              "root that holds every member (e.g. data/features)")
        return str(root)  # already a dataset (or version) folder
    ssl = SSLConfig(**{k: v for k, v in {"model": args.ssl_model, "layers": args.ssl_layer}.items() if v is not None})
    config = FeatureConfig(feature_type=FeatureType.parse(args.features), ssl=ssl, deltas=getattr(args, "deltas", 0))
    return str(dataset_dir(root, config, corpus_name(corpus)))


def _run_train(args) -> None:
    from ser_dist.training.config import TrainConfig
    from ser_dist.training.kfold import KFoldConfig, format_summary_table, run_kfold

    given = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "normalization": args.normalization}
    model = {"width": args.width, "n_blocks": args.blocks, "time_pool": args.time_pool}
    options = {k: v for k, v in given.items() if v is not None} | {"num_workers": args.workers_per_fold,
                                                                    "max_concurrent_folds": args.max_concurrent_folds}
    if any(v is not None for v in model.values()):
        options["model"] = {k: v for k, v in model.items() if v is not None}
    if args.preset:
        options["preset"] = args.preset
    train = TrainConfig.from_dict(options)
    from ser_dist.corpora import split_corpora

    members = split_corpora(args.corpus)
    paths = [_features_path(args, m) for m in members] if len(members) > 1 else [_features_path(args)]
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip()) if args.classes else ()
    config = KFoldConfig(features_path=paths[0], pool=tuple(paths[1:]), pool_classes=classes, mapping_file=args.mapping,
                         protocol=args.protocol, n_folds=args.folds, seed=args.seed, out=args.out, name=args.name, train=train,
                         data_loading=args.data_loading, checkpoint_every=args.checkpoint_every)
    summary = run_kfold(config)
    print(format_summary_table(summary))
    from pathlib import Path

    run_dir = Path(args.out) / summary["run"]
    print(f"run folder: {run_dir.resolve()}")


def _add_evaluate(sub) -> None:
    from ser_dist.evaluation import EvaluationConfig

    p = sub.add_parser("evaluate", help="cross-corpus: score a trained run on another corpus's stored features (a Ray actor)")
    p.add_argument("--source-run", required=True, help="run folder runs/<name> (or one checkpoint folder with --mode single)")
    p.add_argument("--target", required=True, help="target corpus: EMODB, RAVDESS or IEMOCAP")
    p.add_argument("--features-dir", default=None, help="feature store root holding the target's features (default: the store the source run was trained from)")
    p.add_argument("--target-features", default=None, help="the target's stored feature folder itself (overrides --target/--features-dir lookup)")
    p.add_argument("--normalization", choices=["source", "target", "per_speaker"], default=_default(EvaluationConfig, "normalization"),
                   help="source: each checkpoint's training statistics; target: the target corpus's own statistics; per_speaker: each target speaker's own (both transductive, unlabelled) (default: %(default)s)")
    p.add_argument("--mode", choices=["fold_ensemble", "single"], default=_default(EvaluationConfig, "mode"),
                   help="fold_ensemble: every fold's model, probabilities averaged; single: <run>/full/checkpoint or the checkpoint folder given (default: %(default)s)")
    p.add_argument("--mapping", default=None, help="YAML/JSON {from: to} emotion mapping on top of the default (to: null leaves a class out)")
    p.add_argument("--out", default=None, help="report folder (default: <source run>/cross_<TARGET>[...])")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> None:
    from ser_dist.evaluation import EvaluationConfig, evaluate_cross_corpus, target_features_path

    target = args.target_features or target_features_path(args.features_dir, args.source_run, args.target)
    report = evaluate_cross_corpus(EvaluationConfig(source_run=args.source_run, target_features=target, mode=args.mode,
                                                    normalization=args.normalization, mapping_file=args.mapping, out=args.out))
    s = report["summary"]
    print(f"{report['title']}\nUAR {s['uar']:.3f}  WAR {s['war']:.3f}  macro-F1 {s['macro_f1']:.3f}  on {s['n']} utterances "
          f"({s['n_removed']} removed: {report['protocol']['removed_by_label']})\nreport folder: {report['config']['out']}")


def _add_cross_matrix(sub) -> None:
    p = sub.add_parser("cross-matrix", help="source x target cross-corpus UAR matrix (+ heatmap) of several trained runs")
    p.add_argument("--source", action="append", required=True, metavar="CORPUS=RUN",
                   help="a trained source run, e.g. EMODB=runs/EMODB_LOGMEL_loso, or a pooled one, EMODB,RAVDESS=runs/... (repeat)")
    p.add_argument("--targets", default=None, help="comma-separated target corpora (default: the sources' corpora)")
    p.add_argument("--features-dir", default=None, help="feature store root (default: the store the first source run was trained from)")
    p.add_argument("--normalization", choices=["source", "target", "per_speaker"], default="source")
    p.add_argument("--mode", choices=["fold_ensemble", "single"], default="fold_ensemble")
    p.add_argument("--mapping", default=None)
    p.add_argument("--out", default="runs/cross_corpus_matrix", help="(default: %(default)s)")
    p.set_defaults(run=_run_cross_matrix)


def _run_cross_matrix(args) -> None:
    from ser_dist.corpora import corpus_name, split_corpora
    from ser_dist.evaluation import cross_corpus_matrix, target_features_path
    from ser_dist.training.pool import pool_name

    sources = {pool_name([corpus_name(c) for c in split_corpora(k.replace("+", ","))]): v for k, v in (item.split("=", 1) for item in args.source)}
    targets = [corpus_name(t) for t in args.targets.split(",")] if args.targets else list(dict.fromkeys(
        c for name in sources for c in name.split("+")))  # a pooled source's members are targets too
    first = next(iter(sources.values()))
    features = {t: target_features_path(args.features_dir, first, t) for t in targets}
    matrix = cross_corpus_matrix(sources, features, args.out, mode=args.mode, normalization=args.normalization, mapping_file=args.mapping)
    print(matrix.round(3).to_string())
    print(f"matrix folder: {args.out}")


def _add_predict(sub) -> None:
    from ser_dist.prediction import SegmentationConfig

    p = sub.add_parser("predict", help="emotion and class probabilities per file, or per segment with --timeline")
    p.add_argument("paths", nargs="+", help="audio files and/or folders (searched recursively for .wav and .flac)")
    p.add_argument("--model", required=True, help="a checkpoint folder, or a run folder runs/<name> (its folds are averaged)")
    p.add_argument("--out", default=None, help="write the table to a .csv or .json file (default: print it)")
    p.add_argument("--timeline", action="store_true", help="split long recordings and give one row per segment")
    p.add_argument("--segmenter", choices=["vad", "fixed"], default=_default(SegmentationConfig, "method").value,
                   help="with --timeline: voice activity (silero-vad) or fixed windows (default: %(default)s)")
    p.add_argument("--window-s", type=float, default=_default(SegmentationConfig, "window_s"), help="fixed window length (default: %(default)s)")
    p.add_argument("--hop-s", type=float, default=_default(SegmentationConfig, "hop_s"), help="fixed window step (default: %(default)s)")
    p.add_argument("--speaker-column", default=None,
                   help="the paths are CSV tables with a 'path' column and this speaker column; a model trained with "
                        "per-speaker normalisation then normalises each speaker by all of that speaker's files")
    p.add_argument("--normalization", choices=["utterance"], default=None,
                   help="utterance: let a per-speaker model score files without speakers, each by its own statistics (an approximation)")
    p.set_defaults(run=_run_predict)


def _run_predict(args) -> None:
    from ser_dist.prediction import predict_paths

    table = predict_paths(args.paths, args.model, out=args.out, timeline=args.timeline, segmenter=args.segmenter,
                          window_s=args.window_s, hop_s=args.hop_s, speaker_column=args.speaker_column,
                          normalization=args.normalization)
    if args.out is None:
        print(table.to_string(index=False))
    else:
        print(f"{len(table)} rows ({int((table['status'] == 'ok').sum())} ok) -> {args.out}")


def _add_export(sub) -> None:
    from ser_dist.export.onnx_export import EXPORT_FORMATS, ExportConfig

    p = sub.add_parser("export", help="write a trained model (front-end + fold ensemble) as ONNX graphs and a JSON spec")
    p.add_argument("--model", required=True, help="a checkpoint folder, or a run folder runs/<name> (its folds are averaged in the graph)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default=_default(ExportConfig, "format"), help="(default: %(default)s)")
    p.add_argument("--out", required=True, help="folder for frontend.onnx, model.onnx and export.json")
    p.add_argument("--opset", type=int, default=_default(ExportConfig, "opset"), help="ONNX opset (default: %(default)s)")
    p.set_defaults(run=_run_export)


def _run_export(args) -> None:
    from ser_dist.export.onnx_export import ExportConfig, export_onnx

    out = export_onnx(ExportConfig(model=args.model, out=args.out, format=args.format, opset=args.opset))
    print(f"exported {args.model} -> {out}")


def _add_serve(sub) -> None:
    from ser_dist.serve.service import ServeConfig

    p = sub.add_parser("serve", help="serve a trained model over HTTP with Ray Serve (POST /predict, GET /healthz, GET /model)")
    p.add_argument("--model", required=True, help="a checkpoint folder, or a run folder runs/<name> (its folds are averaged)")
    p.add_argument("--host", default=_default(ServeConfig, "host"), help="(default: %(default)s)")
    p.add_argument("--port", type=int, default=_default(ServeConfig, "port"), help="(default: %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=_default(ServeConfig, "max_batch_size"), help="requests per model call; 1 = no batching (default: %(default)s)")
    p.add_argument("--replicas", type=int, default=_default(ServeConfig, "replicas"), help="(default: %(default)s)")
    p.set_defaults(run=_run_serve)


def _run_serve(args) -> None:
    from ser_dist.serve.service import ServeConfig, run_service

    run_service(ServeConfig(model=args.model, host=args.host, port=args.port, max_batch_size=args.max_batch_size, replicas=args.replicas))


def _add_tune(sub) -> None:
    from ser_dist.tuning import TuneConfig

    p = sub.add_parser("tune", help="hyperparameter sweep (Optuna + ASHA on Ray Tune; nested: one search per outer fold on its "
                                    "training side), then a k-fold run with the chosen config(s)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--features", default="LOGMEL", help="LOGMEL, MFCC, HUBERT or FUSION (default: %(default)s)")
    p.add_argument("--features-dir", default="data/features", help="feature store root, or one dataset folder (default: %(default)s)")
    p.add_argument("--ssl-model", default=None, help="encoder used at extraction (names the dataset folder for HUBERT/FUSION)")
    p.add_argument("--ssl-layer", type=_layers, default=None, help="encoder layer(s) used at extraction")
    p.add_argument("--protocol", default=_default(TuneConfig, "protocol"), help="loso, speaker_kfold, losesso or kfold (default: %(default)s)")
    p.add_argument("--folds", type=int, default=None, help="k for kfold / speaker_kfold")
    p.add_argument("--seed", type=int, default=_default(TuneConfig, "seed"))
    p.add_argument("--samples", type=int, default=_default(TuneConfig, "num_samples"), help="trials (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=_default(TuneConfig, "epochs"), help="most epochs per trial, and in the final run (default: %(default)s)")
    p.add_argument("--mode", choices=("nested", "shared"), default=_default(TuneConfig, "mode"),
                   help="nested: one search per outer fold on its training side only; shared: one search on the training sides of "
                        "the first --inner-folds outer folds (cheaper; reads other folds' test speakers, and reports which) "
                        "(default: %(default)s)")
    p.add_argument("--inner-folds", type=int, default=_default(TuneConfig, "inner_folds"),
                   help="nested: inner folds made from each outer fold's training side; shared: outer folds whose training sides "
                        "make the objective (default: %(default)s)")
    p.add_argument("--outer-folds", type=_fold_list, default=None,
                   help="nested only, for quick runs: search only these outer folds (e.g. 0,1); the others train with the base config "
                        "and are reported as not swept (default: all)")
    p.add_argument("--max-concurrent-trials", type=int, default=None, help="(default: one per cluster CPU)")
    p.add_argument("--no-final-run", action="store_true", help="stop after the sweep (no k-fold run of the best config)")
    p.add_argument("--out", default=_default(TuneConfig, "out"), help="(default: %(default)s)")
    p.add_argument("--name", default=None, help="run folder (default: <dataset>_<protocol>_tune); the same name resumes")
    p.set_defaults(run=_run_tune)


def _run_tune(args) -> None:
    from ser_dist.tuning import TuneConfig, run_sweep

    config = TuneConfig(
        features_path=_features_path(args), protocol=args.protocol, n_folds=args.folds, seed=args.seed,
        num_samples=args.samples, epochs=args.epochs, mode=args.mode, inner_folds=args.inner_folds, outer_folds=args.outer_folds,
        max_concurrent_trials=args.max_concurrent_trials, final_run=not args.no_final_run, out=args.out, name=args.name,
    )
    summary = run_sweep(config)
    if summary["mode"] == "nested":
        print(f"nested sweep: {summary['n_trials']} trials over outer folds {summary['swept_folds']}; mean chosen inner val UAR "
              f"{summary['best_val_uar']:.3f}; {summary['objective']}")
        for fold, choice in summary["fold_configs"].items():
            print(f"  outer fold {fold}: {choice['source']} {choice['train_overrides'] or ''}")
    else:
        print(f"shared sweep: best val UAR {summary['best_val_uar']:.3f} over {summary['n_trials']} trials; {summary['objective']}")
    print(f"results table: {summary['results_table']}")
    final = summary["final_summary"]
    if final:
        unseen = final["unseen_by_sweep"]
        print(f"final k-fold run (test scores): UAR {final['uar']:.3f}  WAR {final['war']:.3f}  -> {final['run_dir']}")
        print(f"test speakers unseen by the sweep that chose their fold's config: {unseen['test_speakers_unseen']} of "
              f"{unseen['test_speakers_total']}; folds whose test part the sweep read: {unseen['folds_read'] or 'none'}")


SUBCOMMANDS = [_add_prepare, _add_extract, _add_train, _add_tune, _add_evaluate, _add_cross_matrix, _add_predict, _add_export, _add_serve]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ser-dist", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.run(args)
    except SerDistError as exc:
        print(f"ser-dist {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"ser-dist {args.command}: interrupted: {exc or 'rerun the same command to resume'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
