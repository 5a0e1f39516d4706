"""Cross-corpus evaluation: models trained on one corpus, scored on every utterance of another.

    evaluate_cross_corpus(EvaluationConfig(source_run="runs/EMODB_LOGMEL_loso",
                                           target_features="data/features/LOGMEL/RAVDESS_LOGMEL"))
    cross_corpus_matrix({"EMODB": "runs/a", "RAVDESS": "runs/b"}, {"EMODB": ..., "RAVDESS": ...}, "runs/cross")

`CrossCorpusEvaluator` is a plain class, run as a Ray actor (`ray.remote(CrossCorpusEvaluator)`) so it
loads the source checkpoints once and can score several targets; it works without Ray too. Choices,
all stated in every report's protocol:

- mode: `fold_ensemble` averages the class probabilities of every fold's model of a k-fold run;
  `single` uses one model trained on the whole source corpus (`<run>/full/checkpoint`) or the
  checkpoint folder given.
- normalization: `source` applies each checkpoint's own training-part statistics; `target` fits one
  mean/std on all of the target corpus's features (transductive: its audio, never its labels, and
  utterances later left out by the label mapping count too); `per_speaker` normalises each target
  speaker by their own frames (transductive likewise), the counterpart of training with
  `normalization: per_speaker`.
- labels: see `ser_dist.evaluation.mapping` (one table, shared by both sides; classes without a
  counterpart are left out of the score and counted).

A source run trained on a pool of corpora (`--corpus EMODB,RAVDESS`, ser_dist.training.pool) is scored like
any other on a corpus outside its pool; its labels are the pool's shared labels, which the same mapping
table maps. A target inside the pool is refused (those utterances were training data); in the matrix such
a cell is the pooled run's own k-fold UAR on that corpus (summary.json `per_corpus`). A model trained with
`per_corpus` normalisation saw every corpus standardised by that corpus's own statistics, so it is scored
with `target` normalisation (the target corpus's own statistics); `source` is refused.

The target features must have been computed exactly as the source's (feature type, log-mel
settings, encoder weights and layers); anything else raises ConfigError naming both.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ser_dist.errors import ConfigError, FeatureStoreError, ModelLoadError, UnknownNameError
from ser_dist.evaluation.mapping import (
    LabelMapping,
    common_label_space,
    left_out_source_classes,
    load_mapping,
    map_labels,
    merge_probabilities,
    removed_counts,
)
from ser_dist.features.config import FeatureConfig
from ser_dist.features.store import FeatureTable, load_features, read_metadata, resolve_version, version_dir
from ser_dist.prediction.ensemble import Ensemble
from ser_dist.runs import FULL_MODEL, RunFolder
from ser_dist.storage import StagedDirectory, as_location
from ser_dist.training.checkpoint import META_FILE
from ser_dist.training.data import Standardizer, normalise_per_speaker
from ser_dist.training.metrics import classification_report

logger = logging.getLogger(__name__)

FULL_MODEL_DIR = FULL_MODEL  # <run>/full/checkpoint: one model trained on the whole source corpus
PREDICTIONS_CSV = "predictions.csv"
MATRIX_CSV, MATRIX_JSON, MATRIX_PNG = "matrix.csv", "matrix.json", "matrix.png"
STANDARD_PAIRS: tuple[tuple[str, str], ...] = (("EMODB", "RAVDESS"), ("EMODB", "IEMOCAP"), ("IEMOCAP", "RAVDESS"))  # both directions
_FEATURE_CONFIG_KEYS = {f.name for f in dataclasses.fields(FeatureConfig)}


class EvaluationMode(StrEnum):
    FOLD_ENSEMBLE = "fold_ensemble"
    SINGLE = "single"

    @classmethod
    def parse(cls, name: str) -> EvaluationMode:
        try:
            return cls(str(name).lower())
        except ValueError:
            raise UnknownNameError("evaluation mode", name, [m.value for m in cls]) from None


class TargetNormalization(StrEnum):
    SOURCE = "source"
    TARGET = "target"
    PER_SPEAKER = "per_speaker"

    @classmethod
    def parse(cls, name: str) -> TargetNormalization:
        try:
            return cls(str(name).lower())
        except ValueError:
            raise UnknownNameError("cross-corpus normalization", name, [m.value for m in cls]) from None


MODE_DESCRIPTIONS = {
    EvaluationMode.FOLD_ENSEMBLE: "every fold's model of the source k-fold run, class probabilities averaged",
    EvaluationMode.SINGLE: "one model (trained on the whole source corpus, or the checkpoint folder given)",
}
NORMALIZATION_DESCRIPTIONS = {
    TargetNormalization.SOURCE: "source training statistics",
    TargetNormalization.TARGET: "target corpus statistics (transductive, unlabelled)",
    TargetNormalization.PER_SPEAKER: "each target speaker's own statistics (transductive, unlabelled; for models trained per speaker)",
}


@dataclass(frozen=True)
class EvaluationConfig:
    source_run: str  # runs/<name> (fold_*/checkpoint, or full/checkpoint for mode single) or a checkpoint folder
    target_features: str  # a stored feature dataset (or version) folder of the target corpus
    mode: str = EvaluationMode.FOLD_ENSEMBLE.value  # fold_ensemble | single
    normalization: str = TargetNormalization.SOURCE.value  # source | target
    mapping_file: str | None = None  # YAML/JSON {from: to} on top of the default mapping
    out: str | None = None  # default <source run>/cross_<TARGET>[_<mode>][_target-norm][_map-<file>]

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", EvaluationMode.parse(self.mode))
        object.__setattr__(self, "normalization", TargetNormalization.parse(self.normalization))


# ------------------------------------------------------------------------------------ the evaluator


class CrossCorpusEvaluator:
    """Source checkpoints loaded once; `evaluate` scores them on a target corpus's stored features."""

    def __init__(self, source_run: Path | str, *, mode: EvaluationMode | str = EvaluationMode.FOLD_ENSEMBLE,
                 device: str = "cpu", batch_size: int = 32):
        self.source_run = Path(source_run)
        self.mode = EvaluationMode.parse(mode)
        self.device = torch.device(device)
        self.batch_size = batch_size
        try:
            self.ensemble = Ensemble.load(checkpoint_folders(self.source_run, self.mode), device=self.device,
                                          batch_size=batch_size, source=str(self.source_run))
        except ModelLoadError as exc:
            if "differs from" not in str(exc):
                raise
            raise ConfigError(f"{exc} (evaluate one checkpoint with mode='single' instead)") from exc
        self.members = self.ensemble.members
        first = self.members[0]
        self.labels = list(first.loaded.labels)
        self.feature_config = dict(first.loaded.feature_config)
        self.run_config = _run_config(self.source_run)
        self.corpus = str(first.loaded.meta.get("corpus") or self.run_config.get("feature_metadata", {}).get("corpus") or "?")
        self.training_normalization = sorted({str(m.loaded.meta.get("normalization", "train_global")) for m in self.members})
        logger.info("loaded %d %s checkpoint(s) of %s (%s)", len(self.members), self.corpus, self.source_run, ",".join(self.labels))

    def describe(self) -> dict:
        """The source side, for reports."""
        return {
            "run": str(self.source_run), "corpus": self.corpus, "mode": self.mode.value, "n_models": len(self.members),
            "checkpoints": [str(m.path) for m in self.members], "labels": self.labels,
            "feature_config": self.feature_config, "training_normalization": self.training_normalization,
        }

    def source_probabilities(self, features: Sequence[np.ndarray], *, standardizer: Standardizer | None = None) -> np.ndarray:
        """(n_models, N, C) class probabilities of each source model, in the source label order (the one
        inference path, `Ensemble`).

        `standardizer` None: each model normalises with its own stored training statistics; otherwise
        every model gets the features normalised with the one given (e.g. target-corpus statistics).
        """
        return self.ensemble.member_probabilities(features, override=standardizer)

    def evaluate(self, target_features: Path | str, *, normalization: TargetNormalization | str = TargetNormalization.SOURCE,
                 mapping: LabelMapping | None = None) -> dict:
        """Score the source models on every target utterance that has a counterpart class; plain JSON types."""
        normalization = TargetNormalization.parse(normalization)
        if normalization is TargetNormalization.SOURCE and "per_corpus" in self.training_normalization:
            raise ConfigError(
                f"{self.source_run} was trained with per_corpus normalisation (each corpus by its own statistics): score the "
                "target with normalization='target' (the target corpus's own statistics, transductive and unlabelled)"
            )
        if normalization is TargetNormalization.SOURCE and self.ensemble.needs_input_statistics:
            raise ConfigError(
                f"{self.source_run} was trained with per-speaker normalisation: its stored training statistics are not "
                "what the model saw; score the target with normalization='per_speaker' (each target speaker's own "
                "statistics) or 'target'"
            )
        mapping = mapping or LabelMapping()
        table = load_features(target_features)
        self.check_features(table)
        target_corpus = str(table.metadata.get("corpus") or table.meta["corpus"].iloc[0])
        _refuse_pool_member(self.source_run, target_corpus)
        target_labels = table.meta["label"].astype(str).tolist()
        common = common_label_space(self.labels, set(target_labels), mapping)
        if len(common) < 2:
            raise ConfigError(
                f"{self.corpus} labels {self.labels} and {target_corpus} labels {sorted(set(target_labels))} share "
                f"{common or 'no'} class(es) under the mapping ({mapping.source}); a cross-corpus score needs at least two"
            )
        shared_true = map_labels(target_labels, mapping)
        keep = np.array([i for i, label in enumerate(shared_true) if label in common], dtype=np.int64)
        removed = removed_counts(target_labels, common, mapping)

        kept_features = [table.features[i] for i in keep]
        standardizer = None
        if normalization is TargetNormalization.TARGET:
            standardizer = Standardizer.fit(table.features)
        elif normalization is TargetNormalization.PER_SPEAKER:
            speakers = table.meta["speaker"].astype(str).tolist()
            normalised = normalise_per_speaker(table.features, speakers)  # a speaker's left-out utterances count too
            kept_features = [normalised[i] for i in keep]
            standardizer = Standardizer.identity(table.dim)
        probabilities = self.source_probabilities(kept_features, standardizer=standardizer)  # (M, N, C)
        ensemble = probabilities.mean(axis=0)
        merged = merge_probabilities(ensemble, self.labels, common, mapping)  # (N, K)
        true = [shared_true[i] for i in keep]
        pred = [common[k] for k in merged.argmax(axis=1)]
        members = []
        for member, member_probs in zip(self.members, probabilities, strict=True):
            member_pred = [common[k] for k in merge_probabilities(member_probs, self.labels, common, mapping).argmax(axis=1)]
            scores = classification_report(true, member_pred, common)
            members.append({"fold": member.name, "checkpoint": str(member.path), "n_test": scores["n"],
                            "uar": scores["uar"], "war": scores["war"], "macro_f1": scores["macro_f1"]})

        meta = table.meta.iloc[keep]
        predictions = [
            {"utterance_id": uid, "speaker": speaker, "label": label, "true": t, "pred": p,
             **{f"p_{c}": float(v) for c, v in zip(common, row, strict=True)},
             **{f"source_p_{c}": float(v) for c, v in zip(self.labels, source_row, strict=True)}}
            for uid, speaker, label, t, p, row, source_row in zip(
                meta["utterance_id"], meta["speaker"], meta["label"], true, pred, merged, ensemble, strict=True)
        ]
        outside = np.clip(1.0 - merged.sum(axis=1), 0.0, 1.0)  # (N,) mass of source classes left out
        return {
            "source": self.describe(),
            "target": {"features": str(table.path), "corpus": target_corpus, "dataset_name": table.metadata.get("dataset_name"),
                       "n_utterances": len(target_labels), "label_counts": {k: int(v) for k, v in sorted(pd.Series(target_labels).value_counts().items())},
                       "skipped": list(table.metadata.get("skipped") or [])},
            "mode": self.mode.value,
            "normalization": normalization.value,
            "normalization_description": NORMALIZATION_DESCRIPTIONS[normalization],
            "mapping": mapping.to_dict(),
            "common_labels": common,
            "source_classes_left_out": left_out_source_classes(self.labels, common, mapping),
            "removed": removed,
            "n_removed": int(sum(removed.values())),
            "removed_utterances": [
                {"utterance_id": uid, "label": label, "shared_label": mapping.shared(label)}
                for uid, label in zip(table.meta["utterance_id"], target_labels, strict=True) if mapping.shared(label) not in common
            ],
            "mean_probability_outside_common": float(outside.mean()) if len(outside) else 0.0,
            "report": classification_report(true, pred, common),
            "members": members,
            "predictions": predictions,
        }

    def check_features(self, table: FeatureTable) -> None:
        """ConfigError unless `table` was computed with the source's feature config (and has its dimension)."""
        _check_compatible(self.feature_config, table.metadata, source=self.source_run, target=table.path)
        input_dim = self.members[0].loaded.model.config.input_dim
        if table.dim != input_dim:
            raise ConfigError(f"target features {table.path} are {table.dim}-dim, but the source models ({self.source_run}) take {input_dim}")


