from __future__ import annotations

import numpy as np
import pytest

from ser_dist.audio import load_audio
from ser_dist.features.config import LogMelConfig
from ser_dist.features.logmel import LogMelExtractor, librosa_logmel, n_logmel_frames

# Tolerance stated in the README: |torch - librosa| <= 1e-3 in log units (observed ~1e-4).
LOG_TOLERANCE = 1e-3


def test_matches_librosa_on_real_speech(emodb_root):
    signals = [load_audio(emodb_root / "wav" / n) for n in ["03a01Fa.wav", "08a01Ab.wav", "16b10Td.wav"]]
    ours = LogMelExtractor().extract(signals)
    for signal, mel in zip(signals, ours, strict=True):
        reference = librosa_logmel(signal)
        assert mel.shape == reference.shape == (1 + len(signal) // 160, 128)
        assert np.abs(mel - reference).max() < LOG_TOLERANCE


@pytest.mark.parametrize("n", [400, 401, 513, 1600, 16_001, 33_333])
def test_frame_count_and_batch_independence(n):
    rng = np.random.default_rng(n)
    signal = (0.1 * rng.standard_normal(n)).astype(np.float32)
    longer = (0.1 * rng.standard_normal(3 * n + 77)).astype(np.float32)
    extractor = LogMelExtractor()
    alone = extractor.extract([signal])[0]
    batched = extractor.extract([longer, signal])[1]
    assert alone.shape == (n_logmel_frames(n, LogMelConfig()), 128)
    np.testing.assert_allclose(alone, batched, atol=1e-4)
    np.testing.assert_allclose(alone, librosa_logmel(signal), atol=LOG_TOLERANCE)


def test_silence_hits_the_floor():
    mel = LogMelExtractor().extract([np.zeros(1600, np.float32)])[0]
    assert np.allclose(mel, np.log(LogMelConfig().log_floor))
