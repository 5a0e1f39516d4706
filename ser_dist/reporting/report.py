"""Reports of a training run or an evaluation: report.json, report.xlsx and PNG figures, one folder each.

A report is one dict (see `write_report`); report.json holds it as it is, and every number in
report.xlsx is read from that same dict, so the two never disagree (floats in the xlsx carry 16
significant digits, openpyxl's "%.16g"; Excel itself keeps 15). The protocol (speaker-independent or
not, folds, seed) is required and heads the "summary" sheet. A value that is not a finite number
(NaN) is null in the JSON and an empty cell in the sheet.

Files written into the report folder::

    report.json    the report dict
    report.xlsx    sheets: summary, per_fold, per_class, confusion, config, skipped
    confusion.png  counts and row-normalised %
    curves.png     train loss, validation loss, validation UAR per epoch, one line per fold (runs only)
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from openpyxl import Workbook
from openpyxl.styles import Font

from ser_dist.errors import ConfigError
from ser_dist.reporting.plots import confusion_png, curves_png
from ser_dist.runs import RunFolder

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_XLSX = "report.xlsx"
CONFUSION_PNG = "confusion.png"
CURVES_PNG = "curves.png"
SHEETS: tuple[str, ...] = ("summary", "per_fold", "per_class", "confusion", "config", "skipped")
REQUIRED_KEYS: tuple[str, ...] = ("title", "protocol", "summary", "per_class", "confusion", "labels")
OPTIONAL_KEYS: tuple[str, ...] = ("folds", "config", "skipped")
PER_CLASS_FIELDS: tuple[str, ...] = ("precision", "recall", "f1", "support")
FOLD_FIELDS: tuple[str, ...] = (
    "fold", "test_speakers", "n_train", "n_val", "n_test", "uar", "war", "macro_f1", "best_epoch", "best_val_uar", "epochs_run",
)
SUMMARY_FIELDS: tuple[str, ...] = (  # summary.json keys shown as the run's headline, in this order
    "run", "uar", "war", "macro_f1", "fold_uar", "fold_war", "features", "model_selection", "wall_seconds", "folds_trained_this_run",
)


def write_report(out_dir: Path | str, report: dict, *, histories: Mapping[str, pd.DataFrame] | None = None) -> dict[str, Path]:
    """Write report.json, report.xlsx, confusion.png (and curves.png when `histories` is given) into out_dir.

    `report` keys: title (str), protocol (dict, required), summary (headline numbers; `n` = number of
    test items), per_class ({label: {precision, recall, f1, support}}), confusion (counts, true x
    predicted, in `labels` order), labels; optional: folds (one dict per fold), config (nested dict,
    flattened to dotted keys in the sheet), skipped (dicts with path and reason). Raises ConfigError
    when a key is missing or the numbers disagree (per-class support must add up to summary["n"] and
    equal the confusion row sums). `histories` maps a fold name to its per-epoch table (epoch,
    train_loss, val_loss, val_uar). Returns {"json", "xlsx", "confusion"[, "curves"]} -> path.
    """
    report = checked_report(report)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / REPORT_JSON, "xlsx": out_dir / REPORT_XLSX}
    _write_atomic(paths["json"], lambda tmp: tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n"))
    _write_atomic(paths["xlsx"], lambda tmp: _workbook(report).save(tmp))
    paths["confusion"] = confusion_png(out_dir / CONFUSION_PNG, report["confusion"], report["labels"], title=report["title"])
    if histories:
        paths["curves"] = curves_png(out_dir / CURVES_PNG, histories, title=report["title"])
    logger.info("report %r written to %s", report["title"], out_dir)
    return paths


def write_run_report(run_dir: Path | str | RunFolder) -> dict:
    """Report of a finished k-fold run folder (summary.json, run_config.json, fold_<k>/); returns the report dict.

    Writes run_dir/report.json, report.xlsx, confusion.png and curves.png. The pooled numbers come
    from summary.json, the per-fold rows from each fold's result.json, the curves from history.csv,
    and the skipped files from the feature metadata recorded in run_config.json.
    """
    run = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
    run_dir = run.local
    summary = run.read_summary()
    run_config = run.read_run_config()
    if not run_config:
        logger.warning("%s is missing: the report's config and skipped sheets will be empty", run.run_config_file.redacted())

    results, histories = [], {}
    for fold in summary.get("folds", []):
        results.append(run.read_result(fold["fold"]))
        history = run.read_history(fold["fold"])
        if history is not None:
            histories[run.fold_dir(fold["fold"]).name] = history
    n_test = summary.get("n_test")
    if results and sum(r["n_test"] for r in results) != n_test:
        raise ConfigError(
            f"{run_dir}: the folds' test sets hold {sum(r['n_test'] for r in results)} items but summary.json "
            f"reports n_test={n_test}; the run folder mixes results of different runs"
        )

    protocol = summary.get("protocol") or run_config.get("protocol")
    normalization = summary.get("normalization")
    if protocol and isinstance(normalization, Mapping):  # how inputs were normalised, and whether that read test audio
        protocol = dict(protocol) | {"normalization": normalization.get("mode"), "transductive": normalization.get("transductive")}
    skipped = _skipped_files(run_config.get("feature_metadata", {}))
    headline = {key: summary[key] for key in SUMMARY_FIELDS[:4] if key in summary}
    headline |= {"n": n_test, "n_folds": len(results), "n_skipped": len(skipped)}
    headline |= {key: summary[key] for key in SUMMARY_FIELDS[4:] if key in summary}
    report = {
        "title": f"{summary.get('run', run_dir.name)}: {(protocol or {}).get('protocol', '?')}, {len(results)} folds",
        "protocol": protocol,
        "summary": headline,
        "folds": [_fold_row(result) for result in results],
        "per_class": summary.get("per_class"),
        "confusion": summary.get("confusion"),
        "labels": summary.get("labels"),
        "config": _run_config_rows(run_config) if run_config else {"train_config": summary.get("train_config", {})},
        "skipped": skipped,
    }
    report = checked_report(report)
    write_report(run_dir, report, histories=histories or None)
    return report


def checked_report(report: Mapping) -> dict:
    """`report` as plain JSON types (NaN -> None), after checking its keys and that its numbers agree."""
    if not isinstance(report, Mapping):
        raise ConfigError(f"a report is a dict, got {type(report).__name__}")
    if not report.get("protocol"):
        raise ConfigError(
            "a report needs a 'protocol' (e.g. ser_dist.training.splits.protocol_description(...)): speaker-independent "
            f"or not, folds, seed; the report has keys {sorted(report)}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in report or report[key] is None]
    unknown = sorted(set(report) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if missing or unknown:
        raise ConfigError(
            f"report keys: missing {missing}, unknown {unknown}; expected {', '.join(REQUIRED_KEYS)} "
            f"and optionally {', '.join(OPTIONAL_KEYS)}"
        )
    report = _jsonable(dict(report))
    report.setdefault("folds", [])
    report.setdefault("config", {})
    report.setdefault("skipped", [])
    for key, kind in (("protocol", dict), ("summary", dict), ("per_class", dict), ("config", dict), ("folds", list), ("skipped", list)):
        if not isinstance(report[key], kind):
            raise ConfigError(f"report[{key!r}] must be a {kind.__name__}, got {type(report[key]).__name__}")
    _check_numbers(report)
    for item in report["skipped"]:
        if not isinstance(item, dict) or "path" not in item or "reason" not in item:
            raise ConfigError(f"each skipped file needs a path and a reason, got {item!r}")
    return report


def _check_numbers(report: dict) -> None:
    labels, per_class, summary = report["labels"], report["per_class"], report["summary"]
    if not labels or len(set(labels)) != len(labels):
        raise ConfigError(f"labels must be a non-empty list without repeats, got {labels}")
    if set(per_class) != set(labels):
        raise ConfigError(f"per_class labels {sorted(per_class)} differ from labels {labels}")
    report["per_class"] = per_class = {label: per_class[label] for label in labels}  # in the confusion matrix's order
    for label, scores in per_class.items():
        absent = [f for f in PER_CLASS_FIELDS if f not in scores]
        if absent:
            raise ConfigError(f"per_class[{label!r}] lacks {absent}; expected {', '.join(PER_CLASS_FIELDS)}")
    confusion = np.asarray(report["confusion"])
    if confusion.shape != (len(labels), len(labels)) or not np.issubdtype(confusion.dtype, np.integer):
        raise ConfigError(f"confusion must be a {len(labels)}x{len(labels)} matrix of counts, got {report['confusion']!r}")
    if "n" not in summary:
        raise ConfigError(f"summary needs 'n', the number of test items; it has {sorted(summary)}")
    support = [per_class[label]["support"] for label in labels]
    if sum(support) != summary["n"]:
        raise ConfigError(f"per-class support adds up to {sum(support)} ({dict(zip(labels, support, strict=True))}), but summary n = {summary['n']}")
    row_sums = confusion.sum(axis=1).tolist()
    if row_sums != support:
        raise ConfigError(f"confusion row sums {row_sums} differ from per-class support {support} (labels {labels})")


def _fold_row(result: dict) -> dict:
    row = {key: result[key] for key in FOLD_FIELDS if key in result}
    per_class = result.get("report", {}).get("per_class", {})
    if per_class:  # which emotions each held-out speaker/session gets right
        row["recall"] = {label: scores["recall"] for label, scores in per_class.items()}
        row["support"] = {label: scores["support"] for label, scores in per_class.items()}
    return row


def _run_config_rows(run_config: dict) -> dict:
    """run_config.json without what other sheets already show (protocol, labels, skipped files)."""
    config = {key: value for key, value in run_config.items() if key not in ("protocol", "labels")}
    if isinstance(config.get("feature_metadata"), dict):
        config["feature_metadata"] = {k: v for k, v in config["feature_metadata"].items() if k not in ("skipped", "prepare_skipped")}
    return config


def _skipped_files(feature_metadata: dict) -> list[dict]:
    """Files the corpus reader (prepare) or the feature extractor (extract) skipped, with the reason."""
    rows = []
    for stage, key in (("prepare", "prepare_skipped"), ("extract", "skipped")):
        for item in feature_metadata.get(key) or []:
            rows.append({"path": item.get("path"), "reason": item.get("reason"), "stage": stage}
                        | {k: v for k, v in item.items() if k not in ("path", "reason")})
    return rows


# ---------------------------------------------------------------- workbook


def _workbook(report: dict) -> Workbook:
    book = Workbook()
    book.remove(book.active)
    labels = report["labels"]
    summary_rows = [("protocol", key, value) for key, value in _flatten(report["protocol"]).items()]
    summary_rows.append(("report", "title", report["title"]))
    summary_rows += [("summary", key, value) for key, value in _flatten(report["summary"]).items()]

    fold_rows = [_flatten(fold) for fold in report["folds"]]
    fold_columns = _columns(fold_rows)

    skipped_columns = _columns([{"path": None, "reason": None}, *report["skipped"]])
    tables = {
        "summary": (["section", "key", "value"], summary_rows),
        "per_fold": (fold_columns, [[row.get(c) for c in fold_columns] for row in fold_rows]),
        "per_class": (["label", *PER_CLASS_FIELDS], [[label, *(report["per_class"][label][f] for f in PER_CLASS_FIELDS)] for label in labels]),
        "confusion": (["true \\ predicted", *labels], [[label, *row] for label, row in zip(labels, report["confusion"], strict=True)]),
        "config": (["key", "value"], list(_flatten(report["config"]).items())),
        "skipped": (skipped_columns, [[item.get(c) for c in skipped_columns] for item in report["skipped"]]),
    }
    for name in SHEETS:
        header, rows = tables[name]
        sheet = book.create_sheet(name)
        sheet.append(list(header))
        for cell in sheet[1]:
            cell.font = Font(bold=True)
        for row in rows:
            sheet.append([_cell(value) for value in row])
        sheet.freeze_panes = "B2"
        for column in sheet.columns:
            width = max(len(str(c.value)) if c.value is not None else 0 for c in column)
            sheet.column_dimensions[column[0].column_letter].width = min(60, max(8, width + 2))
    return book


def _flatten(mapping: Mapping, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= _flatten(value, prefix=f"{name}.")
        else:
            flat[name] = value
    return flat


def _columns(rows: list[dict]) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        columns |= dict.fromkeys(row)
    return list(columns)


def _cell(value: object) -> object:
    """A value openpyxl stores as a number, bool, text or empty cell; lists become text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in value):
        return ", ".join(str(v) for v in value)
    return json.dumps(value)


# ---------------------------------------------------------------- helpers


def _jsonable(value: object) -> object:
    """Plain JSON types: numpy scalars -> Python, non-finite floats -> None, paths -> str, tuples -> lists."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def _write_atomic(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