def _check_compatible(source_config: Mapping, target_metadata: Mapping, *, source: object, target: object) -> None:
    target_config = (target_metadata.get("feature_config") or {}) | {"encoder": target_metadata.get("encoder") or {}}
    differences = feature_config_differences(source_config, target_config)
    if differences:
        raise ConfigError(
            f"target features {target} were not computed like the source's ({source}): "
            + "; ".join(f"{what}: source {a!r}, target {b!r}" for what, a, b in differences)
            + ". Extract the target corpus with the source run's feature config."
        )


def check_pair(source_run: Path | str, target_features: Path | str, *, mode: EvaluationMode | str = EvaluationMode.FOLD_ENSEMBLE) -> None:
    """Cheap checks before any actor starts (checkpoint folders, feature configs); reads JSON files only."""
    folders = checkpoint_folders(Path(source_run), EvaluationMode.parse(mode))
    source_config = json.loads((folders[0][1] / META_FILE).read_text()).get("feature_config") or {}
    directory = resolve_version(target_features)
    metadata = read_metadata(directory)
    if metadata and metadata.get("feature_config"):  # otherwise load_features says what is wrong
        _check_compatible(source_config, metadata, source=source_run, target=directory)
    if metadata and metadata.get("corpus"):
        _refuse_pool_member(source_run, str(metadata["corpus"]))


