"""The main job: extract -> k-fold training on Ray Train -> reports (-> sweep and cross-corpus, when configured)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ser_dist.api import ExtractConfig, extract
from ser_dist.corpora import corpus_name
from ser_dist.features.config import DEFAULT_SSL_MODEL
from ser_dist.features.extract import ExtractionOptions
from ser_dist.training.config import TrainConfig
from ser_dist.training.kfold import KFoldConfig, format_summary_table, run_kfold

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "pipeline"
    corpus: str = "EMODB"
    data_root: str = "data/raw"
    features: str = "LOGMEL"  # LOGMEL | HUBERT | FUSION
    ssl_model: str = DEFAULT_SSL_MODEL
    ssl_layers: tuple[int, ...] = (-1,)
    features_out: str = "data/features"
    runs_out: str = "runs"
    extraction: ExtractionOptions = field(default_factory=ExtractionOptions)
    protocol: str = "loso"
    n_folds: int | None = None
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)


def run_pipeline(config: PipelineConfig) -> dict:
    corpus = corpus_name(config.corpus)
    extraction = extract(
        ExtractConfig(
            corpus=corpus, features=config.features, data_root=config.data_root, out=config.features_out,
            ssl_model=config.ssl_model, ssl_layers=config.ssl_layers, extraction=config.extraction,
        )
    )
    logger.info("features: %s (%d extracted now, %d already stored, %d skipped)", extraction.directory,
                extraction.n_extracted, extraction.n_already_done, len(extraction.skipped))
    kfold = KFoldConfig(
        features_path=str(extraction.directory), protocol=config.protocol, n_folds=config.n_folds, seed=config.seed,
        out=config.runs_out, name=f"{config.name}_{corpus}_{config.features}_{config.protocol}", train=config.train,
    )
    summary = run_kfold(kfold)
    run_dir = Path(config.runs_out) / kfold.run_name("")
    outputs = {"features": str(extraction.directory), "run": str(run_dir), "summary": summary}
    outputs["reports"] = [str(p) for p in sorted(run_dir.glob("report.*")) + sorted(run_dir.glob("*.png"))]
    print(format_summary_table(summary))
    print(f"run folder: {run_dir.resolve()}")
    for path in outputs.get("reports", []):
        print(f"report: {Path(path).resolve()}")
    (run_dir / "pipeline.json").write_text(json.dumps({k: v for k, v in outputs.items() if k != "summary"}, indent=2))
    return outputs
