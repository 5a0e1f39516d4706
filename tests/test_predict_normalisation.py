"""The model carries its normalisation: a Predictor reproduces a fold's test probabilities (global and
per-speaker runs), refuses a per-speaker model's input without speaker statistics, and says what it used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ser_dist.audio import load_audio
from ser_dist.corpora.emodb import parse_emodb_name
from ser_dist.errors import SpeakerStatisticsError
from ser_dist.features.compute import FeatureComputer
from ser_dist.features.config import FeatureConfig, FeatureType
from ser_dist.prediction import Predictor, predict_paths
from ser_dist.training.checkpoint import save_checkpoint
from ser_dist.training.config import ModelOptions, TrainConfig
from ser_dist.training.data import normalise
from ser_dist.training.loop import FoldData, fit_fold

TEST_SPEAKER = "03"


def _files(emodb_root: Path) -> list[Path]:
    """Test part: every file of speaker 03 (as in LOSO); train/val: a few files of two other speakers."""
    wav = emodb_root / "wav"
    test = sorted(wav.glob(f"{TEST_SPEAKER}*.wav"))[:12]
    others = sorted(wav.glob("08*.wav"))[::3][:14] + sorted(wav.glob("09*.wav"))[::3][:8]
    return others + test


def _fold_run(files: list[Path], directory: Path, normalization: str, corpora: list[str] | None = None) -> tuple[Path, pd.DataFrame]:
    """One fold trained exactly as a k-fold worker does it (normalise -> fit_fold -> checkpoint); returns
    the checkpoint and the test predictions a run writes to predictions.csv."""
    meta = [parse_emodb_name(f) for f in files]
    labels = sorted({m["label"] for m in meta})
    config = FeatureConfig(feature_type=FeatureType.MFCC, deltas=1)
    features = FeatureComputer(config).compute([load_audio(f) for f in files])
    speakers = [m["speaker"] for m in meta]
    positions = np.arange(len(files))
    test = np.array([i for i, s in enumerate(speakers) if s.endswith(TEST_SPEAKER)])
    rest = np.setdiff1d(positions, test)
    train, val = rest[:-6], rest[-6:]
    normalised, standardizer = normalise(features, speakers, train_positions=train, mode=normalization, corpora=corpora)
    y = np.array([labels.index(m["label"]) for m in meta])
    data = FoldData(labels, normalised, y, [str(f) for f in files], train, val, test, standardizer)
    train_config = TrainConfig(epochs=2, normalization=normalization, model=ModelOptions(width=8, n_blocks=2, time_pool=4))
    outcome = fit_fold(data, train_config)
    save_checkpoint(directory, model_config=outcome.model_config, state_dict=outcome.best_state, standardizer=standardizer,
                    labels=labels, feature_config=config.to_dict() | {"encoder": {}}, extra={"normalization": normalization})
    return directory, pd.DataFrame(outcome.test_predictions)


@pytest.mark.parametrize("normalization", ["train_global", "per_speaker"])
def test_predictor_reproduces_the_folds_test_probabilities(emodb_root, tmp_path, normalization):
    files = _files(emodb_root)
    checkpoint, predictions = _fold_run(files, tmp_path / "checkpoint", normalization)
    predictor = Predictor.from_dir(checkpoint)
    test_files = [Path(p) for p in predictions["utterance_id"]]
    speakers = [parse_emodb_name(f)["speaker"] for f in test_files] if normalization == "per_speaker" else None
    got = predictor.predict_files(test_files, speakers=speakers)
    expected = predictions[[f"p_{c}" for c in predictor.labels]].to_numpy()
    np.testing.assert_allclose([list(p.probabilities.values()) for p in got], expected, atol=1e-5)
    assert {p.normalization for p in got} == {normalization}


def test_per_speaker_model_needs_speakers_enrolment_or_utterance(emodb_root, tmp_path):
    files = _files(emodb_root)
    checkpoint, predictions = _fold_run(files, tmp_path / "checkpoint", "per_speaker")
    predictor = Predictor.from_dir(checkpoint)
    test_files = [Path(p) for p in predictions["utterance_id"]]
    with pytest.raises(SpeakerStatisticsError, match="speakers=.*enroll.*utterance"):
        predictor.predict_file(test_files[0])

    # enrolment with the speaker's unlabelled files gives the same statistics as naming the speaker of each input
    predictor.enroll("EMODB_03", test_files)
    one = predictor.predict_file(test_files[0], speaker="EMODB_03")
    expected = predictions.iloc[0][[f"p_{c}" for c in predictor.labels]].to_numpy(float)
    np.testing.assert_allclose(list(one.probabilities.values()), expected, atol=1e-5)
    assert one.normalization == "per_speaker" and one.speaker == "EMODB_03"

    loose = Predictor.from_dir(checkpoint, normalization="utterance")
    guess = loose.predict_file(test_files[0])
    assert guess.normalization == "utterance"
    assert not np.allclose(list(guess.probabilities.values()), expected, atol=1e-5)  # a different normalisation

    # the command line: a CSV with a speaker column, or --normalization utterance, else a clear refusal
    table = tmp_path / "files.csv"
    pd.DataFrame({"path": [str(f) for f in test_files], "who": ["EMODB_03"] * len(test_files)}).to_csv(table, index=False)
    out = predict_paths([str(table)], str(checkpoint), speaker_column="who")
    np.testing.assert_allclose(out[[f"p_{c}" for c in predictor.labels]].to_numpy(float),
                               predictions[[f"p_{c}" for c in predictor.labels]].to_numpy(), atol=1e-5)
    assert set(out["normalization"]) == {"per_speaker"}
    with pytest.raises(SpeakerStatisticsError):
        predict_paths([str(test_files[0])], str(checkpoint))
    assert set(predict_paths([str(test_files[0])], str(checkpoint), normalization="utterance")["normalization"]) == {"utterance"}


def test_per_corpus_model_needs_its_corpus_statistics(emodb_root, tmp_path):
    """A pooled per_corpus model: the test speaker's corpus ("B") has no training rows, so it was normalised by its
    own frames. The Predictor refuses without group statistics (the stored training statistics are not what the
    model saw) and reproduces the fold's probabilities when every input is named with its corpus."""
    files = _files(emodb_root)
    corpora = ["B" if parse_emodb_name(f)["speaker"].endswith(TEST_SPEAKER) else "A" for f in files]
    checkpoint, predictions = _fold_run(files, tmp_path / "checkpoint", "per_corpus", corpora=corpora)
    predictor = Predictor.from_dir(checkpoint)
    test_files = [Path(p) for p in predictions["utterance_id"]]
    with pytest.raises(SpeakerStatisticsError, match="per_corpus.*corpus"):
        predictor.predict_files(test_files)
    got = predictor.predict_files(test_files, speakers=["B"] * len(test_files))
    expected = predictions[[f"p_{c}" for c in predictor.labels]].to_numpy()
    np.testing.assert_allclose([list(p.probabilities.values()) for p in got], expected, atol=1e-5)
    assert {p.normalization for p in got} == {"per_corpus"}
