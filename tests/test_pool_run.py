"""A tiny pooled run end to end on the Ray fixture (slow): leave-one-corpus-out over two synthetic corpora with
per_corpus normalisation, then the pooled run scored on a third corpus, refused on its own members, and in the matrix."""

from __future__ import annotations

import json

import pytest

from ser_dist.errors import ConfigError
from ser_dist.evaluation.cross_corpus import CrossCorpusEvaluator, check_pair, cross_corpus_matrix
from ser_dist.runs import RunFolder
from ser_dist.training.config import AugmentOptions, ModelOptions, TrainConfig
from ser_dist.training.kfold import KFoldConfig, run_kfold
from tests.test_pool import write_store

pytestmark = [pytest.mark.ray, pytest.mark.slow]

LABELS = ["angry", "sad", "neutral", "happy"] * 2


def tiny_train(**changes) -> TrainConfig:
    base = dict(epochs=1, batch_size=8, lr=5e-3, warmup_epochs=0, patience=None, class_weights=False,
                model=ModelOptions(width=8, n_blocks=2, time_pool=1, dropout=0.0, input_dropout=0.0),
                augment=AugmentOptions(time_masks=0, feature_masks=0, mixup_alpha=0.0, max_frames=None))
    return TrainConfig(**(base | changes))


def test_pooled_leave_one_corpus_out_run_and_cross_corpus(ray_cluster, tmp_path):
    emodb = write_store(tmp_path, "EMODB", {"03": LABELS, "08": LABELS, "09": LABELS}, offset=3.0)
    ravdess = write_store(tmp_path, "RAVDESS", {"01": LABELS + ["calm"] * 2, "02": LABELS, "03": LABELS}, offset=-3.0)
    tess = write_store(tmp_path, "TESS", {"OAF": LABELS, "YAF": LABELS})
    config = KFoldConfig(features_path=str(emodb), pool=(str(ravdess),), protocol="leave_one_corpus_out", out=str(tmp_path / "runs"),
                         val_fraction=0.34, train=tiny_train(normalization="per_corpus"))
    summary = run_kfold(config)
    assert summary["run"] == "EMODB+RAVDESS_LOGMEL_leave_one_corpus_out"
    assert summary["labels"] == ["angry", "happy", "neutral", "sad"]  # calm -> neutral under the default mapping
    assert set(summary["per_corpus"]) == {"EMODB", "RAVDESS"}
    assert summary["per_corpus"]["EMODB"]["n_test"] == 24 and summary["per_corpus"]["RAVDESS"]["n_test"] == 26
    assert summary["pool"]["corpora"] == ["EMODB", "RAVDESS"]
    # each fold's held-out corpus had no training rows: its own frames set its statistics, and the summary says so
    assert summary["normalization"]["transductive"] is True
    assert summary["normalization"]["own_statistics"] == {"0": ["EMODB"], "1": ["RAVDESS"]}
    run = RunFolder(tmp_path / "runs" / summary["run"])
    def corpus_of(ids) -> set[str]:
        return {i.split("_")[0] for i in ids}  # synthetic ids start with the corpus, lower-cased

    for record in run.read_folds().folds:
        assert len(corpus_of(record.test)) == 1 and not corpus_of(record.test) & corpus_of([*record.train, *record.val])
    checkpoint = json.loads((run.checkpoint_dir(0).local_path / "checkpoint.json").read_text())
    assert checkpoint["corpus"] == "EMODB+RAVDESS" and checkpoint["normalization"] == "per_corpus"

    # scored on a corpus outside the pool: with the target's own statistics; `source` statistics are refused
    evaluator = CrossCorpusEvaluator(run.location.local_path)
    result = evaluator.evaluate(str(tess), normalization="target")
    assert result["common_labels"] == ["angry", "happy", "neutral", "sad"] and result["report"]["n"] == 16
    with pytest.raises(ConfigError, match="per_corpus normalisation"):
        evaluator.evaluate(str(tess), normalization="source")
    # a corpus inside the pool was training data: refused, pointing at the run's per-corpus k-fold score
    with pytest.raises(ConfigError, match="holds EMODB"):
        check_pair(run.location.local_path, str(emodb))
    with pytest.raises(ConfigError, match="holds RAVDESS"):
        evaluator.evaluate(str(ravdess), normalization="target")
    matrix = cross_corpus_matrix({"EMODB+RAVDESS": str(run.location.local_path)}, {"EMODB": str(emodb), "TESS": str(tess)},
                                 tmp_path / "matrix", normalization="target")
    assert matrix.loc["EMODB+RAVDESS", "EMODB"] == pytest.approx(summary["per_corpus"]["EMODB"]["uar"])
    assert matrix.loc["EMODB+RAVDESS", "TESS"] == pytest.approx(result["report"]["uar"])
    cells = json.loads((tmp_path / "matrix" / "matrix.json").read_text())["cells"]["EMODB+RAVDESS"]
    assert cells["EMODB"]["kind"].startswith("in-pool") and cells["TESS"]["kind"] == "cross-corpus"


def test_pipeline_pools_two_table_corpora(ray_cluster, tmp_path):
    """`corpus: table:a.csv,table:b.csv` end to end: each table extracted into its own store, one pooled run."""
    from ser_dist.features.extract import ExtractionOptions
    from ser_dist.pipeline import PipelineConfig, run_pipeline
    from tests.conftest import write_tone

    tables = []
    for t, name in enumerate(("lab_a", "lab_b")):
        lines = ["path,label,speaker"]
        for s, speaker in enumerate(("s1", "s2", "s3")):
            for k, label in enumerate(("angry", "sad", "neutral")):
                wav = write_tone(tmp_path / name / f"{speaker}_{label}.wav", 0.4, freq=200 + 60 * k + 7 * s + 90 * t, seed=k + s)
                lines.append(f"{wav.name},{label},{speaker}")
        (tmp_path / name / f"{name}.csv").write_text("\n".join(lines) + "\n")
        tables.append(f"table:{tmp_path / name / f'{name}.csv'}")
    config = PipelineConfig(name="t", corpus=",".join(tables), protocol="leave_one_corpus_out", val_fraction=0.34,
                            features_out=str(tmp_path / "features"), runs_out=str(tmp_path / "runs"),
                            extraction=ExtractionOptions(num_workers=1), train=tiny_train())
    outputs = run_pipeline(config)
    assert len(outputs["features"]) == 2 and all("LAB_" in f for f in outputs["features"])
    assert set(outputs["summary"]["per_corpus"]) == {"LAB_A", "LAB_B"}
    assert outputs["summary"]["n_test"] == 18 and outputs["run"].endswith("t_LAB_A+LAB_B_LOGMEL_leave_one_corpus_out")
