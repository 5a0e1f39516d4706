"""Prediction: a tiny LOGMEL model trained here (no Ray) on EMODB, checkpoints, folders, timelines."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from ser_dist.audio import TARGET_SAMPLE_RATE, load_audio
from ser_dist.corpora.emodb import parse_emodb_name
from ser_dist.errors import AudioError, ConfigError, ModelLoadError
from ser_dist.features.compute import FeatureComputer
from ser_dist.features.config import FeatureConfig
from ser_dist.prediction import (
    Predictor,
    SegmentationConfig,
    Segmenter,
    fixed_windows,
    predict_paths,
    vad_segments,
)
from ser_dist.prediction.segmentation import VoiceActivityDetector, segment_signal
from ser_dist.training.checkpoint import load_checkpoint, save_checkpoint
from ser_dist.training.config import ModelOptions, TrainConfig
from ser_dist.training.data import normalise
from ser_dist.training.loop import FoldData, fit_fold, predict_proba

N_TRAIN_FILES = 30
# High-arousal utterances with crisp ends (sad/bored ones trail off quietly): placed in a long file for VAD.
VAD_UTTERANCES = ["08b09Wc", "08b10Aa", "08b10Fd", "08b10La"]
VAD_GAP_S = 1.0


def train_tiny_checkpoint(files: list[Path], directory: Path, *, seed: int = 0) -> Path:
    """2 epochs of a width-8 TimNet on LOGMEL features of `files`; saved as a checkpoint folder."""
    meta = [parse_emodb_name(f) for f in files]
    labels = sorted({m["label"] for m in meta})
    config = FeatureConfig()
    features = FeatureComputer(config).compute([load_audio(f) for f in files])
    positions = np.arange(len(files))
    train, val, test = positions[:20], positions[20:25], positions[25:]
    normalised, standardizer = normalise(features, [m["speaker"] for m in meta], train_positions=train, mode="train_global")
    y = np.array([labels.index(m["label"]) for m in meta])
    data = FoldData(labels, normalised, y, [m["utterance_id"] for m in meta], train, val, test, standardizer)
    outcome = fit_fold(data, TrainConfig(epochs=2, seed=seed, model=ModelOptions(width=8, n_blocks=2, time_pool=4)))
    return save_checkpoint(
        directory, model_config=outcome.model_config, state_dict=outcome.best_state, standardizer=standardizer,
        labels=labels, feature_config=config.to_dict() | {"encoder": {}},  # as kfold stores it, provenance included
        extra={"normalization": "train_global", "fold": seed},
    )


@pytest.fixture(scope="module")
def emodb_files(emodb_root: Path) -> list[Path]:
    files = sorted((emodb_root / "wav").glob("*.wav"))
    return files[:: len(files) // N_TRAIN_FILES][:N_TRAIN_FILES]


@pytest.fixture(scope="module")
def checkpoint(emodb_files, tmp_path_factory) -> Path:
    return train_tiny_checkpoint(emodb_files, tmp_path_factory.mktemp("ckpt") / "checkpoint")


@pytest.fixture(scope="module")
def predictor(checkpoint) -> Predictor:
    return Predictor.from_dir(checkpoint)


def direct_probabilities(checkpoint: Path, path: Path) -> np.ndarray:
    """The model run by hand on the file's features: what prediction must reproduce."""
    loaded = load_checkpoint(checkpoint)
    features = FeatureComputer(FeatureConfig()).compute([load_audio(path)])
    return predict_proba(loaded.model, [loaded.standardizer.apply(features[0])], np.array([0]), device=torch.device("cpu"))[0]


def test_predict_file_matches_the_model_on_the_same_features(predictor, checkpoint, emodb_files):
    labels = load_checkpoint(checkpoint).labels
    for path in emodb_files[:3]:
        prediction = predictor.predict_file(path)
        assert list(prediction.probabilities) == labels
        probs = np.array(list(prediction.probabilities.values()))
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)
        assert prediction.emotion == labels[int(probs.argmax())]
        assert prediction.duration_s == pytest.approx(sf.info(str(path)).duration, abs=1e-3)
        np.testing.assert_allclose(probs, direct_probabilities(checkpoint, path), rtol=0, atol=1e-6)


def test_predict_files_batched_equals_one_by_one(predictor, emodb_files):
    paths = emodb_files[:6]
    batched = predictor.predict_files(paths)
    assert [p.path for p in batched] == [str(p) for p in paths]
    for one, path in zip(batched, paths, strict=True):
        single = predictor.predict_file(path)
        np.testing.assert_allclose(list(one.probabilities.values()), list(single.probabilities.values()), atol=1e-5)


