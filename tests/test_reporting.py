"""Run and evaluation reports: every xlsx sheet against report.json, valid PNGs, the protocol required.

The fake run folder is written the way ser_dist.training.kfold writes one (result.json like
`_collect_fold`, summary.json by `summarise` itself), from hand-made predictions; no Ray, no training.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from openpyxl import load_workbook

from ser_dist.errors import ConfigError
from ser_dist.reporting import heatmap_png, write_report, write_run_report
from ser_dist.training.kfold import KFoldConfig, summarise
from ser_dist.training.metrics import classification_report
from ser_dist.training.splits import Fold, protocol_description

LABELS = ["angry", "happy", "neutral", "sad"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# (test speaker, [(true, pred), ...]) per fold; fold 0 never predicts "sad", fold 1 has no "happy" items.
FOLD_PREDICTIONS = [
    ("03", [("angry", "angry"), ("angry", "happy"), ("happy", "happy"), ("neutral", "neutral"), ("sad", "neutral")]),
    ("08", [("angry", "angry"), ("neutral", "sad"), ("neutral", "neutral"), ("sad", "sad"), ("sad", "sad"), ("angry", "neutral")]),
]
SKIPPED_EXTRACT = [{"utterance_id": "08a01Nc", "path": "/data/emodb/wav/08a01Nc.wav", "reason": "too short: 0.05 s"}]
SKIPPED_PREPARE = [{"path": "/data/emodb/wav/readme.wav", "reason": "file name is not in the EMODB pattern"}]


def make_run(run_dir: Path) -> dict:
    """A finished 2-fold LOSO run folder shaped like run_kfold leaves it; returns summary.json's dict."""
    config = KFoldConfig(features_path="data/features/LOGMEL/EMODB_LOGMEL", protocol="loso", seed=7, out=str(run_dir.parent), name=run_dir.name)
    fingerprint = config.fingerprint()
    protocol = protocol_description(config.protocol, len(FOLD_PREDICTIONS), config.seed)
    n_total = sum(len(pairs) for _, pairs in FOLD_PREDICTIONS)
    folds, start = [], 0
    for index, (speaker, pairs) in enumerate(FOLD_PREDICTIONS):
        test = np.arange(start, start + len(pairs))
        rest = np.setdiff1d(np.arange(n_total), test)
        folds.append(Fold(index, rest[:-1], rest[-1:], test, (speaker,)))
        start += len(pairs)
        fold_dir = run_dir / f"fold_{index}"
        (fold_dir / "checkpoint").mkdir(parents=True)
        true, pred = [t for t, _ in pairs], [p for _, p in pairs]
        report = classification_report(true, pred, LABELS)
        pd.DataFrame(
            [{"utterance_id": f"{speaker}u{i:02d}", "true": t, "pred": p, **{f"p_{c}": float(c == p) for c in LABELS}} for i, (t, p) in enumerate(pairs)]
        ).to_csv(fold_dir / "predictions.csv", index=False)
        epochs = 3 + index
        pd.DataFrame(
            {"epoch": range(1, epochs + 1), "train_loss": np.linspace(1.4, 0.6, epochs), "val_loss": np.linspace(1.3, 0.9, epochs),
             "val_uar": np.linspace(0.3, 0.6, epochs), "val_war": np.linspace(0.35, 0.65, epochs), "lr": np.full(epochs, 1e-3)}
        ).to_csv(fold_dir / "history.csv", index=False)
        result = {
            "fold": index, "fingerprint": fingerprint, "test_speakers": [speaker],
            "n_train": len(folds[-1].train), "n_val": len(folds[-1].val), "n_test": len(pairs),
            "uar": report["uar"], "war": report["war"], "macro_f1": report["macro_f1"],
            "best_epoch": 2, "best_val_uar": 0.5, "epochs_run": epochs, "report": report,
        }
        (fold_dir / "result.json").write_text(json.dumps(result, indent=2))
    (run_dir / "run_config.json").write_text(json.dumps(
        {"kfold": asdict(config), "fingerprint": fingerprint, "features": config.features_path,
         "feature_metadata": {"dataset_name": "EMODB_LOGMEL", "counts": {"manifest": n_total + 1, "skipped": 1},
                              "skipped": SKIPPED_EXTRACT, "prepare_skipped": SKIPPED_PREPARE},
         "labels": LABELS, "protocol": protocol}, indent=2, default=str))
    return summarise(run_dir, folds, LABELS, config, wall_seconds=12.5, n_trained=len(folds))


def same(cell: object, number: object) -> bool:
    """A cell holds the JSON number: ints exactly, floats to the 16 significant digits openpyxl writes ('%.16g')."""
    if isinstance(number, float):
        return isinstance(cell, int | float) and not isinstance(cell, bool) and cell == pytest.approx(number, rel=1e-15, abs=0.0)
    return cell == number and type(cell) is type(number)