def pool_corpora(source_run: Path | str) -> list[str]:
    """The corpora a source run pooled for training (run_config.json), [] for a single-corpus run."""
    pool = (_run_config(Path(source_run)).get("feature_metadata") or {}).get("pool") or {}
    return [str(c) for c in pool.get("corpora") or []]


def _refuse_pool_member(source_run: Path | str, target_corpus: str) -> None:
    members = pool_corpora(source_run)
    if target_corpus in members:
        raise ConfigError(
            f"{source_run} was trained on the pool {'+'.join(members)}, which holds {target_corpus}: its utterances were training "
            f"data, so this is no cross-corpus score; the run's own k-fold score on {target_corpus} is in its summary.json (per_corpus)"
        )


def in_pool_uar(source_run: Path | str, corpus: str) -> float:
    """The pooled run's k-fold test UAR on one of its corpora (summary.json per_corpus); NaN when there is none."""
    run = RunFolder.of(source_run)
    if run is None or not run.has_summary():
        return float("nan")
    value = ((run.read_summary().get("per_corpus") or {}).get(corpus) or {}).get("uar")
    return float(value) if value is not None else float("nan")


def feature_config_differences(source: Mapping, target: Mapping) -> list[tuple[str, object, object]]:
    """(what, source value, target value) for each way two stored feature configs differ: every setting
    that changes the numbers (`FeatureSpec.differences`; storage dtype and batch sizes do not count)."""
    from ser_dist.features.spec import FeatureSpec

    differences = FeatureSpec.from_json(dict(source)).differences(FeatureSpec.from_json(dict(target)))
    return [("feature type" if what == "feature_type" else what, a, b) for what, a, b in differences]