def test_predict_signal_equals_predict_file(predictor, emodb_files):
    path = emodb_files[0]
    samples, rate = sf.read(str(path), dtype="float32")
    from_file = predictor.predict_file(path)
    for signal in (samples, np.stack([samples, samples], axis=1)):  # mono, and stereo of two equal channels
        from_signal = predictor.predict_signal(signal, rate)
        assert from_signal.path is None
        assert from_signal.probabilities == from_file.probabilities


def test_run_folder_averages_its_folds(checkpoint, emodb_files, tmp_path):
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(checkpoint, run / "fold_0" / "checkpoint")
    train_tiny_checkpoint(emodb_files, run / "fold_1" / "checkpoint", seed=1)
    ensemble = Predictor.from_dir(run)
    assert len(ensemble.members) == 2
    path = emodb_files[3]
    expected = np.mean([direct_probabilities(run / f"fold_{k}" / "checkpoint", path) for k in (0, 1)], axis=0)
    np.testing.assert_allclose(list(ensemble.predict_file(path).probabilities.values()), expected, atol=1e-6)

    (run / "fold_2").mkdir()  # a fold that never finished
    with pytest.raises(ModelLoadError, match="fold_2 of 3 folds have no checkpoint"):
        Predictor.from_dir(run)
    shutil.rmtree(run / "fold_2")
    shutil.copytree(checkpoint, run / "fold_2" / "checkpoint")  # a fold that calls its classes otherwise
    meta = json.loads((run / "fold_2" / "checkpoint" / "checkpoint.json").read_text())
    (run / "fold_2" / "checkpoint" / "checkpoint.json").write_text(json.dumps(meta | {"labels": meta["labels"][::-1]}))
    with pytest.raises(ModelLoadError, match="differs from .*fold_0.* in labels"):
        Predictor.from_dir(run)


def test_incomplete_or_foreign_checkpoints_are_refused(checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="missing model.safetensors"):
        Predictor.from_dir(broken)
    with pytest.raises(ModelLoadError, match="trained on LOGMEL features, not HUBERT"):
        Predictor.from_dir(checkpoint, expected_feature_type="hubert")
    with pytest.raises(ModelLoadError, match="neither a checkpoint folder"):
        Predictor.from_dir(tmp_path)
    with pytest.raises(ModelLoadError, match="no such folder"):
        Predictor.from_dir(tmp_path / "absent")
    other = tmp_path / "other_features"
    shutil.copytree(checkpoint, other)
    meta = json.loads((other / "checkpoint.json").read_text())
    meta["feature_config"]["logmel"]["n_mels"] = 64  # features of another shape than the model takes
    (other / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="takes 128-dim features.*gives 64"):
        Predictor.from_dir(other)


def test_bad_audio_gets_the_extraction_errors(predictor, tmp_path):
    fake = tmp_path / "notes.wav"
    fake.write_text("this is not audio")
    with pytest.raises(AudioError, match="notes.wav: not a readable audio file"):
        predictor.predict_file(fake)
    with pytest.raises(AudioError, match="too short"):
        predictor.predict_signal(np.zeros(100, np.float32), TARGET_SAMPLE_RATE)


