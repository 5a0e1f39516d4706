"""`table:PATH` corpora: a CSV/JSONL table of files -> manifest (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ser_dist.corpora import (
    MANIFEST_COLUMNS,
    corpus_name,
    corpus_root,
    prepare,
    prepare_with_report,
    reader_options,
)
from ser_dist.corpora.table import load_label_map, safe_corpus_name
from ser_dist.errors import (
    ConfigError,
    ConfigFileNotFoundError,
    CorpusNotFoundError,
    ManifestError,
    UnknownLabelError,
    UnknownNameError,
)
from tests.conftest import write_tone

# (relative path, label, speaker, gender, session); line numbers in the CSV are index + 2
CLIPS = [
    ("audio/s1/a.wav", "angry", "s1", "F", "day1"),
    ("audio/s1/b.wav", "Happy", "s1", "female", "day1"),
    ("audio/s1/c.wav", "neutral", "s1", "F", "day2"),
    ("audio/s2/d.wav", "SAD", "s2", "m", ""),
    ("audio/s2/e.wav", "angry", "s2", "Male", ""),
    ("audio/s3/f.wav", "fear", "s3", "", ""),
]


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def clips_dir(tmp_path: Path) -> Path:
    root = tmp_path / "mydata"
    for i, (rel, *_rest) in enumerate(CLIPS):
        write_tone(root / rel, 0.5 + 0.1 * i, freq=200 + 30 * i, seed=i)
    return root


@pytest.fixture
def clips_csv(clips_dir: Path) -> Path:
    rows = [{"path": p, "label": lab, "speaker": spk, "gender": g, "session": s} for p, lab, spk, g, s in CLIPS]
    return write_csv(clips_dir / "clips.csv", rows)


def test_csv_table_manifest(clips_csv, clips_dir):
    manifest, report = prepare_with_report(f"table:{clips_csv}")
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == 6 and report.n_utterances == 6 and report.skipped == []
    assert set(manifest["corpus"]) == {"CLIPS"} and report.corpus == "CLIPS"
    by_id = manifest.set_index("utterance_id")
    assert list(by_id.index) == ["a", "b", "c", "d", "e", "f"]  # default id: the file stem
    assert by_id["label"].to_dict() == {"a": "angry", "b": "happy", "c": "neutral", "d": "sad", "e": "angry", "f": "fear"}
    assert by_id.loc["b", "source_label"] == "Happy" and by_id.loc["d", "source_label"] == "SAD"
    assert by_id["speaker"].to_dict() == {
        "a": "CLIPS_s1", "b": "CLIPS_s1", "c": "CLIPS_s1", "d": "CLIPS_s2", "e": "CLIPS_s2", "f": "CLIPS_s3",
    }
    assert by_id["gender"].to_dict() == {"a": "F", "b": "F", "c": "F", "d": "M", "e": "M", "f": "unknown"}
    assert by_id["session"].to_dict() == {"a": "day1", "b": "day1", "c": "day2", "d": "", "e": "", "f": ""}
    # relative paths resolve against the table's folder, not the working directory
    assert by_id.loc["d", "path"] == str((clips_dir / "audio/s2/d.wav").resolve())
    assert by_id.loc["a", "duration_s"] == pytest.approx(0.5) and by_id.loc["f", "duration_s"] == pytest.approx(1.0)
    assert set(by_id["sample_rate"]) == {16000} and set(by_id["channels"]) == {1}


def test_jsonl_table_equals_csv(clips_csv, clips_dir):
    lines = [json.dumps({"path": p, "label": lab, "speaker": spk, "gender": g, "session": s}) for p, lab, spk, g, s in CLIPS]
    jsonl = clips_dir / "clips.jsonl"
    jsonl.write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")  # a blank line is ignored
    pd.testing.assert_frame_equal(prepare(f"table:{jsonl}"), prepare(f"table:{clips_csv}"))
    # numbers in JSON become strings; explicit ids and absolute paths are used as given
    (clips_dir / "num.jsonl").write_text(json.dumps(
        {"path": str(clips_dir / "audio/s1/a.wav"), "label": "angry", "speaker": 7, "utterance_id": "x-1"}
    ) + "\n")
    row = prepare(f"table:{clips_dir / 'num.jsonl'}").iloc[0]
    assert (row.utterance_id, row.speaker, row.corpus, row.gender) == ("x-1", "NUM_7", "NUM", "unknown")


def test_corpus_name_from_stem_or_column(clips_dir, clips_csv):
    assert safe_corpus_name("my data-v2") == "MY_DATA_V2"
    odd = write_csv(clips_dir / "my data-v2.csv", [{"path": "audio/s1/a.wav", "label": "angry", "speaker": "s1"}])
    assert corpus_name(f"table:{odd}") == "MY_DATA_V2"
    assert corpus_name(f"TABLE:{clips_csv}") == "CLIPS"
    named = write_csv(clips_dir / "t.csv", [{"path": "audio/s1/a.wav", "label": "angry", "speaker": "s1", "corpus": "lab corpus"}])
    assert corpus_name(f"table:{named}") == "LAB_CORPUS"
    assert set(prepare(f"table:{named}")["speaker"]) == {"LAB_CORPUS_s1"}
    two = write_csv(clips_dir / "two.csv", [
        {"path": "audio/s1/a.wav", "label": "angry", "speaker": "s1", "corpus": "A"},
        {"path": "audio/s1/b.wav", "label": "angry", "speaker": "s1", "corpus": "B"},
    ])
    with pytest.raises(ManifestError, match="corpus column holds A, B; a table is one corpus"):
        corpus_name(f"table:{two}")
    clash = write_csv(clips_dir / "emodb.csv", [{"path": "audio/s1/a.wav", "label": "angry", "speaker": "s1"}])
    with pytest.raises(ManifestError, match="built-in EMODB reader"):
        prepare(f"table:{clash}")
    # the table is its own root: the data root is not used
    assert corpus_root("/nowhere", f"table:{clips_csv}") == clips_csv


def test_unknown_labels_list_rows_and_valid_names(clips_dir):
    rows = [{"path": p, "label": lab, "speaker": spk} for p, lab, spk, *_ in CLIPS]
    rows[1]["label"], rows[4]["label"] = "joy", "meh"
    table = write_csv(clips_dir / "bad.csv", rows)
    with pytest.raises(UnknownLabelError) as info:
        prepare(f"table:{table}")
    assert isinstance(info.value, ValueError)
    assert info.value.rows == [(3, "joy"), (6, "meh")]  # line numbers: the header is line 1
    message = str(info.value)
    assert "2 row(s) with unknown labels: row 3 'joy', row 6 'meh'" in message
    assert "expected one of angry, boredom, calm, disgust" in message and "--label-map" in message
    manifest, report = prepare_with_report(f"table:{table}", on_error="skip")
    assert len(manifest) == 4 and report.n_utterances == 4
    assert [(Path(s.path).name, s.reason.split(";")[0]) for s in report.skipped] == [
        ("b.wav", "unknown label: row 3 'joy'"), ("e.wav", "unknown label: row 6 'meh'"),
    ]


def test_label_map_json_and_yaml(clips_dir):
    rows = [{"path": p, "label": lab, "speaker": spk} for p, lab, spk, *_ in CLIPS]
    rows[0]["label"], rows[1]["label"], rows[2]["label"] = "Wut", "joy", "unsure"
    table = write_csv(clips_dir / "mapped.csv", rows)
    json_map = clips_dir / "map.json"
    json_map.write_text(json.dumps({"wut": "angry", "joy": "Happy", "unsure": "neutral"}))
    manifest = prepare(f"table:{table}", label_map=json_map)
    by_id = manifest.set_index("utterance_id")
    assert by_id["label"].to_dict() == {"a": "angry", "b": "happy", "c": "neutral", "d": "sad", "e": "angry", "f": "fear"}
    assert by_id.loc["a", "source_label"] == "Wut"  # the key matched case-insensitively; the table's own label kept
    yaml_map = clips_dir / "map.yaml"
    yaml_map.write_text("Wut: angry\njoy: happy\nunsure: null\n")  # null leaves those rows out, counted
    manifest, report = prepare_with_report(f"table:{table}", label_map=str(yaml_map))
    assert len(manifest) == 5 and "c" not in set(manifest["utterance_id"])
    assert report.excluded_by_label_set == {"unsure": 1}
    assert load_label_map(yaml_map)["joy"].value == "happy"
    (clips_dir / "wrong.yaml").write_text("joy: elated\n")
    with pytest.raises(UnknownNameError, match="unknown emotion 'elated'; expected one of angry"):
        load_label_map(clips_dir / "wrong.yaml")
    (clips_dir / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold one object"):
        load_label_map(clips_dir / "list.json")
    with pytest.raises(ConfigFileNotFoundError, match="label map .*nope.yaml does not exist") as info:
        prepare(f"table:{table}", label_map=clips_dir / "nope.yaml")
    assert isinstance(info.value, FileNotFoundError)
    assert reader_options(f"table:{table}", label_map="m.yaml") == {"label_map": "m.yaml"}
    with pytest.raises(ConfigError, match="table corpora .* only, not to EMODB"):
        reader_options("EMODB", label_map="m.yaml")


def test_missing_duplicate_and_broken_files_raise_or_skip(clips_dir):
    (clips_dir / "audio/broken.wav").write_text("not audio")
    rows = [{"path": p, "label": lab, "speaker": spk} for p, lab, spk, *_ in CLIPS] + [
        {"path": "audio/gone.wav", "label": "sad", "speaker": "s3"},  # line 8
        {"path": "audio/s2/d.wav", "label": "sad", "speaker": "s2"},  # line 9: id 'd' again
        {"path": "audio/broken.wav", "label": "sad", "speaker": "s3"},  # line 10
        {"path": "audio/s1/a.wav", "label": "fear", "speaker": "s9", "utterance_id": "a-again"},  # line 11
    ]
    table = write_csv(clips_dir / "messy.csv", rows)
    with pytest.raises(ManifestError, match=r"duplicate utterance ids \(1\): row 9 repeats 'd' of row 5"):
        prepare(f"table:{table}")
    manifest, report = prepare_with_report(f"table:{table}", on_error="skip")
    assert len(manifest) == 7 and report.n_utterances == 7
    reasons = {(Path(s.path).name, s.reason) for s in report.skipped}
    assert ("gone.wav", f"row 8: listed in {table.resolve()} but the audio file is missing") in reasons
    assert ("d.wav", "row 9: duplicate utterance id 'd' (first in row 5)") in reasons
    broken = [r for name, r in reasons if name == "broken.wav"]
    assert len(broken) == 1 and "not a readable audio file" in broken[0]
    assert len(report.skipped) == 3 and report.to_dict()["n_skipped"] == 3
    # without the duplicate, the first bad row raises and names its file
    del rows[7]
    write_csv(table, rows)
    with pytest.raises(ManifestError, match=r"gone.wav: row 8: listed in .* but the audio file is missing"):
        prepare(f"table:{table}")


def test_bad_tables(tmp_path, clips_dir):
    with pytest.raises(CorpusNotFoundError, match="corpus table .*nope.csv does not exist") as info:
        prepare(f"table:{tmp_path / 'nope.csv'}")
    assert isinstance(info.value, FileNotFoundError)
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(ManifestError, match="unknown format '.xlsx'; expected one of .csv, .jsonl"):
        prepare(f"table:{tmp_path / 't.xlsx'}")
    lacking = write_csv(tmp_path / "lacking.csv", [{"file": "a.wav", "label": "angry"}])
    with pytest.raises(ManifestError, match="lacks column.s. path, speaker; it has file, label"):
        prepare(f"table:{lacking}")
    (tmp_path / "empty.csv").write_text("path,label,speaker\n")
    with pytest.raises(CorpusNotFoundError, match="holds no rows"):
        prepare(f"table:{tmp_path / 'empty.csv'}")
    (tmp_path / "bad.jsonl").write_text('{"path": "a.wav"}\n{oops\n')
    with pytest.raises(ManifestError, match="row 2: not valid JSON"):
        prepare(f"table:{tmp_path / 'bad.jsonl'}")
    gender = write_csv(clips_dir / "gender.csv", [{"path": "audio/s1/a.wav", "label": "angry", "speaker": "s1", "gender": "X"}])
    with pytest.raises(ManifestError, match="row 2: gender 'X' is not one of 'f', 'female'"):
        prepare(f"table:{gender}")
    with pytest.raises(ConfigError, match="names no table"):
        corpus_name("table:")


def test_prepare_command_writes_table_manifest(clips_dir, tmp_path, capsys):
    from ser_dist.cli import main

    rows = [{"path": p, "label": lab, "speaker": spk} for p, lab, spk, *_ in CLIPS]
    rows[0]["label"] = "joy"
    table = write_csv(clips_dir / "clips.csv", rows)
    (clips_dir / "map.json").write_text('{"joy": "happy"}')
    out = tmp_path / "manifests"
    assert main(["prepare", "--corpus", f"table:{table}", "--out", str(out)]) == 2
    assert "row 2 'joy'" in capsys.readouterr().err
    code = main(["prepare", "--corpus", f"table:{table}", "--label-map", str(clips_dir / "map.json"), "--out", str(out)])
    assert code == 0
    manifest = pd.read_parquet(out / "CLIPS.parquet")
    assert len(manifest) == 6 and manifest["label"].value_counts().to_dict()["happy"] == 2
    report = json.loads((out / "CLIPS.prepare_report.json").read_text())
    assert (report["corpus"], report["n_utterances"], report["n_skipped"]) == ("CLIPS", 6, 0)


def test_train_names_the_table_dataset(clips_csv):
    from argparse import Namespace

    from ser_dist.cli import _features_path

    args = Namespace(features_dir="data/features_none", features="LOGMEL", ssl_model=None, ssl_layer=None,
                     corpus=f"table:{clips_csv}")
    assert Path(_features_path(args)).name == "CLIPS_LOGMEL"


def test_table_over_real_emodb_files(emodb_root, tmp_path):
    wav = emodb_root / "wav"
    names = ["03a01Fa", "03a01Nc", "08a01Ab", "16b10Tb"]
    rows = [{"path": str(wav / f"{n}.wav"), "label": n[5], "speaker": n[:2], "utterance_id": n} for n in names]
    table = write_csv(tmp_path / "emodb_subset.csv", rows)
    letters = tmp_path / "emodb_letters.yaml"
    letters.write_text("W: angry\nL: boredom\nE: disgust\nA: fear\nF: happy\nT: sad\nN: neutral\n")
    manifest = prepare(f"table:{table}", label_map=letters)
    reference = prepare("EMODB", emodb_root).set_index("utterance_id").loc[names]
    by_id = manifest.set_index("utterance_id")
    assert list(by_id.index) == names
    assert by_id["label"].to_list() == reference["label"].to_list() == ["happy", "neutral", "fear", "sad"]
    assert by_id["speaker"].to_list() == ["EMODB_SUBSET_03", "EMODB_SUBSET_03", "EMODB_SUBSET_08", "EMODB_SUBSET_16"]
    assert by_id["source_label"].to_list() == ["F", "N", "A", "T"]
    assert by_id["duration_s"].to_list() == pytest.approx(reference["duration_s"].to_list())
    assert by_id.loc["03a01Fa", "duration_s"] == pytest.approx(30372 / 16000)
    assert set(by_id["gender"]) == {"unknown"}
