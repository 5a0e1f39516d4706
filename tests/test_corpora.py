from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ser_dist.corpora import MANIFEST_COLUMNS, corpus_name, prepare, prepare_with_report
from ser_dist.errors import CorpusNotFoundError, ManifestError, UnknownNameError
from tests.conftest import write_tone


def test_emodb_counts_and_schema(emodb_root):
    manifest = prepare("EMODB", emodb_root)
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == 535
    assert manifest["label"].value_counts().to_dict() == {
        "angry": 127, "boredom": 81, "neutral": 79, "happy": 71, "fear": 69, "sad": 62, "disgust": 46,
    }
    assert manifest["speaker"].nunique() == 10
    assert (manifest.groupby("gender").size().to_dict()) == {"F": 302, "M": 233}
    row = manifest.set_index("utterance_id").loc["03a01Fa"]
    assert (row.speaker, row.gender, row.label, row.source_label) == ("EMODB_03", "M", "happy", "F")
    assert row.sample_rate == 16000 and row.channels == 1
    assert row.duration_s == pytest.approx(30372 / 16000)
    assert manifest["utterance_id"].is_unique


def test_ravdess_counts(ravdess_root):
    manifest = prepare("RAVDESS", ravdess_root)
    assert len(manifest) == 720
    assert manifest["speaker"].nunique() == 12
    counts = manifest["label"].value_counts().to_dict()
    assert counts["neutral"] == 48 and all(counts[k] == 96 for k in counts if k != "neutral")
    row = manifest.set_index("utterance_id").loc["03-01-05-01-02-01-07"]
    assert (row.speaker, row.gender, row.label) == ("RAVDESS_07", "M", "angry")
    assert set(manifest[manifest.speaker == "RAVDESS_08"]["gender"]) == {"F"}


def test_iemocap_synthetic_four_class(iemocap_root):
    manifest, report = prepare_with_report("IEMOCAP", iemocap_root)
    # four-class: neu, hap+exc -> happy, sad, ang; fru, xxx, oth are excluded and counted
    assert sorted(manifest["label"].unique()) == ["angry", "happy", "neutral", "sad"]
    assert len(manifest) == 12
    assert report.excluded_by_label_set == {"fru": 1, "oth": 1, "xxx": 1}
    row = manifest.set_index("utterance_id").loc["Ses01F_impro01_M000"]
    assert (row.speaker, row.gender, row.session, row.source_label) == ("IEMOCAP_Ses01M", "M", "Session1", "hap")
    assert manifest.set_index("utterance_id").loc["Ses01F_impro01_F001"].label == "happy"  # exc merged
    assert manifest["speaker"].nunique() == 4


def test_iemocap_all_labels(iemocap_root):
    manifest = prepare("IEMOCAP", iemocap_root, label_set="all")
    assert len(manifest) == 15
    assert {"frustrated", "excited", "no_agreement", "other"} <= set(manifest["label"])


def test_iemocap_missing_wav_is_named(iemocap_root):
    wav = iemocap_root / "Session2/sentences/wav/Ses02F_impro02/Ses02F_impro02_F001.wav"
    wav.unlink()
    with pytest.raises(ManifestError, match="Ses02F_impro02_F001.wav.*missing"):
        prepare("IEMOCAP", iemocap_root)
    manifest, report = prepare_with_report("IEMOCAP", iemocap_root, on_error="skip")
    assert len(manifest) == 11
    assert [s.path for s in report.skipped] == [str(wav)]


def test_iemocap_unknown_code(iemocap_root):
    label_file = iemocap_root / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    label_file.write_text(label_file.read_text().replace("\tsad\t", "\tzzz\t"))
    with pytest.raises(ManifestError, match="zzz"):
        prepare("IEMOCAP", iemocap_root)


def test_missing_and_empty_roots(tmp_path):
    with pytest.raises(CorpusNotFoundError, match="does not exist"):
        prepare("EMODB", tmp_path / "nope")
    (tmp_path / "wav").mkdir()
    with pytest.raises(CorpusNotFoundError, match="no .wav files"):
        prepare("EMODB", tmp_path)
    with pytest.raises(CorpusNotFoundError, match="Actor_XX"):
        prepare("RAVDESS", tmp_path)
    with pytest.raises(CorpusNotFoundError, match="Session"):
        prepare("IEMOCAP", tmp_path)


def test_unknown_corpus_lists_valid_names():
    with pytest.raises(UnknownNameError, match="expected one of EMODB, IEMOCAP, RAVDESS"):
        corpus_name("EMODB2")
    assert corpus_name("RAVDE") == "RAVDESS"


@pytest.fixture
def small_emodb(tmp_path: Path, emodb_root: Path) -> Path:
    wav = tmp_path / "emodb" / "wav"
    wav.mkdir(parents=True)
    for name in ["03a01Fa.wav", "03a01Nc.wav", "08a01Ab.wav"]:
        shutil.copy(emodb_root / "wav" / name, wav / name)
    return tmp_path / "emodb"


def test_bad_names_codes_and_files_raise_or_skip(small_emodb):
    wav = small_emodb / "wav"
    write_tone(wav / "03a01Xa.wav", 1.0)  # unknown emotion letter
    write_tone(wav / "garbage.wav", 1.0)  # name does not parse
    (wav / "03a02Wa.wav").write_text("not audio")  # text with a .wav name
    (wav / "notes.txt").write_text("hi")
    with pytest.raises(ManifestError) as info:
        prepare("EMODB", small_emodb)
    assert "03a01Xa.wav" in str(info.value) or "garbage.wav" in str(info.value)
    manifest, report = prepare_with_report("EMODB", small_emodb, on_error="skip")
    assert len(manifest) == 3
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert set(reasons) == {"03a01Xa.wav", "garbage.wav", "03a02Wa.wav", "notes.txt"}
    assert "expected one of A, E, F, L, N, T, W" in reasons["03a01Xa.wav"]
    assert "not a readable audio file" in reasons["03a02Wa.wav"]


def test_duplicate_ids_are_refused(tmp_path, ravdess_root):
    for actor in ["Actor_01", "Actor_02"]:
        (tmp_path / actor).mkdir()
    src = ravdess_root / "Actor_01" / "03-01-01-01-01-01-01.wav"
    shutil.copy(src, tmp_path / "Actor_01" / src.name)
    shutil.copy(src, tmp_path / "Actor_01" / "03-01-01-01-01-01-01.WAV")
    with pytest.raises(ManifestError, match="duplicate utterance ids"):
        prepare("RAVDESS", tmp_path)


def test_ravdess_actor_folder_mismatch(tmp_path, ravdess_root):
    (tmp_path / "Actor_02").mkdir()
    src = ravdess_root / "Actor_01" / "03-01-01-01-01-01-01.wav"
    shutil.copy(src, tmp_path / "Actor_02" / src.name)
    with pytest.raises(ManifestError, match="names actor 01 but lies in folder 'Actor_02'"):
        prepare("RAVDESS", tmp_path)
