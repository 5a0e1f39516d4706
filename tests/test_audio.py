from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from ser_dist.audio import load_audio, prepare_signal
from ser_dist.errors import AudioError
from tests.conftest import write_tone


def test_real_file(emodb_root):
    x = load_audio(emodb_root / "wav" / "03a01Fa.wav")
    assert x.dtype == np.float32 and x.shape == (30372,)
    assert np.isfinite(x).all() and 0 < np.abs(x).max() <= 1


def test_stereo_is_mixed_and_44k_is_resampled(tmp_path):
    path = write_tone(tmp_path / "s.wav", 1.0, sample_rate=44_100, channels=2)
    x = load_audio(path)
    assert x.shape == (16_000,) and x.dtype == np.float32
    # a 220 Hz tone survives resampling: the spectrum peaks there
    peak_hz = np.argmax(np.abs(np.fft.rfft(x))) * 16_000 / x.size
    assert abs(peak_hz - 220) < 2


def test_channels_are_averaged(tmp_path):
    left = np.full(800, 0.5, np.float32)
    right = np.full(800, -0.1, np.float32)
    sf.write(tmp_path / "lr.wav", np.stack([left, right], 1), 16_000, subtype="FLOAT")
    assert np.allclose(load_audio(tmp_path / "lr.wav"), 0.2, atol=1e-6)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_text("hello, I am text"), "not a readable audio file"),
        (lambda p: sf.write(p, np.zeros(2000, np.float32), 16_000, format="AIFF"), "named .wav but its content is AIFF"),
        (lambda p: sf.write(p, np.zeros(0, np.float32), 16_000), "holds no samples"),
        (lambda p: sf.write(p, np.zeros(100, np.float32), 16_000), "too short: 100 samples"),
        (lambda p: sf.write(p, np.array([0.1, np.nan] * 500, np.float32), 16_000, subtype="FLOAT"), "NaN or infinite"),
        (lambda p: p.write_bytes(b""), "not a readable audio file"),
    ],
    ids=["text", "aiff", "empty", "too-short", "nan", "zero-bytes"],
)
def test_bad_files_name_the_file_and_problem(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=message) as info:
        load_audio(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "absent.wav")


def test_odd_rate_is_resampled(tmp_path):
    path = write_tone(tmp_path / "odd.wav", 0.5, sample_rate=11_025)
    assert abs(load_audio(path).shape[0] - 8000) <= 1  # 5512 samples at 11,025 Hz -> 7999.3 at 16 kHz


def test_prepare_signal_rejects_int_and_3d():
    with pytest.raises(AudioError, match="float"):
        prepare_signal(np.zeros(1000, np.int16), 16_000)
    with pytest.raises(AudioError, match="shape"):
        prepare_signal(np.zeros((10, 10, 10), np.float32), 16_000)