def checkpoint_folders(source: Path, mode: EvaluationMode) -> list[tuple[str, Path]]:
    """(name, checkpoint folder) of the models a mode uses; ModelLoadError says what is missing."""
    if not source.is_dir():
        raise ModelLoadError(f"{source}: no such folder; expected a run folder runs/<name> (or a checkpoint folder for mode 'single')")
    is_checkpoint = (source / META_FILE).is_file()
    if mode is EvaluationMode.SINGLE:
        if is_checkpoint:
            return [(source.parent.name if source.name == "checkpoint" else source.name, source)]
        full = RunFolder(source).full_checkpoint_dir
        if full.is_dir():
            return [(FULL_MODEL_DIR, full.local_path)]
        raise ModelLoadError(
            f"{source} has no {FULL_MODEL_DIR}/checkpoint (a model trained on the whole source corpus); pass a checkpoint "
            f"folder instead (e.g. {source / 'fold_0' / 'checkpoint'}) or use mode 'fold_ensemble'"
        )
    if is_checkpoint:
        raise ConfigError(f"{source} is one checkpoint folder; mode 'fold_ensemble' needs a run folder (fold_<k>/checkpoint/), or use mode 'single'")
    folds = RunFolder(source).fold_checkpoints()  # ModelLoadError names unfinished folds
    if not folds:
        raise ModelLoadError(f"{source} holds no fold_<k>/checkpoint/ folders: it is not a finished k-fold run")
    return [(name, checkpoint.local_path) for name, checkpoint in folds]


