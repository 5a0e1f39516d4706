"""Silence trimming before feature computation (FeatureConfig.trim_db)."""

from __future__ import annotations

import numpy as np
import pytest

from ser_dist.errors import ConfigError
from ser_dist.features.compute import FeatureComputer, trim_silence
from ser_dist.features.config import FeatureConfig

SR = 16_000


def tone_in_silence(before: float, tone: float, after: float, *, noise: float = 1e-4) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(tone * SR)) / SR
    parts = [np.zeros(int(before * SR)), 0.5 * np.sin(2 * np.pi * 200 * t), np.zeros(int(after * SR))]
    return (np.concatenate(parts) + noise * rng.standard_normal(sum(len(p) for p in parts))).astype(np.float32)


def test_trim_cuts_leading_and_trailing_silence_only():
    x = tone_in_silence(1.0, 1.5, 0.8)
    y = trim_silence(x, 40)
    assert abs(len(y) / SR - 1.5) < 0.05  # within a frame or two of the tone
    # the tone starts within 30 ms of the kept part's start and ends within 30 ms of its end
    loud = np.flatnonzero(np.abs(y) > 0.1)
    assert loud[0] < 0.03 * SR and len(y) - loud[-1] < 0.03 * SR


def test_a_quiet_or_short_clip_is_kept_whole():
    quiet = tone_in_silence(0.5, 0.1, 0.5)  # only 0.1 s above the threshold: below min_seconds
    assert len(trim_silence(quiet, 40)) == len(quiet)
    tiny = np.ones(100, np.float32)
    assert len(trim_silence(tiny, 40)) == 100


def test_trim_db_is_part_of_the_version_only_when_set():
    assert FeatureConfig().version() == FeatureConfig(trim_db=None).version()
    assert "trim_db" not in FeatureConfig().to_dict()
    trimmed = FeatureConfig(trim_db=40)
    assert trimmed.version() != FeatureConfig().version()
    assert FeatureConfig.from_dict(trimmed.to_dict()) == trimmed
    with pytest.raises(ConfigError, match="trim_db"):
        FeatureConfig(trim_db=5)


def test_feature_computer_trims_before_logmel():
    x = tone_in_silence(1.0, 1.0, 1.0)
    plain = FeatureComputer(FeatureConfig()).compute([x])[0]
    trimmed = FeatureComputer(FeatureConfig(trim_db=40)).compute([x])[0]
    assert trimmed.shape[0] < 0.45 * plain.shape[0]
