"""SSLEncoder: a tiny random HuBERT saved to disk, the real Whisper tiny.en, and load failures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import HubertConfig, HubertModel

from ser_dist.audio import load_audio
from ser_dist.errors import AudioError, ConfigError, ModelLoadError
from ser_dist.features.config import SSLConfig
from ser_dist.features.ssl import SSLEncoder, hash_weights, length_batches

SHARED = Path(__file__).resolve().parents[2] / "shared"
WHISPER_DIR = SHARED / "models/whisper-tiny.en"
EMODB_WAV = SHARED / "data/emodb/wav"
EMODB_FILES = ["03a01Fa.wav", "03a01Nc.wav", "03a01Wa.wav"]
LENGTHS = [400, 719, 720, 3_201, 16_000, 9_999]  # mixed, unsorted, around conv-stride edges


def save_tiny_hubert(folder: Path, *, feat_extract_norm: str = "layer", seed: int = 0) -> Path:
    """A 2-layer HuBERT with random weights, saved as save_pretrained writes a real one."""
    torch.manual_seed(seed)
    config = HubertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm=feat_extract_norm,
        conv_bias=feat_extract_norm == "layer",
    )
    HubertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def layer_norm_dir(tmp_path_factory) -> Path:
    return save_tiny_hubert(tmp_path_factory.mktemp("hubert-layer"))


@pytest.fixture(scope="module")
def group_norm_dir(tmp_path_factory) -> Path:
    return save_tiny_hubert(tmp_path_factory.mktemp("hubert-group"), feat_extract_norm="group")


@pytest.fixture(scope="module")
def signals() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in LENGTHS]


def conv_frames(n: int) -> int:
    """HuBERT-base's CNN (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2) on n samples."""
    for kernel, stride in zip((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2), strict=True):
        n = (n - kernel) // stride + 1
    return n


# --- tiny HuBERT ----------------------------------------------------------------------------------------


def test_tiny_hubert_shapes_and_frame_counts(layer_norm_dir, signals):
    encoder = SSLEncoder(SSLConfig(model=str(layer_norm_dir)))
    assert encoder.model_id == str(layer_norm_dir)
    assert encoder.dim == 32
    assert encoder.frame_rate == 50.0
    assert encoder.n_hidden_states == 3
    assert len(encoder.weight_hash) == 16
    assert encoder.weight_hash == hash_weights(layer_norm_dir)
    assert not encoder.model.training
    out = encoder.encode(signals)
    assert len(out) == len(signals)
    for signal, frames in zip(signals, out, strict=True):
        assert frames.dtype == np.float32
        assert frames.shape == (encoder.n_frames(len(signal)), 32)
        assert encoder.n_frames(len(signal)) == conv_frames(len(signal))
        assert np.isfinite(frames).all()
    assert encoder.n_frames(400) == 1 and encoder.n_frames(399) == 0
    assert encoder.encode([]) == []


def test_weight_hash_tells_weights_apart(layer_norm_dir, tmp_path):
    other = save_tiny_hubert(tmp_path / "other", seed=1)
    assert hash_weights(other) != hash_weights(layer_norm_dir)


def test_layer_selection(layer_norm_dir, signals):
    some = signals[3:5]
    last, first, mid = (
        SSLEncoder(SSLConfig(model=str(layer_norm_dir), layers=(i,))).encode(some) for i in (-1, 0, 1)
    )
    averaged = SSLEncoder(SSLConfig(model=str(layer_norm_dir), layers=(0, 1, -1))).encode(some)
    for a, b, c, avg in zip(last, first, mid, averaged, strict=True):
        assert not np.allclose(a, b)
        np.testing.assert_allclose(avg, (a + b + c) / 3, rtol=1e-5, atol=1e-6)
    explicit_last = SSLEncoder(SSLConfig(model=str(layer_norm_dir), layers=(2,))).encode(some)
    for a, b in zip(last, explicit_last, strict=True):
        np.testing.assert_array_equal(a, b)


def test_layer_out_of_range_lists_valid_range(layer_norm_dir):
    with pytest.raises(ConfigError, match=r"valid: -3\.\.2"):
        SSLEncoder(SSLConfig(model=str(layer_norm_dir), layers=(3,)))
    with pytest.raises(ConfigError, match="-4"):
        SSLEncoder(SSLConfig(model=str(layer_norm_dir), layers=(0, -4)))


def test_batched_equals_single_layer_norm(layer_norm_dir, signals):
    # Layer-norm front end + attention mask: padding must not change any real frame.
    encoder = SSLEncoder(SSLConfig(model=str(layer_norm_dir), layers=(0, -1)))
    batched = encoder.encode(signals)
    for signal, frames in zip(signals, batched, strict=True):
        (alone,) = encoder.encode([signal])
        np.testing.assert_allclose(frames, alone, atol=1e-5, rtol=1e-4)