def _run_config(source: Path) -> dict:
    """run_config.json of the run that `source` (a run folder or a checkpoint folder inside one) belongs to."""
    run = RunFolder.of(source)
    return run.read_run_config() if run else {}


# ------------------------------------------------------------------------------------ reports


def cross_corpus_report(result: dict) -> dict:
    """An `evaluate` result -> the report dict `ser_dist.reporting.write_report` takes."""
    source, target = result["source"], result["target"]
    scores = result["report"]
    mode, normalization = EvaluationMode(result["mode"]), TargetNormalization(result["normalization"])
    protocol = {
        "protocol": "cross_corpus",
        "description": f"trained on {source['corpus']}, tested on every {target['corpus']} utterance with a counterpart class",
        "speaker_independent": True,  # different corpora: no speaker is on both sides
        "source_corpus": source["corpus"],
        "source_run": source["run"],
        "target_corpus": target["corpus"],
        "target_features": target["features"],
        "mode": mode.value,
        "mode_description": MODE_DESCRIPTIONS[mode],
        "n_models": source["n_models"],
        "normalization": NORMALIZATION_DESCRIPTIONS[normalization],
        "source_training_normalization": ", ".join(source["training_normalization"]),
        "mapping": result["mapping"]["source"],
        "mapping_table": result["mapping"]["table"],
        "common_labels": result["common_labels"],
        "source_classes_left_out": result["source_classes_left_out"],
        "removed_utterances": result["n_removed"],
        "removed_by_label": result["removed"],
    }
    summary = {
        "uar": scores["uar"], "war": scores["war"], "macro_f1": scores["macro_f1"], "n": scores["n"],
        "n_target": target["n_utterances"], "n_removed": result["n_removed"], "n_models": source["n_models"],
        "mean_probability_outside_common": result["mean_probability_outside_common"],
    }
    skipped = [
        {"path": item["utterance_id"], "reason": f"label {item['label']!r} maps to {item['shared_label']!r}, which "
         f"{source['corpus']} has no counterpart for", "stage": "label mapping"}
        for item in result["removed_utterances"]
    ]
    skipped += [{"path": item.get("path"), "reason": item.get("reason"), "stage": "target extract"} for item in target["skipped"]]
    return {
        "title": f"cross-corpus {source['corpus']} -> {target['corpus']}: {mode.value}, {normalization.value} normalisation",
        "protocol": protocol,
        "summary": summary,
        "per_class": scores["per_class"],
        "confusion": scores["confusion"],
        "labels": scores["labels"],
        "folds": result["members"],
        "config": {"source": source, "target": {k: v for k, v in target.items() if k != "skipped"}, "mapping": result["mapping"]},
        "skipped": skipped,
    }


