"""FUSION alignment: LogMel at 100 fps onto the encoder's 50 fps grid, for every signal length."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import HubertConfig, HubertModel

from ser_dist.errors import ConfigError
from ser_dist.features.config import LogMelConfig, SSLConfig
from ser_dist.features.fusion import align_logmel_to_encoder, fuse
from ser_dist.features.logmel import LogMelExtractor, n_logmel_frames
from ser_dist.features.ssl import SSLEncoder

LENGTHS = [400, 401, 719, 720, 1_039, 1_040, 16_000, 16_001, 24_321, 47_999, 48_000, *range(400, 48_001, 997)]
MEL = LogMelConfig()


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory) -> SSLEncoder:
    torch.manual_seed(0)
    config = HubertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, conv_dim=(8,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("hubert")
    HubertModel(config).save_pretrained(folder)
    return SSLEncoder(SSLConfig(model=str(folder)))


def whisper_frames(n_samples: int) -> int:
    return math.ceil(n_samples / 320)  # SSLEncoder.n_frames for Whisper; tested in test_ssl.py


def test_frame_counts_match_for_every_length(tiny_hubert):
    rng = np.random.default_rng(0)
    for n in LENGTHS:
        mel = rng.standard_normal((n_logmel_frames(n, MEL), MEL.n_mels)).astype(np.float32)
        for n_enc, dim in ((tiny_hubert.n_frames(n), 768), (whisper_frames(n), 384)):
            fused = fuse(mel, np.zeros((n_enc, dim), dtype=np.float32))
            assert fused.shape == (n_enc, MEL.n_mels + dim), (n, n_enc)
            assert fused.dtype == np.float32


def test_fused_dims():
    mel = np.zeros((n_logmel_frames(16_000, MEL), 128), dtype=np.float32)
    assert fuse(mel, np.zeros((49, 768), dtype=np.float32)).shape == (49, 896)
    assert fuse(mel, np.zeros((50, 384), dtype=np.float32)).shape == (50, 512)


def test_real_extractors_fuse(tiny_hubert):
    rng = np.random.default_rng(1)
    signals = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (400, 5_003, 16_000)]
    mels = LogMelExtractor(MEL).extract(signals)
    for signal, mel, encoded in zip(signals, mels, tiny_hubert.encode(signals), strict=True):
        fused = fuse(mel, encoded)
        assert fused.shape == (tiny_hubert.n_frames(len(signal)), 128 + 32)
        np.testing.assert_array_equal(fused[:, 128:], encoded)
        np.testing.assert_allclose(fused[0, :128], mel[:3].mean(axis=0), rtol=1e-6, atol=1e-6)


def test_encoder_frame_averages_mel_frames_centred_in_its_span():
    mel = np.arange(11, dtype=np.float32)[:, None] * np.ones((1, 4), dtype=np.float32)  # row j holds j
    aligned = align_logmel_to_encoder(mel, 5)
    # frame i: mel frames 2i, 2i+1, 2i+2 (centres 160 j inside [320 i, 320 i + 400))
    np.testing.assert_allclose(aligned[:, 0], [1, 3, 5, 7, 9])


def test_short_mel_repeats_its_last_frame():
    mel = np.arange(9, dtype=np.float32)[:, None]  # frames 0..8; frame 4 needs 8, 9, 10
    aligned = align_logmel_to_encoder(mel, 5)
    np.testing.assert_allclose(aligned[:, 0], [1, 3, 5, 7, 8])


def test_mismatched_lengths_are_refused():
    mel = np.zeros((101, 128), dtype=np.float32)  # one second
    with pytest.raises(ConfigError, match="same signal"):
        fuse(mel, np.zeros((100, 768), dtype=np.float32))  # two seconds of encoder frames
    with pytest.raises(ConfigError, match="same signal"):
        fuse(mel, np.zeros((10, 768), dtype=np.float32))
    with pytest.raises(ConfigError):
        align_logmel_to_encoder(np.zeros(128, dtype=np.float32), 1)
    with pytest.raises(ConfigError):
        align_logmel_to_encoder(mel, 0)


def test_whisper_encoder_counts_match_ceil(tmp_path):
    whisper_dir = Path(__file__).resolve().parents[2] / "shared/models/whisper-tiny.en"
    if not (whisper_dir / "model.safetensors").is_file():
        pytest.skip(f"Whisper tiny.en weights not found at {whisper_dir}")
    encoder = SSLEncoder(SSLConfig(model=str(whisper_dir)))
    assert all(encoder.n_frames(n) == whisper_frames(n) for n in LENGTHS)
    assert encoder.dim + MEL.n_mels == 512