def sheet_rows(sheet) -> tuple[list, list[list]]:
    rows = [list(row) for row in sheet.iter_rows(values_only=True)]
    return rows[0], rows[1:]


def assert_png(path: Path, *, min_bytes: int = 5_000) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert len(data) > min_bytes and width > 200 and height > 200, (len(data), width, height)
    return width, height


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "runs" / "EMODB_loso"
    make_run(run_dir)
    return run_dir


def test_run_report_sheets_match_report_json(run_dir: Path):
    report = write_run_report(run_dir)
    on_disk = json.loads((run_dir / "report.json").read_text())
    assert on_disk == report
    summary = json.loads((run_dir / "summary.json").read_text())
    assert report["summary"]["uar"] == summary["uar"] and report["summary"]["n"] == 11 == summary["n_test"]
    assert report["per_class"] == summary["per_class"] and report["confusion"] == summary["confusion"]
    assert report["protocol"]["speaker_independent"] is True and report["protocol"]["seed"] == 7

    book = load_workbook(run_dir / "report.xlsx")
    assert book.sheetnames == ["summary", "per_fold", "per_class", "confusion", "config", "skipped"]

    # summary: the protocol comes first, then the headline numbers, stored as numbers
    header, rows = sheet_rows(book["summary"])
    assert header == ["section", "key", "value"]
    protocol_rows = rows[: len(report["protocol"])]
    assert all(section == "protocol" for section, _, _ in protocol_rows)
    assert {key: value for _, key, value in protocol_rows} == report["protocol"]
    assert all(same(value, report["protocol"][key]) for _, key, value in protocol_rows)
    values = {key: value for section, key, value in rows if section == "summary"}
    for key in ("uar", "war", "macro_f1", "n", "n_folds", "n_skipped"):
        assert same(values[key], report["summary"][key]), key
    for key in ("mean", "std", "n"):
        assert same(values[f"fold_uar.{key}"], report["summary"]["fold_uar"][key])
        assert same(values[f"fold_war.{key}"], report["summary"]["fold_war"][key])

    # per_class: precision/recall/f1/support per label, supports add up to the test items
    header, rows = sheet_rows(book["per_class"])
    assert header == ["label", "precision", "recall", "f1", "support"]
    assert [row[0] for row in rows] == LABELS
    for label, *scores in rows:
        for cell, key in zip(scores, ("precision", "recall", "f1", "support"), strict=True):
            assert same(cell, report["per_class"][label][key]), (label, key)
    assert sum(row[4] for row in rows) == report["summary"]["n"]

    # confusion: every cell
    header, rows = sheet_rows(book["confusion"])
    assert header[1:] == LABELS
    assert [row[0] for row in rows] == LABELS
    assert [row[1:] for row in rows] == report["confusion"]
    assert all(isinstance(cell, int) for row in rows for cell in row[1:])

    # per_fold: one row per fold, every number as in result.json
    header, rows = sheet_rows(book["per_fold"])
    assert len(rows) == 2
    for fold, row in zip(report["folds"], rows, strict=True):
        cells = dict(zip(header, row, strict=True))
        result = json.loads((run_dir / f"fold_{fold['fold']}" / "result.json").read_text())
        for key in ("fold", "n_train", "n_val", "n_test", "uar", "war", "macro_f1", "best_epoch", "best_val_uar", "epochs_run"):
            assert fold[key] == result[key] and same(cells[key], result[key]), key
        assert cells["test_speakers"] == ", ".join(result["test_speakers"])
        for label in LABELS:
            assert same(cells[f"recall.{label}"], result["report"]["per_class"][label]["recall"])
            assert same(cells[f"support.{label}"], result["report"]["per_class"][label]["support"])

    # config: the run configuration, flattened
    _, rows = sheet_rows(book["config"])
    config = dict(rows)
    assert config["kfold.seed"] == 7 and config["kfold.protocol"] == "loso"
    assert config["fingerprint"] == report["config"]["fingerprint"]
    assert same(config["kfold.train.lr"], report["config"]["kfold"]["train"]["lr"])

    # skipped: every file the corpus reader or the extractor refused, with the reason
    header, rows = sheet_rows(book["skipped"])
    skipped = [dict(zip(header, row, strict=True)) for row in rows]
    assert [(s["path"], s["reason"], s["stage"]) for s in skipped] == [
        (SKIPPED_PREPARE[0]["path"], SKIPPED_PREPARE[0]["reason"], "prepare"),
        (SKIPPED_EXTRACT[0]["path"], SKIPPED_EXTRACT[0]["reason"], "extract"),
    ]
    assert report["summary"]["n_skipped"] == 2

    for name in ("confusion.png", "curves.png"):
        assert_png(run_dir / name)


