"""SAVEE, TESS and CREMA-D readers on small synthetic copies in their published layouts (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf

from ser_dist.corpora import MANIFEST_COLUMNS, corpus_name, corpus_root, prepare, prepare_with_report
from ser_dist.errors import CorpusNotFoundError, ManifestError, UnknownNameError
from tests.conftest import write_tone


def write_files(root: Path, relative_paths: list[str]) -> Path:
    for i, rel in enumerate(relative_paths):
        write_tone(root / rel, 0.4 + 0.05 * i, freq=180 + 25 * i, seed=i)
    return root


# ---------------------------------------------------------------- SAVEE

SAVEE_FILES = {
    "DC": ["a01", "d01", "f01", "h01", "n01", "n02", "sa01", "su01"],
    "JE": ["a01", "sa02", "su03"],
    "JK": ["n01"],
    "KL": ["h05", "sa15"],
}


@pytest.fixture
def savee_root(tmp_path: Path) -> Path:
    files = [f"AudioData/{spk}/{name}.wav" for spk, names in SAVEE_FILES.items() for name in names]
    return write_files(tmp_path / "savee", files)


def test_savee_manifest(savee_root):
    manifest, report = prepare_with_report("SAVEE", savee_root)
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == 14 and report.n_utterances == 14 and report.skipped == []
    assert manifest["label"].value_counts().to_dict() == {
        "sad": 3, "neutral": 3, "angry": 2, "happy": 2, "surprise": 2, "disgust": 1, "fear": 1,
    }
    assert manifest.groupby("speaker").size().to_dict() == {"SAVEE_DC": 8, "SAVEE_JE": 3, "SAVEE_JK": 1, "SAVEE_KL": 2}
    assert set(manifest["gender"]) == {"M"} and set(manifest["corpus"]) == {"SAVEE"}
    by_id = manifest.set_index("utterance_id")
    # "sa"/"su" are read before the one-letter codes; sentence names repeat across speakers, ids do not
    assert (by_id.loc["DC_sa01", "label"], by_id.loc["DC_sa01", "source_label"]) == ("sad", "sa")
    assert (by_id.loc["JE_su03", "label"], by_id.loc["JE_su03", "source_label"]) == ("surprise", "su")
    assert by_id.loc["JE_a01", "speaker"] == "SAVEE_JE" and by_id.loc["DC_a01", "label"] == "angry"
    # the root may be AudioData/ itself
    pd.testing.assert_frame_equal(prepare("SAVEE", savee_root / "AudioData"), manifest)


def test_savee_unknown_names_raise_or_skip(savee_root):
    audio = savee_root / "AudioData"
    write_tone(audio / "DC" / "s01.wav", 0.5)  # "s" alone is no code
    write_tone(audio / "JE" / "x01.wav", 0.5)
    (audio / "KL" / "notes.txt").write_text("hi")
    write_tone(audio / "ZZ" / "a01.wav", 0.5)  # not a SAVEE speaker
    with pytest.raises(ManifestError, match="AudioData/ZZ: not one of SAVEE's speaker folders"):
        prepare("SAVEE", savee_root)
    manifest, report = prepare_with_report("SAVEE", savee_root, on_error="skip")
    assert len(manifest) == 14
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert set(reasons) == {"s01.wav", "x01.wav", "notes.txt", "ZZ"}
    assert "<emotion a|d|f|h|n|sa|su><2 digits>" in reasons["x01.wav"]
    assert reasons["ZZ"] == "not one of SAVEE's speaker folders DC, JE, JK, KL"
    assert reasons["notes.txt"] == "not a .wav file"
    (audio / "ZZ" / "a01.wav").unlink()
    (audio / "ZZ").rmdir()
    with pytest.raises(ManifestError, match="s01.wav: file name 's01.wav' does not parse as SAVEE"):
        prepare("SAVEE", savee_root)


def test_savee_empty_root(tmp_path):
    (tmp_path / "AudioData" / "other").mkdir(parents=True)
    with pytest.raises(CorpusNotFoundError, match="holds none of the speaker folders DC, JE, JK, KL"):
        prepare("SAVEE", tmp_path)


# ---------------------------------------------------------------- TESS

TESS_FILES = [
    "OAF_angry/OAF_back_angry.wav",
    "OAF_angry/OAF_bar_angry.wav",
    "OAF_Fear/OAF_back_fear.wav",
    "OAF_Pleasant_surprise/OAF_back_ps.wav",
    "OAF_neutral/OAF_back_neutral.wav",
    "YAF_pleasant_surprised/YAF_back_ps.wav",
    "YAF_happy/YAF_Bite_Happy.wav",  # mixed case in the file name
    "YAF_sad/YAF_back_sad.wav",
    "YAF_disgust/YAF_back_disgust.wav",
]


@pytest.fixture
def tess_root(tmp_path: Path) -> Path:
    return write_files(tmp_path / "tess", TESS_FILES)


def test_tess_manifest(tess_root, tmp_path):
    manifest, report = prepare_with_report("TESS", tess_root)
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == 9 and report.skipped == []
    assert manifest.groupby("speaker").size().to_dict() == {"TESS_OAF": 5, "TESS_YAF": 4}
    assert set(manifest["gender"]) == {"F"}
    assert manifest.set_index("utterance_id")["label"].to_dict() == {
        "OAF_back_angry": "angry", "OAF_bar_angry": "angry", "OAF_back_fear": "fear", "OAF_back_ps": "surprise",
        "OAF_back_neutral": "neutral", "YAF_back_ps": "surprise", "YAF_Bite_Happy": "happy", "YAF_back_sad": "sad",
        "YAF_back_disgust": "disgust",
    }
    assert manifest.set_index("utterance_id").loc["YAF_Bite_Happy", "source_label"] == "happy"
    # the download nests the folders one level down
    nested = write_files(tmp_path / "tess_download" / "TESS Toronto emotional speech set data", TESS_FILES)
    assert prepare("TESS", nested.parent)["utterance_id"].tolist() == manifest["utterance_id"].tolist()


def test_tess_unknown_names_raise_or_skip(tess_root):
    write_tone(tess_root / "OAF_angry" / "OAF_back_joy.wav", 0.5)  # unknown emotion
    write_tone(tess_root / "OAF_angry" / "YAF_bar_angry.wav", 0.5)  # YAF file in an OAF folder
    write_tone(tess_root / "OAF_angry" / "backangry.wav", 0.5)  # does not parse
    write_tone(tess_root / "OAF_bored" / "OAF_back_bored.wav", 0.5)  # not a TESS folder
    with pytest.raises(ManifestError, match=r"tess/OAF_bored: not a <OAF\|YAF>_<emotion> folder of TESS"):
        prepare("TESS", tess_root)
    manifest, report = prepare_with_report("TESS", tess_root, on_error="skip")
    assert len(manifest) == 9
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert set(reasons) == {"OAF_back_joy.wav", "YAF_bar_angry.wav", "backangry.wav", "OAF_bored"}
    assert "angry, disgust, fear, happy, neutral, ps, sad" in reasons["OAF_back_joy.wav"]
    assert reasons["YAF_bar_angry.wav"] == "'YAF_bar_angry.wav' names YAF angry but lies in folder 'OAF_angry' (OAF angry)"
    assert "does not parse as TESS's <OAF|YAF>_<word>_<emotion>.wav" in reasons["backangry.wav"]
    assert reasons["OAF_bored"].startswith("not a <OAF|YAF>_<emotion> folder of TESS")
    (tess_root / "OAF_bored" / "OAF_back_bored.wav").unlink()
    (tess_root / "OAF_bored").rmdir()
    with pytest.raises(ManifestError, match="OAF_back_joy.wav: unknown TESS emotion code 'joy'; expected one of angry"):
        prepare("TESS", tess_root)


def test_tess_empty_root(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(CorpusNotFoundError, match=r"holds no <OAF\|YAF>_<emotion> folders"):
        prepare("TESS", tmp_path)


# ---------------------------------------------------------------- CREMA-D

CREMAD_FILES = [
    "1001_DFA_ANG_XX", "1001_IEO_HAP_HI", "1002_TIE_SAD_LO", "1002_IOM_FEA_XX", "1091_MTI_NEU_MD", "1091_WSI_DIS_XX",
]
DEMOGRAPHICS = "ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,Caucasian,Not Hispanic\n1002,21,Female,Caucasian,Not Hispanic\n1091,29,Female,Asian,Not Hispanic\n"


@pytest.fixture
def cremad_root(tmp_path: Path) -> Path:
    root = write_files(tmp_path / "crema-d", [f"AudioWAV/{name}.wav" for name in CREMAD_FILES])
    (root / "VideoDemographics.csv").write_text(DEMOGRAPHICS)
    return root


def test_cremad_manifest_with_demographics(cremad_root):
    manifest, report = prepare_with_report("CREMA-D", cremad_root)
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == 6 and report.skipped == [] and report.corpus == "CREMAD"
    by_id = manifest.set_index("utterance_id")
    assert by_id["label"].to_dict() == {
        "1001_DFA_ANG_XX": "angry", "1001_IEO_HAP_HI": "happy", "1002_IOM_FEA_XX": "fear",
        "1002_TIE_SAD_LO": "sad", "1091_MTI_NEU_MD": "neutral", "1091_WSI_DIS_XX": "disgust",
    }
    assert manifest.groupby("speaker")["gender"].first().to_dict() == {"CREMAD_1001": "M", "CREMAD_1002": "F", "CREMAD_1091": "F"}
    assert by_id.loc["1002_TIE_SAD_LO", "source_label"] == "SAD"


def test_cremad_without_demographics_and_flat_root(cremad_root):
    # the wav folder itself as root: the demographics file is found in its parent
    flat = prepare("CREMAD", cremad_root / "AudioWAV")
    assert set(flat["gender"]) == {"M", "F"} and len(flat) == 6
    (cremad_root / "VideoDemographics.csv").unlink()
    manifest = prepare("crema_d", cremad_root)
    assert set(manifest["gender"]) == {"unknown"} and len(manifest) == 6


def test_cremad_unknown_names_raise_or_skip(cremad_root):
    wav = cremad_root / "AudioWAV"
    write_tone(wav / "1001_DFA_XYZ_XX.wav", 0.5)  # unknown emotion
    write_tone(wav / "0999_DFA_ANG_XX.wav", 0.5)  # actor out of range
    write_tone(wav / "1001_DFA_ANG_ZZ.wav", 0.5)  # unknown intensity
    write_tone(wav / "1050_DFA_ANG_XX.wav", 0.5)  # actor missing from the demographics
    write_tone(wav / "readme.wav", 0.5)
    sf.write(wav / "1002_DFA_ANG_XX.wav", [], 16000, subtype="PCM_16")  # no samples
    with pytest.raises(ManifestError, match="0999_DFA_ANG_XX.wav: actor 999 in '0999_DFA_ANG_XX.wav' is not one of CREMA-D's actors"):
        prepare("CREMAD", cremad_root)
    manifest, report = prepare_with_report("CREMAD", cremad_root, on_error="skip")
    assert len(manifest) == 6
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert set(reasons) == {
        "1001_DFA_XYZ_XX.wav", "0999_DFA_ANG_XX.wav", "1001_DFA_ANG_ZZ.wav", "1050_DFA_ANG_XX.wav", "readme.wav", "1002_DFA_ANG_XX.wav",
    }
    assert reasons["1001_DFA_XYZ_XX.wav"] == "unknown CREMAD emotion code 'XYZ'; expected one of ANG, DIS, FEA, HAP, NEU, SAD"
    assert reasons["1001_DFA_ANG_ZZ.wav"] == "intensity 'ZZ' in '1001_DFA_ANG_ZZ.wav' is not one of LO, MD, HI, XX"
    assert reasons["1050_DFA_ANG_XX.wav"] == "actor 1050 of '1050_DFA_ANG_XX.wav' is not listed in VideoDemographics.csv"
    assert "does not parse as CREMA-D's" in reasons["readme.wav"]
    assert "holds no samples" in reasons["1002_DFA_ANG_XX.wav"]


def test_cremad_bad_demographics_and_empty_root(cremad_root, tmp_path):
    (cremad_root / "VideoDemographics.csv").write_text("ActorID,Age,Gender\n1001,51,Male\n")
    with pytest.raises(ManifestError, match="lacks column.s. Sex"):
        prepare("CREMAD", cremad_root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusNotFoundError, match="holds no .wav files"):
        prepare("CREMAD", tmp_path / "empty")


# ---------------------------------------------------------------- registry

def test_registry_knows_the_new_corpora(tmp_path, savee_root):
    assert [corpus_name(n) for n in ("savee", "Tess", "crema-d", "CREMA_D", "cremad")] == ["SAVEE", "TESS", "CREMAD", "CREMAD", "CREMAD"]
    assert corpus_root(tmp_path, "CREMA-D") == tmp_path / "crema-d"
    assert corpus_root(tmp_path, "savee") == tmp_path / "savee" and corpus_root(tmp_path, "TESS") == tmp_path / "tess"
    with pytest.raises(UnknownNameError, match="expected one of EMODB, IEMOCAP, RAVDESS, CREMAD, SAVEE, TESS, table:PATH"):
        corpus_name("SAVE")
    from ser_dist.api import PrepareConfig, prepare_corpus

    manifest, path = prepare_corpus(PrepareConfig(corpus="SAVEE", data_root=str(savee_root.parent), out=str(tmp_path / "m")))
    assert path == tmp_path / "m" / "SAVEE.parquet" and len(pd.read_parquet(path)) == len(manifest) == 14
    assert json.loads((tmp_path / "m" / "SAVEE.prepare_report.json").read_text())["n_utterances"] == 14
