"""MFCC features, deltas and TIM-Net's fixed-length input, held to librosa."""

from __future__ import annotations

import librosa
import numpy as np
import pytest

from ser_dist.errors import ConfigError
from ser_dist.features.compute import FeatureComputer, append_deltas, fix_length_centred
from ser_dist.features.config import FeatureConfig, FeatureType, LogMelConfig, MfccConfig


def _signal(seconds: float = 1.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _librosa_mfcc(signal: np.ndarray, n_mfcc: int) -> np.ndarray:
    c = LogMelConfig()
    mel = librosa.feature.melspectrogram(
        y=signal, sr=c.sample_rate, n_fft=c.n_fft, win_length=c.win_length, hop_length=c.hop_length,
        window="hann", center=True, pad_mode="reflect", power=2.0, n_mels=c.n_mels, fmin=c.f_min, fmax=c.f_max,
    )
    db = librosa.power_to_db(mel, ref=1.0, amin=c.log_floor, top_db=None)
    return librosa.feature.mfcc(S=db, n_mfcc=n_mfcc).T  # (T, n_mfcc)


@pytest.mark.parametrize("n_mfcc", [13, 39])
def test_mfcc_equals_librosa(n_mfcc):
    signal = _signal()
    config = FeatureConfig(feature_type=FeatureType.MFCC, mfcc=MfccConfig(n_mfcc=n_mfcc))
    ours = FeatureComputer(config).compute([signal])[0]
    reference = _librosa_mfcc(signal, n_mfcc)
    assert ours.shape == reference.shape == (1 + len(signal) // 160, n_mfcc)
    # dB units: c0 is in the hundreds, so hold it relative to the scale of each coefficient
    scale = np.abs(reference).max(axis=0) + 1.0
    assert np.max(np.abs(ours - reference) / scale) < 1e-3


def test_deltas_equal_librosa_for_mfcc_and_logmel():
    signal = _signal(2.0, seed=1)
    for kind, dim in ((FeatureType.MFCC, 39), (FeatureType.LOGMEL, 128)):
        plain = FeatureComputer(FeatureConfig(feature_type=kind)).compute([signal])[0]
        with_deltas = FeatureComputer(FeatureConfig(feature_type=kind, deltas=2)).compute([signal])[0]
        assert with_deltas.shape == (plain.shape[0], 3 * dim)
        np.testing.assert_allclose(with_deltas[:, :dim], plain, atol=1e-5)
        np.testing.assert_allclose(with_deltas[:, dim : 2 * dim], librosa.feature.delta(plain.T, order=1).T, atol=1e-3)
        np.testing.assert_allclose(with_deltas[:, 2 * dim :], librosa.feature.delta(plain.T, order=2).T, atol=1e-3)
    assert FeatureComputer(FeatureConfig(feature_type=FeatureType.MFCC, deltas=1)).dim == 78


def test_deltas_of_a_sequence_shorter_than_the_window():
    frames = np.arange(12, dtype=np.float32).reshape(4, 3)  # 4 frames < width 9
    out = append_deltas(frames, 2)
    assert out.shape == (4, 9) and np.isfinite(out).all()
    np.testing.assert_allclose(out[:, 3:6], librosa.feature.delta(frames, axis=0, order=1, mode="nearest"), atol=1e-6)


def test_fixed_length_is_centred_pad_or_crop():
    x = np.arange(1, 6, dtype=np.float32)
    np.testing.assert_array_equal(fix_length_centred(x, 8), [0, 1, 2, 3, 4, 5, 0, 0])  # extra zero on the right
    np.testing.assert_array_equal(fix_length_centred(x, 3), [2, 3, 4])
    config = FeatureConfig(feature_type=FeatureType.MFCC, fixed_seconds=2.0)
    short, long = _signal(1.0), _signal(3.1, seed=2)
    frames = FeatureComputer(config).compute([short, long])
    assert [f.shape for f in frames] == [(201, 39), (201, 39)]


def test_mfcc_config_identity_and_errors():
    base = FeatureConfig(feature_type=FeatureType.MFCC)
    assert base.version() != FeatureConfig(feature_type=FeatureType.MFCC, deltas=2).version()
    assert base.version() != FeatureConfig(feature_type=FeatureType.MFCC, mfcc=MfccConfig(n_mfcc=13)).version()
    assert FeatureConfig.from_dict(FeatureConfig(feature_type=FeatureType.MFCC, deltas=2, fixed_seconds=4.354).to_dict()).version() == \
        FeatureConfig(feature_type=FeatureType.MFCC, deltas=2, fixed_seconds=4.354).version()
    # the LOGMEL identity is unchanged by the new options left at their defaults (stored versions keep their hash)
    assert set(FeatureConfig().to_dict()) == {"feature_type", "storage_dtype", "logmel"}
    assert base.dataset_name("EMODB") == "EMODB_MFCC"
    assert FeatureConfig(feature_type=FeatureType.MFCC, deltas=2).dataset_name("EMODB") == "EMODB_MFCC_DD"
    with pytest.raises(ConfigError, match="deltas"):
        FeatureConfig(feature_type=FeatureType.HUBERT, deltas=1)
    with pytest.raises(ConfigError, match="deltas must be"):
        FeatureConfig(deltas=3)
    with pytest.raises(ValueError, match="n_mfcc=200 exceeds"):
        FeatureComputer(FeatureConfig(feature_type=FeatureType.MFCC, mfcc=MfccConfig(n_mfcc=200)))