def test_small_batches_equal_one_big_batch(layer_norm_dir, signals):
    big = SSLEncoder(SSLConfig(model=str(layer_norm_dir))).encode(signals)
    small = SSLEncoder(SSLConfig(model=str(layer_norm_dir), max_batch_seconds=0.5)).encode(signals)
    for a, b in zip(big, small, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_order_preserved_with_mixed_lengths(layer_norm_dir, signals):
    encoder = SSLEncoder(SSLConfig(model=str(layer_norm_dir), max_batch_seconds=1.0))
    forward = encoder.encode(signals)
    backward = encoder.encode(signals[::-1])[::-1]
    for a, b in zip(forward, backward, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    # Same lengths, different content: each output must belong to its own input.
    rng = np.random.default_rng(1)
    twins = [(0.1 * rng.standard_normal(8_000)).astype(np.float32) for _ in range(3)]
    outs = encoder.encode([twins[0], signals[4], twins[1], twins[2]])
    for twin, out in zip(twins, [outs[0], outs[2], outs[3]], strict=True):
        np.testing.assert_allclose(out, encoder.encode([twin])[0], atol=1e-5, rtol=1e-4)


def test_group_norm_batches_do_not_pad(group_norm_dir, signals):
    # hubert-base-style group norm normalises each CNN channel over the whole padded input and takes no
    # attention mask, so padding would shift every frame; the encoder batches equal lengths only.
    encoder = SSLEncoder(SSLConfig(model=str(group_norm_dir)))
    assert not encoder._masked
    batched = encoder.encode(signals + [signals[4].copy()])
    for signal, frames in zip(signals, batched, strict=False):
        np.testing.assert_allclose(frames, encoder.encode([signal])[0], atol=1e-5, rtol=1e-4)
    assert batched[-1].shape == batched[4].shape


def test_do_normalize_uses_real_samples_only(tmp_path, signals):
    from transformers import Wav2Vec2FeatureExtractor

    folder = save_tiny_hubert(tmp_path / "normalised")
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    encoder = SSLEncoder(SSLConfig(model=str(folder)))
    assert encoder._do_normalize
    louder = [3.0 * s for s in signals]  # unit-variance normalisation makes the gain irrelevant
    for a, b in zip(encoder.encode(signals), encoder.encode(louder), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3)


def test_length_batches_cap_and_cover():
    lengths = [5, 1, 9, 3, 9, 20, 2]
    batches = length_batches(lengths, 18)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        longest = lengths[batch[0]]
        assert longest == max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * longest <= 18
    assert [5] in batches  # longer than the cap: alone
    assert all(len({lengths[i] for i in b}) == 1 for b in length_batches(lengths, 100, same_length_only=True))


def test_rejects_bad_signals(layer_norm_dir):
    encoder = SSLEncoder(SSLConfig(model=str(layer_norm_dir)))
    with pytest.raises(AudioError, match="too short"):
        encoder.encode([np.zeros(399, dtype=np.float32)])
    with pytest.raises(AudioError, match="mono"):
        encoder.encode([np.zeros((800, 2), dtype=np.float32)])


# --- load failures --------------------------------------------------------------------------------------


def test_missing_directory_fails_with_the_option_to_fix_it(tmp_path):
    with pytest.raises(ModelLoadError, match="--ssl-model DIR") as info:
        SSLEncoder(SSLConfig(model=str(tmp_path / "no-such-model")))
    assert str(tmp_path / "no-such-model") in str(info.value)


def test_directory_without_model_files(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        SSLEncoder(SSLConfig(model=str(tmp_path)))


def test_unknown_hub_id_offline_names_the_cache(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="--ssl-model DIR") as info:
        SSLEncoder(SSLConfig(model="ser-dist-tests/no-such-encoder"))
    message = str(info.value)
    assert "ser-dist-tests/no-such-encoder" in message and "Hugging Face cache" in message


def test_non_speech_model_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    ).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="wav2vec2 family"):
        SSLEncoder(SSLConfig(model=str(tmp_path)))


# --- real Whisper tiny.en -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def whisper() -> SSLEncoder:
    if not (WHISPER_DIR / "model.safetensors").is_file():
        pytest.skip(f"Whisper tiny.en weights not found at {WHISPER_DIR}")
    return SSLEncoder(SSLConfig(model=str(WHISPER_DIR), layers=(2,)))


@pytest.fixture(scope="module")
def emodb_signals() -> list[np.ndarray]:
    if not EMODB_WAV.is_dir():
        pytest.skip(f"EMODB not found at {EMODB_WAV}")
    return [load_audio(EMODB_WAV / name) for name in EMODB_FILES]


def test_whisper_frames_on_real_speech(whisper, emodb_signals):
    assert whisper.dim == 384
    assert whisper.frame_rate == 50.0
    assert whisper.n_hidden_states == 5
    assert whisper.model.dtype == torch.float32  # stored as float16: we ask for float32 on CPU
    batched = whisper.encode(emodb_signals)
    for signal, frames in zip(emodb_signals, batched, strict=True):
        assert frames.shape == (math.ceil(len(signal) / 320), 384) == (whisper.n_frames(len(signal)), 384)
        assert frames.dtype == np.float32 and np.isfinite(frames).all()
        (alone,) = whisper.encode([signal])
        np.testing.assert_allclose(frames, alone, atol=1e-3)


def test_whisper_longer_than_30_seconds(whisper, emodb_signals):
    long = np.concatenate(emodb_signals * math.ceil(31 * 16_000 / sum(map(len, emodb_signals))))
    assert len(long) > 30 * 16_000
    (frames,) = whisper.encode([long])
    assert frames.shape == (math.ceil(len(long) / 320), 384)
    assert np.isfinite(frames).all()
    (first_chunk,) = whisper.encode([long[: 30 * 16_000]])
    np.testing.assert_allclose(frames[:1500], first_chunk, atol=1e-3)
