"""Extraction end to end on a local Ray cluster: Parquet layout, metadata, resume, bad files."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ser_dist.audio import load_audio
from ser_dist.corpora import prepare_with_report
from ser_dist.features.config import FeatureConfig, FeatureType, LogMelConfig
from ser_dist.features.extract import ExtractionOptions, extract_features
from ser_dist.features.logmel import LogMelExtractor
from ser_dist.features.store import load_features, part_files, read_metadata, resolve_version

pytestmark = pytest.mark.ray

NAMES = ["03a01Fa", "03a01Nc", "08a01Ab", "08a01Lc", "09a01Wb", "10a05Tb", "11a02Ec", "12a01Fb", "12a01Nb"]


@pytest.fixture
def subset(tmp_path, emodb_root):
    wav = tmp_path / "emodb" / "wav"
    wav.mkdir(parents=True)
    for name in NAMES:
        shutil.copy(emodb_root / "wav" / f"{name}.wav", wav / f"{name}.wav")
    return tmp_path / "emodb"


def test_logmel_end_to_end_resume_and_versions(ray_cluster, subset, tmp_path):
    manifest, _ = prepare_with_report("EMODB", subset)
    out = tmp_path / "features"
    options = ExtractionOptions(num_workers=2, batch_size=4)
    first = manifest.iloc[:5]
    result = extract_features(first, FeatureConfig(), out, corpus="EMODB", options=options)
    assert result.n_extracted == 5 and result.directory.parent == out / "LOGMEL" / "EMODB_LOGMEL"
    # a rerun over the whole manifest extracts only the four that are new
    result = extract_features(manifest, FeatureConfig(), out, corpus="EMODB", options=options)
    assert (result.n_extracted, result.n_already_done) == (4, 5)
    again = extract_features(manifest, FeatureConfig(), out, corpus="EMODB", options=options)
    assert again.up_to_date and again.n_already_done == 9

    table = load_features(out / "LOGMEL" / "EMODB_LOGMEL")
    assert table.meta["utterance_id"].tolist() == sorted(NAMES)
    reference = LogMelExtractor().extract([load_audio(p) for p in manifest.sort_values("utterance_id")["path"]])
    for stored, expected in zip(table.features, reference, strict=True):
        np.testing.assert_allclose(stored, expected, atol=1e-6)
    assert (table.meta["n_frames"].to_numpy() == [m.shape[0] for m in reference]).all()
    assert set(table.meta["label"]) == {"happy", "neutral", "fear", "boredom", "angry", "sad", "disgust"}

    metadata = read_metadata(result.directory)
    assert metadata["status"] == "complete" and metadata["counts"]["stored"] == 9
    assert metadata["dim"] == 128 and metadata["feature_config"]["logmel"]["n_mels"] == 128

    # a changed config writes a separate version; both stay readable
    changed = FeatureConfig(logmel=LogMelConfig(n_mels=64))
    other = extract_features(manifest, changed, out, corpus="EMODB", options=options)
    assert other.directory != result.directory and other.n_extracted == 9
    assert load_features(other.directory).dim == 64
    assert load_features(out / "LOGMEL" / "EMODB_LOGMEL", version=FeatureConfig().version()).dim == 128


def test_interrupted_run_leaves_nothing_trusted(ray_cluster, subset, tmp_path):
    manifest, _ = prepare_with_report("EMODB", subset)
    out = tmp_path / "features"
    config = FeatureConfig(storage_dtype="float16")
    result = extract_features(manifest.iloc[:3], config, out, corpus="EMODB", options=ExtractionOptions(num_workers=1))
    # simulate a crash: a half-written temp part and no final metadata
    (result.directory / ".tmp-part-deadbeef.parquet").write_bytes(b"PAR1 half")
    (result.directory / "metadata.json").unlink()
    with pytest.raises(Exception, match="no complete feature version"):
        resolve_version(out / "LOGMEL" / "EMODB_LOGMEL")
    result = extract_features(manifest, config, out, corpus="EMODB", options=ExtractionOptions(num_workers=1))
    assert (result.n_already_done, result.n_extracted) == (3, 6)
    assert not list(result.directory.glob(".tmp-*"))
    schema = pq.read_schema(part_files(result.directory)[0])
    assert schema.field("features").type.value_type == pa.float16()
    assert len(load_features(result.directory).features) == 9


def test_bad_audio_is_skipped_and_reported(ray_cluster, subset, tmp_path):
    (subset / "wav" / "13a01Wa.wav").write_text("this is text, not audio")
    manifest, report = prepare_with_report("EMODB", subset, on_error="skip")
    assert [s.path.endswith("13a01Wa.wav") for s in report.skipped] == [True]
    # a file that breaks after prepare (truncated to nothing but a header) is caught by the workers
    broken = subset / "wav" / "03a01Nc.wav"
    broken.write_bytes(broken.read_bytes()[:44 + 100])
    result = extract_features(manifest, FeatureConfig(feature_type=FeatureType.LOGMEL), tmp_path / "f", corpus="EMODB")
    assert [s["utterance_id"] for s in result.skipped] == ["03a01Nc"]
    assert "too short" in result.skipped[0]["reason"]
    metadata = read_metadata(result.directory)
    assert metadata["counts"]["skipped"] == 1 and metadata["skipped"][0]["path"] == str(broken)
    assert len(load_features(result.directory).features) == len(NAMES) - 1


def test_second_writer_is_refused(tmp_path):
    from ser_dist.errors import FeatureStoreError
    from ser_dist.features.extract import exclusive_writer

    with exclusive_writer(tmp_path):
        with pytest.raises(FeatureStoreError, match="another extraction"):
            with exclusive_writer(tmp_path):
                pass
    with exclusive_writer(tmp_path):  # released after the first one ends
        pass