def test_evaluation_report_without_folds_or_histories(tmp_path: Path):
    true = ["angry", "sad", "sad", "neutral", "happy", "angry"]
    pred = ["angry", "sad", "neutral", "neutral", "angry", "angry"]
    scores = classification_report(true, pred, LABELS)
    report = {
        "title": "EMODB -> RAVDESS",
        "protocol": {"protocol": "cross_corpus", "speaker_independent": True, "n_folds": None, "seed": 0},
        "summary": {k: scores[k] for k in ("uar", "war", "macro_f1", "n")} | {"source": "EMODB", "target": "RAVDESS"},
        "per_class": scores["per_class"], "confusion": scores["confusion"], "labels": scores["labels"],
        "config": {"checkpoint": "runs/EMODB_loso/fold_0/checkpoint", "mapping": {"calm": "neutral"}},
    }
    paths = write_report(tmp_path / "eval", report)
    assert set(paths) == {"json", "xlsx", "confusion"} and not (tmp_path / "eval" / "curves.png").exists()
    written = json.loads(paths["json"].read_text())
    assert written["summary"] == report["summary"] and written["skipped"] == [] and written["folds"] == []
    book = load_workbook(paths["xlsx"])
    assert book.sheetnames == ["summary", "per_fold", "per_class", "confusion", "config", "skipped"]
    rows = list(book["summary"].iter_rows(values_only=True))
    assert rows[1] == ("protocol", "protocol", "cross_corpus")
    assert ("protocol", "n_folds", None) in rows and ("summary", "uar", scores["uar"]) in rows
    assert list(book["skipped"].iter_rows(values_only=True)) == [("path", "reason")]
    assert dict(list(book["config"].iter_rows(values_only=True))[1:])["mapping.calm"] == "neutral"
    assert_png(paths["confusion"])


def test_report_without_protocol_raises(tmp_path: Path):
    scores = classification_report(["angry", "sad"], ["angry", "angry"], LABELS)
    report = {"title": "no protocol", "summary": {"uar": scores["uar"], "n": 2}, "per_class": scores["per_class"],
              "confusion": scores["confusion"], "labels": LABELS}
    with pytest.raises(ConfigError, match="protocol"):
        write_report(tmp_path / "out", report)
    with pytest.raises(ConfigError, match="protocol"):
        write_report(tmp_path / "out", report | {"protocol": None})
    assert not (tmp_path / "out" / "report.json").exists()


def test_support_that_does_not_add_up_raises(tmp_path: Path):
    scores = classification_report(["angry", "sad", "sad"], ["angry", "angry", "sad"], LABELS)
    report = {"title": "t", "protocol": {"protocol": "loso"}, "summary": {"uar": scores["uar"], "n": 4},
              "per_class": scores["per_class"], "confusion": scores["confusion"], "labels": LABELS}
    with pytest.raises(ConfigError, match="support adds up to 3"):
        write_report(tmp_path, report)
    bad_confusion = [row[:] for row in scores["confusion"]]
    bad_confusion[0][0] += 1
    with pytest.raises(ConfigError, match="row sums"):
        write_report(tmp_path, report | {"summary": {"n": 3}, "confusion": bad_confusion})
    with pytest.raises(ConfigError, match="unknown \\['typo'\\]"):
        write_report(tmp_path, report | {"summary": {"n": 3}, "typo": 1})


def test_run_report_refuses_an_unfinished_run(run_dir: Path):
    (run_dir / "summary.json").unlink()
    with pytest.raises(FileNotFoundError, match="summary.json"):
        write_run_report(run_dir)


def test_heatmap_png_with_a_missing_cell(tmp_path: Path):
    matrix = pd.DataFrame([[0.71, 0.42], [np.nan, 0.66]], index=pd.Index(["EMODB", "RAVDESS"], name="source"),
                          columns=pd.Index(["EMODB", "RAVDESS"], name="target"))
    path = heatmap_png(tmp_path / "cross" / "uar.png", matrix, title="cross-corpus UAR", fmt=".2f")
    assert path == tmp_path / "cross" / "uar.png"
    assert_png(path)


def test_run_report_states_normalisation_and_transductive(run_dir: Path):
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["normalization"] = {"mode": "per_speaker", "transductive": True, "statistics": "each speaker's own frames"}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    report = write_run_report(run_dir)
    assert report["protocol"]["normalization"] == "per_speaker" and report["protocol"]["transductive"] is True
    _, rows = sheet_rows(load_workbook(run_dir / "report.xlsx")["summary"])
    protocol = {key: value for section, key, value in rows if section == "protocol"}
    assert protocol["normalization"] == "per_speaker" and protocol["transductive"] in (True, "True", "true")
