"""The library calls behind the CLI and the Ray job entrypoints: prepare a corpus, extract features."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ser_dist.corpora import corpus_name, corpus_root, prepare_with_report, reader_options
from ser_dist.corpora.base import OnError
from ser_dist.features.config import FeatureConfig, FeatureType, LogMelConfig, MfccConfig, SSLConfig
from ser_dist.features.extract import ExtractionOptions, ExtractionResult, extract_features

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareConfig:
    corpus: str = "EMODB"
    data_root: str = "data/raw"  # holds emodb/, ravdess/, iemocap/ in their published layouts
    out: str = "data/manifests"
    on_error: OnError = "raise"
    iemocap_label_set: str = "four"
    label_map: str | None = None  # table:PATH corpora: JSON/YAML {their_label: canonical_label}


@dataclass(frozen=True)
class ExtractConfig:
    corpus: str = "EMODB"
    features: str = "LOGMEL"
    data_root: str = "data/raw"
    out: str = "data/features"
    ssl_model: str = SSLConfig.model
    ssl_layers: tuple[int, ...] = SSLConfig.layers
    storage_dtype: str = "float32"
    trim_db: float | None = None  # trim leading/trailing audio this many dB below the loudest frame
    deltas: int = 0  # LOGMEL/MFCC: 1 appends deltas, 2 deltas + delta-deltas
    fixed_seconds: float | None = None  # centre-pad/crop every signal to this length (TIM-Net's protocol)
    n_mfcc: int = MfccConfig.n_mfcc
    logmel: LogMelConfig = field(default_factory=LogMelConfig)  # window/hop/bands of LOGMEL, MFCC, FUSION
    on_error: OnError = "skip"  # bad files are skipped and listed in metadata.json
    iemocap_label_set: str = "four"
    label_map: str | None = None  # table:PATH corpora: JSON/YAML {their_label: canonical_label}
    extraction: ExtractionOptions = field(default_factory=ExtractionOptions)

    def feature_config(self) -> FeatureConfig:
        return FeatureConfig(
            feature_type=FeatureType.parse(self.features),
            ssl=SSLConfig(model=self.ssl_model, layers=tuple(self.ssl_layers)),
            storage_dtype=self.storage_dtype,
            trim_db=self.trim_db,
            mfcc=MfccConfig(n_mfcc=self.n_mfcc),
            logmel=self.logmel,
            deltas=self.deltas,
            fixed_seconds=self.fixed_seconds,
        )


def prepare_corpus(config: PrepareConfig) -> tuple[pd.DataFrame, Path]:
    """Write `<out>/<CORPUS>.parquet` (the manifest) and `<CORPUS>.prepare_report.json`."""
    corpus = corpus_name(config.corpus)  # a table's manifest name for table:PATH
    options = reader_options(config.corpus, iemocap_label_set=config.iemocap_label_set, label_map=config.label_map)
    manifest, report = prepare_with_report(config.corpus, corpus_root(config.data_root, config.corpus), on_error=config.on_error, **options)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest.to_parquet(out / f"{corpus}.parquet", index=False)
    (out / f"{corpus}.prepare_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    logger.info("%s: %d utterances, %d skipped -> %s", corpus, len(manifest), len(report.skipped), out / f"{corpus}.parquet")
    return manifest, out / f"{corpus}.parquet"


def extract(config: ExtractConfig) -> ExtractionResult:
    """Prepare the corpus and extract its features into the Parquet store (resumable)."""
    corpus = corpus_name(config.corpus)  # a table's manifest name for table:PATH
    options = reader_options(config.corpus, iemocap_label_set=config.iemocap_label_set, label_map=config.label_map)
    manifest, report = prepare_with_report(config.corpus, corpus_root(config.data_root, config.corpus), on_error=config.on_error, **options)
    for item in report.skipped:
        logger.warning("prepare skipped %s: %s", item.path, item.reason)
    result = extract_features(manifest, config.feature_config(), config.out, corpus=corpus, options=config.extraction)
    if report.skipped:  # files the reader refused are listed beside the ones the audio loader refused
        from ser_dist.features.store import read_metadata, write_metadata

        metadata = read_metadata(result.directory)
        metadata["prepare_skipped"] = report.to_dict()["skipped"]
        write_metadata(result.directory, metadata)
    return result