def test_predict_paths_reports_bad_files_as_rows(checkpoint, emodb_files, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(emodb_files[0], folder / emodb_files[0].name)
    samples, rate = sf.read(str(emodb_files[1]), dtype="float32")
    sf.write(folder / "sub" / "second.flac", samples, rate)
    (folder / "sub" / "bad.wav").write_text("not audio")
    (folder / "readme.txt").write_text("ignored: not .wav/.flac")
    out = tmp_path / "out" / "predictions.csv"
    table = predict_paths([str(folder), str(tmp_path / "missing.wav")], str(checkpoint), out=str(out), timeline=False, segmenter="vad")
    assert len(table) == 4
    by_name = {Path(p).name: row for p, row in zip(table["path"], table.to_dict("records"), strict=True)}
    assert by_name["bad.wav"]["status"] == "error" and "not a readable audio file" in by_name["bad.wav"]["reason"]
    assert by_name["missing.wav"]["reason"] == "no such file or folder"
    ok = table[table["status"] == "ok"]
    assert sorted(Path(p).name for p in ok["path"]) == sorted([emodb_files[0].name, "second.flac"])
    p_columns = [c for c in table.columns if c.startswith("p_")]
    np.testing.assert_allclose(ok[p_columns].sum(axis=1), 1.0, atol=1e-5)
    assert pd.read_csv(out).shape == table.shape
    as_json = tmp_path / "predictions.json"
    predict_paths([str(emodb_files[0])], str(checkpoint), out=str(as_json), timeline=False, segmenter="fixed")
    assert json.loads(as_json.read_text())[0]["status"] == "ok"
    with pytest.raises(ConfigError, match="expected a file ending in .csv or .json"):
        predict_paths([str(folder)], str(checkpoint), out=str(tmp_path / "x.xlsx"), timeline=False, segmenter="vad")


def test_fixed_windows_cover_the_signal_with_full_windows():
    spans = fixed_windows(10 * 16_000, 16_000, 3.0, 1.5)
    assert spans[0] == (0.0, 3.0) and spans[-1] == (7.0, 10.0)
    assert all(end - start == pytest.approx(3.0) for start, end in spans)
    assert fixed_windows(16_000, 16_000, 3.0, 1.5) == [(0.0, 1.0)]


@pytest.fixture(scope="module")
def long_recording(emodb_root) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """EMODB utterances (edge silence trimmed) separated by 1 s of near-silence; their true spans."""
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(0)
    parts, truth, t = [], [], 0.0
    for name in VAD_UTTERANCES:
        speech, _ = librosa.effects.trim(load_audio(emodb_root / "wav" / f"{name}.wav"), top_db=35)
        parts += [speech, 1e-4 * rng.standard_normal(int(VAD_GAP_S * TARGET_SAMPLE_RATE)).astype(np.float32)]
        truth.append((t, t + len(speech) / TARGET_SAMPLE_RATE))
        t += len(speech) / TARGET_SAMPLE_RATE + VAD_GAP_S
    return np.concatenate(parts), truth


def test_vad_finds_the_utterances_of_a_long_recording(long_recording):
    pytest.importorskip("silero_vad", reason="voice activity segmentation needs the silero-vad package")
    signal, truth = long_recording
    spans = vad_segments(signal, TARGET_SAMPLE_RATE)
    for start, end in spans:  # nothing found in the silences
        assert any(s - 0.2 <= start and end <= e + 0.2 for s, e in truth), (start, end)
    for s, e in truth:  # a pause inside an utterance may split it; its outer boundaries must match
        inside = [span for span in spans if span[0] < e and span[1] > s]
        assert inside, (s, e)
        assert abs(inside[0][0] - s) <= 0.2 and abs(inside[-1][1] - e) <= 0.2, (s, e, inside)


def test_vad_reports_what_it_drops(long_recording):
    pytest.importorskip("silero_vad", reason="voice activity segmentation needs the silero-vad package")
    signal, truth = long_recording
    lengths = sorted(e - s for s, e in truth)
    cut = segment_signal(signal, config=SegmentationConfig(min_speech_s=(lengths[1] + lengths[2]) / 2), detector=VoiceActivityDetector())
    assert len(cut.spans) == 2 and len(cut.dropped) == 2
    assert all("shorter than min_speech_s" in d.reason for d in cut.dropped)


def test_timeline_of_a_long_recording(predictor, long_recording, tmp_path):
    pytest.importorskip("silero_vad", reason="voice activity segmentation needs the silero-vad package")
    signal, truth = long_recording
    path = tmp_path / "long.wav"
    sf.write(path, signal, TARGET_SAMPLE_RATE, subtype="FLOAT")
    timeline = predictor.predict_timeline(path)
    assert len(timeline.segments) >= len(truth) and not timeline.dropped
    for segment in timeline.segments:
        assert segment.end > segment.start
        assert sum(segment.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert segment.emotion == max(segment.probabilities, key=segment.probabilities.get)
    first = timeline.segments[0]
    piece = signal[int(round(first.start * TARGET_SAMPLE_RATE)) : int(round(first.end * TARGET_SAMPLE_RATE))]
    alone = predictor.predict_signal(piece, TARGET_SAMPLE_RATE).probabilities
    np.testing.assert_allclose(list(alone.values()), list(first.probabilities.values()), atol=1e-5)
    fixed = predictor.predict_timeline(path, SegmentationConfig(method=Segmenter.FIXED, window_s=2.0, hop_s=2.0))
    assert fixed.segments[0].start == 0.0 and fixed.segments[-1].end == pytest.approx(timeline.duration_s)
    table = predict_paths([str(path)], str(predictor.source), out=None, timeline=True, segmenter="vad")
    assert list(table["start_s"]) == [s.start for s in timeline.segments]


def test_vad_without_silero_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "silero_vad", None)  # as if the package were not installed
    with pytest.raises(ModelLoadError, match="pip install 'silero-vad.*--segmenter fixed"):
        VoiceActivityDetector()