def write_cross_corpus_outputs(out_dir: Path | str, result: dict) -> dict:
    """report.json/.xlsx, confusion.png and predictions.csv of one evaluation; returns the report dict."""
    from ser_dist.reporting import write_report  # matplotlib/openpyxl load only when a report is written

    out_dir = Path(out_dir)
    report = cross_corpus_report(result)
    report["config"]["out"] = str(out_dir)
    write_report(out_dir, report)
    pd.DataFrame(result["predictions"]).to_csv(out_dir / PREDICTIONS_CSV, index=False)
    return report


def default_out_dir(source_run: Path | str, target_corpus: str, *, mode: EvaluationMode | str, normalization: TargetNormalization | str,
                    mapping_file: str | None = None) -> Path:
    """<run>/cross_<TARGET>, with a suffix per non-default choice so that evaluations never overwrite each other."""
    name = report_dir_name(target_corpus, mode=mode, normalization=normalization, mapping_file=mapping_file)
    source = Path(source_run)
    base = source.parent if (source / META_FILE).is_file() else source  # never write into a checkpoint folder
    return base / name


def report_dir_name(target_corpus: str, *, mode: EvaluationMode | str, normalization: TargetNormalization | str,
                    mapping_file: str | None = None) -> str:
    """`cross_<TARGET>[_<mode>][_<normalization>-norm][_map-<file>]` (defaults left out)."""
    mode, normalization = EvaluationMode.parse(mode), TargetNormalization.parse(normalization)
    name = f"cross_{target_corpus}"
    if mode is not EvaluationMode.FOLD_ENSEMBLE:
        name += f"_{mode.value}"
    if normalization is not TargetNormalization.SOURCE:
        name += f"_{normalization.value}-norm"
    if mapping_file:
        name += f"_map-{Path(mapping_file).stem}"
    return name


# ------------------------------------------------------------------------------------ Ray entry points


def _start_evaluator(source_run: str, mode: EvaluationMode):
    import ray

    from ser_dist.ray_runtime import cluster_has_gpu

    gpu = cluster_has_gpu()
    actor_class = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0)(CrossCorpusEvaluator)
    return actor_class.remote(source_run, mode=mode, device="cuda" if gpu else "cpu")


def evaluate_cross_corpus(config: EvaluationConfig) -> dict:
    """Score a source run on a target corpus in a Ray actor; writes the report files and returns the report dict.

    `source_run` and `out` may be URIs (s3://…): the run is fetched into a local mirror (Ray's own
    storage left out), and the report files are uploaded next to it (or to `out`) afterwards.
    """
    source = as_location(config.source_run)
    if source.is_local:
        return _evaluate_cross_corpus(config)
    staged_root = source.parent if (source / META_FILE).is_file() else source  # reports go beside a checkpoint folder
    with StagedDirectory(staged_root, exclude=("ray",)) as staged:
        local_source = staged.local if staged_root == source else staged.local / source.name
        return _evaluate_cross_corpus(dataclasses.replace(config, source_run=str(local_source)))


def _evaluate_cross_corpus(config: EvaluationConfig) -> dict:
    import ray

    from ser_dist.ray_runtime import ensure_ray

    check_pair(config.source_run, config.target_features, mode=config.mode)  # fails here, before an actor starts
    mapping = load_mapping(config.mapping_file) if config.mapping_file else LabelMapping()
    ensure_ray()
    evaluator = _start_evaluator(config.source_run, config.mode)
    try:
        result = ray.get(evaluator.evaluate.remote(config.target_features, normalization=config.normalization, mapping=mapping))
    finally:
        ray.kill(evaluator)
    if config.out and not as_location(config.out).is_local:
        out = as_location(config.out)
        with StagedDirectory(out) as staged_out:
            report = write_cross_corpus_outputs(staged_out.local, result)
    else:
        out = Path(config.out) if config.out else default_out_dir(
            config.source_run, result["target"]["corpus"], mode=config.mode, normalization=config.normalization, mapping_file=config.mapping_file
        )
        report = write_cross_corpus_outputs(out, result)
    logger.info("%s: UAR %.3f WAR %.3f on %d utterances (%d removed by the mapping) -> %s",
                report["title"], report["summary"]["uar"], report["summary"]["war"], report["summary"]["n"], result["n_removed"], out)
    return report


