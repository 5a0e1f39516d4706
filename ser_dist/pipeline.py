"""The main job: extract -> (sweep) -> k-fold training on Ray Train -> (cross-corpus evaluation) -> reports.

Steps in brackets run when the config asks for them:

- `sweep.enabled`: Ray Tune searches `sweep.space`. Nested (`sweep.mode`, the default): one search per
  outer fold on that fold's training side only (`sweep.inner_folds` inner folds), so no trial reads the
  fold's test utterances; the k-fold run (`<name>_..._tune_final`) then trains each fold once with its own
  chosen config. Shared: one search on the training sides of the first `sweep.inner_folds` outer folds,
  whose reports list the other folds' test speakers it read. Test scores are reported apart from the
  sweep's validation score.
- `corpus` is one corpus (a registry name or `table:PATH`) or a pool, `EMODB,RAVDESS`: each member is
  extracted into its own store, and training runs on one pooled table of the classes they share through the
  emotion mapping (`mapping_file` overrides entries; `classes` restricts them), speakers namespaced by corpus
  (ser_dist.training.pool). Protocols then include `leave_one_corpus_out`; the summary scores each corpus.
- `cross_corpus.targets`: each target corpus is extracted with the same feature config and scored by
  the k-fold run's fold ensemble through the explicit emotion mapping; one report per target.

`features_out` and `runs_out` take local folders or URIs (`s3://bucket/prefix`, see ser_dist.storage).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ser_dist.api import ExtractConfig, extract
from ser_dist.corpora import corpus_name, split_corpora
from ser_dist.errors import ConfigError
from ser_dist.features.config import DEFAULT_SSL_MODEL, LogMelConfig
from ser_dist.features.extract import ExtractionOptions
from ser_dist.runs import RunFolder
from ser_dist.storage import as_location
from ser_dist.training.config import TrainConfig
from ser_dist.training.kfold import KFoldConfig, format_summary_table, run_kfold
from ser_dist.tuning.sweep import SearchSpace

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepStep:
    """The optional Ray Tune step; the searched values replace those of `PipelineConfig.train`."""

    enabled: bool = False
    mode: str = "nested"  # nested (one search per outer fold, on its training side) | shared (one search; not nested)
    inner_folds: int = 2  # nested: inner folds per outer fold's training side; shared: outer folds whose training sides make the objective
    num_samples: int = 8  # trials
    epochs: int | None = None  # per trial and in the final run; None = train.epochs
    grace_period: int = 5  # ASHA
    reduction_factor: int = 3
    space: SearchSpace = field(default_factory=SearchSpace)


@dataclass(frozen=True)
class CrossCorpusStep:
    """The optional cross-corpus step: score the trained run on other corpora."""

    targets: tuple[str, ...] = ()  # e.g. [RAVDESS]; each must be under data_root
    mode: str = "fold_ensemble"  # fold_ensemble (every fold's model) | single
    normalization: str = "source"  # source | target | per_speaker (the last two transductive, unlabelled)
    mapping_file: str | None = None  # YAML/JSON {from: to} on top of the default emotion mapping


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "pipeline"
    corpus: str = "EMODB"  # a registry name, table:PATH, or a pool: EMODB,RAVDESS
    mapping_file: str | None = None  # pools: YAML/JSON {from: to} on top of the default emotion mapping (null drops a class)
    label_map: str | None = None  # table:PATH corpora (training or target): JSON/YAML {their_label: canonical_label}
    classes: tuple[str, ...] = ()  # pools: train on these shared classes only (default: every class all members share)
    data_root: str = "data/raw"
    features: str = "LOGMEL"  # LOGMEL | MFCC | HUBERT | FUSION
    deltas: int = 0  # LOGMEL/MFCC: 1 = + deltas, 2 = + deltas and delta-deltas
    fixed_seconds: float | None = None  # centre-pad/crop signals (TIM-Net's protocol); None = real lengths
    logmel: LogMelConfig = field(default_factory=LogMelConfig)  # window / hop / bands behind LOGMEL, MFCC, FUSION
    val_fraction: float = 0.15  # validation share carved from each fold's training side (0: none, last epoch kept)
    ssl_model: str = DEFAULT_SSL_MODEL
    ssl_layers: tuple[int, ...] = (-1,)
    features_out: str = "data/features"  # local folder or URI
    runs_out: str = "runs"  # local folder or URI
    extraction: ExtractionOptions = field(default_factory=ExtractionOptions)
    protocol: str = "loso"
    n_folds: int | None = None
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    # k-fold: save each fold's whole trainer state every this many epochs, so a fold whose worker (or
    # worker node) is lost resumes there instead of at epoch 0; 0 = only the final checkpoint
    checkpoint_every: int = 1
    # k-fold: memory (the driver loads the corpus), stream (fold workers read their parts from the Parquet store through
    # Ray Data; train_global normalisation, one corpus) or auto (stream a store too big for memory)
    data_loading: str = "memory"
    sweep: SweepStep = field(default_factory=SweepStep)
    cross_corpus: CrossCorpusStep = field(default_factory=CrossCorpusStep)

    def __post_init__(self):
        sources = [corpus_name(c) for c in split_corpora(self.corpus)]
        object.__setattr__(self, "classes", tuple(self.classes or ()))
        targets = tuple(corpus_name(t) for t in self.cross_corpus.targets)
        inside = sorted(set(sources) & set(targets))
        if inside:
            raise ConfigError(f"cross_corpus.targets names the training corpus {', '.join(inside)}; in-corpus scores come from the k-fold run")
        if self.sweep.enabled and self.pooled:
            raise ConfigError("the sweep step searches one corpus's store; turn sweep.enabled off for a pool "
                              f"({self.corpus}) or with mapping_file/classes, or sweep one corpus first")

    @property
    def corpora(self) -> list[str]:
        """The training corpora as given (one, or the members of a pool)."""
        return split_corpora(self.corpus)

    @property
    def pooled(self) -> bool:
        return len(self.corpora) > 1 or bool(self.mapping_file or self.classes)

    def extract_config(self, corpus: str) -> ExtractConfig:
        """`corpus` as the user gave it (a registry name or table:PATH, not a table's manifest name)."""
        from ser_dist.corpora.table import table_path

        return ExtractConfig(corpus=corpus, features=self.features, data_root=self.data_root, out=self.features_out,
                             ssl_model=self.ssl_model, ssl_layers=self.ssl_layers, extraction=self.extraction,
                             deltas=self.deltas, fixed_seconds=self.fixed_seconds, logmel=self.logmel,
                             label_map=self.label_map if table_path(corpus) is not None else None)


def run_pipeline(config: PipelineConfig) -> dict:
    from ser_dist.training.pool import pool_name

    stores, skipped = [], []
    for member in config.corpora:  # a pool's corpora each get their own store, as a single corpus does
        extraction = extract(config.extract_config(member))
        stores.append(extraction.directory)
        skipped += extraction.skipped
        logger.info("features: %s (%d extracted now, %d already stored, %d skipped)", extraction.directory.redacted(),
                    extraction.n_extracted, extraction.n_already_done, len(extraction.skipped))
    corpus = pool_name([corpus_name(c) for c in config.corpora])
    features = stores[0]
    base_name = f"{config.name}_{corpus}_{config.features}_{config.protocol}"
    outputs: dict = {"features": features.redacted() if len(stores) == 1 else [s.redacted() for s in stores], "skipped_files": skipped}

    if config.sweep.enabled:
        summary, run_name = _sweep_then_final_run(config, str(features), base_name, outputs)
    else:
        run_name = base_name
        summary = run_kfold(KFoldConfig(
            features_path=str(features), pool=tuple(str(s) for s in stores[1:]), pool_classes=config.classes,
            mapping_file=config.mapping_file, protocol=config.protocol, n_folds=config.n_folds, seed=config.seed,
            out=config.runs_out, name=run_name, train=config.train, val_fraction=config.val_fraction,
            checkpoint_every=config.checkpoint_every, data_loading=config.data_loading,
        ))
    run = RunFolder(as_location(config.runs_out) / run_name)
    outputs["run"] = run.location.redacted()
    outputs["summary"] = {k: summary.get(k) for k in ("uar", "war", "macro_f1", "fold_uar", "n_test", "protocol")}
    if summary.get("per_corpus"):
        outputs["summary"]["per_corpus"] = {c: {k: s[k] for k in ("uar", "war", "n_test")} for c, s in summary["per_corpus"].items()}
    outputs["reports"] = [p.redacted() for p in run.report_files()]
    print(format_summary_table(summary))

    if config.cross_corpus.targets:
        outputs["cross_corpus"] = _cross_corpus(config, run)
    run.write_pipeline(outputs)
    print(f"run folder: {run.location.redacted()}")
    for path in outputs["reports"]:
        print(f"report: {path}")
    for item in outputs.get("cross_corpus", []):
        print(f"cross-corpus {corpus} -> {item['target']}: UAR {item['uar']:.3f} ({item['normalization']}) report: {item['report_dir']}")
    return outputs


def _sweep_then_final_run(config: PipelineConfig, features: str, base_name: str, outputs: dict) -> tuple[dict, str]:
    from ser_dist.tuning import TuneConfig, run_sweep

    step = config.sweep
    tune = TuneConfig(
        features_path=features, protocol=config.protocol, n_folds=config.n_folds, seed=config.seed,
        mode=step.mode, inner_folds=step.inner_folds, num_samples=step.num_samples, epochs=step.epochs or config.train.epochs,
        grace_period=step.grace_period, reduction_factor=step.reduction_factor, space=step.space, base=config.train,
        out=config.runs_out, name=f"{base_name}_tune", final_run=True, checkpoint_every=config.checkpoint_every,
    )
    sweep = run_sweep(tune)
    outputs["sweep"] = {k: sweep.get(k) for k in ("run", "location", "mode", "objective", "best_val_uar", "best_params", "fold_configs",
                                                  "n_trials", "n_errors", "sweep_wall_s", "results_table")}
    outputs["sweep"]["unseen_by_sweep"] = (sweep.get("final_summary") or sweep)["unseen_by_sweep"]
    final_name = f"{base_name}_tune_final"
    return RunFolder(as_location(config.runs_out) / final_name).read_summary(), final_name


def _cross_corpus(config: PipelineConfig, run: RunFolder) -> list[dict]:
    from ser_dist.evaluation.cross_corpus import EvaluationConfig, evaluate_cross_corpus, report_dir_name

    step = config.cross_corpus
    results = []
    for given in step.targets:
        target = corpus_name(given)
        extraction = extract(config.extract_config(given))
        evaluation = EvaluationConfig(source_run=str(run.location), target_features=str(extraction.directory), mode=step.mode,
                                      normalization=step.normalization, mapping_file=step.mapping_file)
        report = evaluate_cross_corpus(evaluation)
        name = report_dir_name(target, mode=evaluation.mode, normalization=evaluation.normalization, mapping_file=step.mapping_file)
        results.append({"target": target, "features": extraction.directory.redacted(), "uar": report["summary"]["uar"],
                        "war": report["summary"]["war"], "n": report["summary"]["n"], "normalization": str(evaluation.normalization),
                        "mode": str(evaluation.mode), "report_dir": run.evaluation_dir(name).redacted(), "skipped_files": extraction.skipped})
    return results
