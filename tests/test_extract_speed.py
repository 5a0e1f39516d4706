"""The speed-ups of issue #12 keep the numbers: banded mel product, one-open audio read, part write options."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from ser_dist.audio import load_audio
from ser_dist.features.config import LogMelConfig
from ser_dist.features.logmel import LogMelExtractor, banded_filterbank
from ser_dist.features.store import (
    META_COLUMNS,
    features_to_table,
    load_features,
    write_metadata,
    write_part_atomically,
)

FILES = ["03a01Fa.wav", "08a01Ab.wav", "16b10Td.wav", "11a04Ac.wav"]


def dense_logmel(extractor: LogMelExtractor, signals: list[np.ndarray]) -> list[np.ndarray]:
    """The formulation before the speed-up: full filterbank product on (B, F, T) power, per-signal copies."""
    c = extractor.config
    half = c.n_fft // 2
    padded = [torch.nn.functional.pad(torch.from_numpy(s)[None, None], (half, half), mode="reflect")[0, 0] for s in signals]
    batch = torch.nn.utils.rnn.pad_sequence(padded, batch_first=True)
    spec = torch.stft(batch, n_fft=c.n_fft, hop_length=c.hop_length, window=extractor.window, center=False, return_complex=True)
    power = spec.real.square() + spec.imag.square()
    mel = torch.matmul(extractor.filterbank, power)
    out = torch.log(torch.clamp(mel, min=c.log_floor)).transpose(1, 2).numpy()
    return [out[i, : 1 + len(s) // c.hop_length].copy() for i, s in enumerate(signals)]


def test_banded_filterbank_covers_every_weight():
    fb = LogMelExtractor().filterbank.numpy()
    rebuilt = np.zeros_like(fb)
    for lo, hi, first, last, weights in banded_filterbank(fb):
        rebuilt[lo:hi, first:last] = weights.T
    np.testing.assert_array_equal(rebuilt, fb)  # nothing left out, nothing moved
    assert sum((last - first) * (hi - lo) for lo, hi, first, last, _ in banded_filterbank(fb)) < fb.size / 4


@pytest.mark.parametrize("config", [LogMelConfig(), LogMelConfig(n_mels=40, f_max=4000.0), LogMelConfig(n_mels=80, f_min=60.0)])
def test_banded_logmel_equals_the_dense_product_on_speech(emodb_root, config):
    signals = [load_audio(emodb_root / "wav" / name) for name in FILES]
    extractor = LogMelExtractor(config)
    for new, old in zip(extractor.extract(signals), dense_logmel(extractor, signals), strict=True):
        assert new.shape == old.shape and new.dtype == np.float32 and new.flags.c_contiguous
        np.testing.assert_allclose(new, old, rtol=0, atol=1e-5)  # observed <= 1e-6 (summation order only)


def test_one_open_read_matches_soundfile(emodb_root):
    path = emodb_root / "wav" / FILES[0]
    expected, rate = sf.read(str(path), dtype="float32")
    assert rate == 16_000
    np.testing.assert_array_equal(load_audio(path), expected)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_parts_round_trip_bit_exact_with_the_write_options(tmp_path, dtype):
    rng = np.random.default_rng(0)
    matrices = [rng.normal(size=(t, 128)).astype(np.float32) for t in (3, 250, 97)]
    rows = pd.DataFrame({name: [f"{name}{i}" for i in range(3)] for name in META_COLUMNS})
    part = write_part_atomically(tmp_path, features_to_table(rows, matrices, dtype, provenance={"dim": 128}))
    columns = pq.ParquetFile(part.path).metadata.row_group(0)
    encodings = {columns.column(i).path_in_schema: columns.column(i).encodings for i in range(columns.num_columns)}
    assert "BYTE_STREAM_SPLIT" in encodings["features.list.element"]
    write_metadata(tmp_path, {"status": "complete"})
    table = load_features(tmp_path)
    for i, matrix in enumerate(matrices):
        np.testing.assert_array_equal(table.features[i], matrix.astype(dtype).astype(np.float32))