def in_corpus_uar(source_run: Path | str) -> float:
    """Pooled test UAR of the source run's own k-fold evaluation (summary.json); NaN when there is none."""
    run = RunFolder.of(source_run)
    if run is None or not run.has_summary():
        return float("nan")
    value = run.read_summary().get("uar")
    return float(value) if value is not None else float("nan")


def cross_corpus_matrix(source_runs: Mapping[str, str], target_features: Mapping[str, str], out_dir: Path | str, *,
                        mode: EvaluationMode | str = EvaluationMode.FOLD_ENSEMBLE,
                        normalization: TargetNormalization | str = TargetNormalization.SOURCE,
                        mapping_file: str | None = None) -> pd.DataFrame:
    """UAR of every source run (rows) on every target corpus (columns); writes matrix.csv/.json/.png.

    Off-diagonal cells are cross-corpus evaluations (one report folder `<SOURCE>_to_<TARGET>` each); a
    diagonal cell (source name == target name) is the source run's in-corpus k-fold pooled UAR from its
    summary.json, over its own full label set, and is labelled as such in matrix.json and the heatmap.
    A source may be a run trained on a pool (named e.g. `EMODB+RAVDESS`); its cell for a corpus inside the pool
    is the run's own k-fold UAR on that corpus (summary.json per_corpus), never a cross-corpus evaluation.
    One actor per source loads its checkpoints once and scores all its targets.
    """
    import ray

    from ser_dist.ray_runtime import ensure_ray
    from ser_dist.reporting import heatmap_png

    mode, normalization = EvaluationMode.parse(mode), TargetNormalization.parse(normalization)
    if not source_runs or not target_features:
        raise ConfigError("cross_corpus_matrix needs at least one source run and one target feature folder")
    inside = {source: set(pool_corpora(run)) for source, run in source_runs.items()}  # in-pool targets: k-fold scores
    for source, run in source_runs.items():
        for target, features in target_features.items():
            if target != source and target not in inside[source]:
                check_pair(run, features, mode=mode)
    mapping = load_mapping(mapping_file) if mapping_file else LabelMapping()
    out_dir = Path(out_dir)
    ensure_ray()
    matrix = pd.DataFrame(np.nan, index=pd.Index(list(source_runs), name="source"), columns=pd.Index(list(target_features), name="target"))
    cells: dict[str, dict[str, dict]] = {s: {} for s in source_runs}
    pending = {}
    try:
        for source, run in source_runs.items():  # actors queue for CPUs; each is killed once its targets are scored
            targets = [t for t in target_features if t != source and t not in inside[source]]
            if targets:
                actor = _start_evaluator(run, mode)
                pending[source] = (actor, {t: actor.evaluate.remote(target_features[t], normalization=normalization, mapping=mapping)
                                           for t in targets})
        for source, run in source_runs.items():
            if source in target_features:
                matrix.loc[source, source] = in_corpus_uar(run)
                cells[source][source] = {"kind": "in-corpus k-fold pooled UAR (summary.json), all source classes", "run": str(run),
                                         "uar": _finite(matrix.loc[source, source])}
            for member in sorted(inside[source] & set(target_features)):
                matrix.loc[source, member] = in_pool_uar(run, member)
                cells[source][member] = {"kind": "in-pool k-fold UAR on this corpus (summary.json per_corpus): the pooled run's own "
                                                 "test folds, on the pool's classes", "run": str(run), "uar": _finite(matrix.loc[source, member])}
            if source not in pending:
                continue
            actor, refs = pending[source]
            for target, ref in refs.items():
                result = ray.get(ref)
                folder = out_dir / f"{source}_to_{target}"
                report = write_cross_corpus_outputs(folder, result)
                matrix.loc[source, target] = report["summary"]["uar"]
                cells[source][target] = {
                    "kind": "cross-corpus", "run": str(run), "report": str(folder), "uar": report["summary"]["uar"],
                    "war": report["summary"]["war"], "n": report["summary"]["n"], "n_removed": report["summary"]["n_removed"],
                    "labels": report["labels"],
                }
            ray.kill(pending.pop(source)[0])  # frees its CPU for a source still waiting
    finally:
        for actor, _ in pending.values():
            ray.kill(actor)

    out_dir.mkdir(parents=True, exist_ok=True)
    matrix.to_csv(out_dir / MATRIX_CSV)
    (out_dir / MATRIX_JSON).write_text(json.dumps({
        "metric": "uar",
        "rows": "source (trained on)", "columns": "target (tested on)",
        "diagonal": "in-corpus: the source run's own k-fold pooled test UAR (summary.json), not a cross-corpus score",
        "in_pool": "a pooled source's cells for its own corpora are its k-fold UAR on each (summary.json per_corpus), not cross-corpus",
        "mode": mode.value, "normalization": NORMALIZATION_DESCRIPTIONS[normalization], "mapping": mapping.to_dict(),
        "uar": {s: {t: _finite(v) for t, v in row.items()} for s, row in matrix.iterrows()},
        "cells": cells,
    }, indent=2, allow_nan=False))
    heatmap_png(out_dir / MATRIX_PNG, matrix * 100.0, fmt=".1f",
                title=f"UAR % (diagonal: in-corpus k-fold)\n{mode.value}, {normalization.value} normalisation")
    logger.info("cross-corpus UAR matrix (%d sources x %d targets) -> %s", *matrix.shape, out_dir)
    return matrix


def _finite(value: object) -> float | None:
    """A float for JSON: NaN (a pair never evaluated, a run without summary.json) -> None."""
    value = float(value)
    return value if np.isfinite(value) else None


# ------------------------------------------------------------------------------------ CLI helper


def target_features_path(features_root: Path | str | None, source_run: Path | str, target_corpus: str) -> str:
    """The target corpus's stored features made with the source run's feature config (same type, same version).

    `features_root` None: the feature store the source run was trained from (run_config.json
    "features" = <root>/<TYPE>/<DATASET>/v_<hash>). Raises FeatureStoreError naming the extract
    command when the target has not been extracted with that config.
    """
    from ser_dist.corpora import corpus_name

    source_run = Path(source_run)
    run_config = _run_config(source_run)
    stored = (run_config.get("feature_metadata") or {}).get("feature_config")
    if not stored:  # a checkpoint folder, or a run without run_config.json
        _, folder = checkpoint_folders(source_run, EvaluationMode.SINGLE if (source_run / META_FILE).is_file() else EvaluationMode.FOLD_ENSEMBLE)[0]
        stored = json.loads((folder / META_FILE).read_text()).get("feature_config")
    if not stored or "feature_type" not in stored:
        raise ConfigError(f"{source_run}: no feature config in run_config.json or checkpoint.json; pass the target feature folder directly")
    config = FeatureConfig.from_dict({k: v for k, v in stored.items() if k in _FEATURE_CONFIG_KEYS})
    if features_root is None:
        if not run_config.get("features"):
            raise ConfigError(f"{source_run}: run_config.json does not say where its features are; pass features_root (--features-dir)")
        features_root = as_location(run_config["features"]).parents[2]
    corpus = corpus_name(target_corpus)
    path = version_dir(features_root, config, corpus)
    if not path.is_dir():
        command = f"ser-dist extract --corpus {corpus} --features {config.feature_type.value} --out {features_root}"
        if config.feature_type.uses_encoder:
            command += f" --ssl-model {config.ssl.model} --ssl-layer {','.join(str(x) for x in config.ssl.layers)}"
        raise FeatureStoreError(f"no {corpus} features with the source run's feature config at {path}; extract them first: {command}")
    return str(path)
