"""A corpus described by a table: `--corpus table:PATH`, one row per utterance.

    path,label,speaker[,utterance_id,session,gender,corpus]     CSV (header row) or JSONL (one object a line)

* `path`: audio file; a relative path resolves against the table's folder.
* `label`: a canonical emotion (`ser_dist.emotions.Emotion`, case-insensitive), or a key of the label
  map (`{their_label: canonical_label}`, JSON or YAML; a null value leaves those rows out and counts them).
* `speaker`: prefixed with the corpus name in the manifest (`MYDATA_spk1`), as for the published corpora.
* `utterance_id`: defaults to the file stem. `session`: defaults to "". `gender`: F/M (female/male/w/m
  also accepted), empty or absent -> "unknown".
* The corpus name is the table's file stem, uppercased, with every run of characters other than A-Z
  and 0-9 turned into one "_" (`my data-v2.csv` -> `MY_DATA_V2`); a `corpus` column overrides it and
  must hold one value. A name that is a built-in reader's (EMODB, ...) is refused so that a table's
  manifest and features never mix with that corpus's.

Row numbers in messages are line numbers in the file (a CSV's header is line 1).
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ser_dist.corpora.base import OnError, RowCollector
from ser_dist.corpora.manifest import PrepareReport, build_manifest
from ser_dist.emotions import Emotion, parse_emotion
from ser_dist.errors import (
    ConfigError,
    ConfigFileNotFoundError,
    CorpusNotFoundError,
    ManifestError,
    UnknownLabelError,
)

TABLE_PREFIX = "table:"
TABLE_SUFFIXES: dict[str, str] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
REQUIRED_COLUMNS: tuple[str, ...] = ("path", "label", "speaker")
OPTIONAL_COLUMNS: tuple[str, ...] = ("utterance_id", "session", "gender", "corpus")
GENDER_VALUES: dict[str, str] = {
    "f": "F", "female": "F", "w": "F", "woman": "F",
    "m": "M", "male": "M", "man": "M",
    "": "unknown", "u": "unknown", "unknown": "unknown", "na": "unknown", "n/a": "unknown",
}
_UNSAFE = re.compile(r"[^A-Z0-9]+")
_LISTED_ROWS = 20  # offending rows quoted in one error message

LabelMap = dict[str, Emotion | None]


@dataclass(frozen=True)
class TableRow:
    line: int  # line number in the table file
    values: dict[str, str]


def table_path(corpus: str) -> Path | None:
    """The file of a 'table:PATH' corpus spec; None for a registry name."""
    if not corpus.lower().startswith(TABLE_PREFIX):
        return None
    path = corpus[len(TABLE_PREFIX):].strip()
    if not path:
        raise ConfigError(f"corpus {corpus!r} names no table; write table:PATH (a .csv or .jsonl file)")
    return Path(path).expanduser()


def safe_corpus_name(text: str) -> str:
    name = _UNSAFE.sub("_", text.upper()).strip("_")
    if not name:
        raise ManifestError(f"corpus name {text!r} has no letters or digits; name the table file or its corpus column with some")
    return name


def read_table(path: Path | str) -> list[TableRow]:
    """Rows of a CSV or JSONL table, every value a stripped string ("" where absent)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CorpusNotFoundError(f"corpus table {path} does not exist; pass table:PATH with a .csv or .jsonl file")
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ManifestError(f"corpus table {path}: unknown format {path.suffix!r}; expected one of {', '.join(TABLE_SUFFIXES)}")
    rows = _read_csv(path) if kind == "csv" else _read_jsonl(path)
    columns = set().union(*(row.values for row in rows)) if rows else set()
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if rows and missing:
        raise ManifestError(
            f"corpus table {path} lacks column(s) {', '.join(missing)}; it has {', '.join(sorted(columns)) or 'none'} "
            f"(required: {', '.join(REQUIRED_COLUMNS)}; optional: {', '.join(OPTIONAL_COLUMNS)})"
        )
    return rows


def _read_csv(path: Path) -> list[TableRow]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return []
        names = [name.strip().lower() for name in header]
        rows = []
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue  # blank line
            if len(record) > len(names):
                raise ManifestError(f"corpus table {path}, row {reader.line_num}: {len(record)} cells but the header names {len(names)} columns")
            rows.append(TableRow(reader.line_num, {n: (record[i].strip() if i < len(record) else "") for i, n in enumerate(names)}))
    return rows


def _read_jsonl(path: Path) -> list[TableRow]:
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"corpus table {path}, row {line_no}: not valid JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise ManifestError(f"corpus table {path}, row {line_no}: expected a JSON object, got {type(record).__name__}")
        values = {str(k).strip().lower(): ("" if v is None else str(v).strip()) for k, v in record.items()}
        rows.append(TableRow(line_no, values))
    return rows


def table_corpus_name(path: Path | str, rows: list[TableRow] | None = None) -> str:
    """The manifest's corpus name for a table: its `corpus` column's one value, else the file stem."""
    from ser_dist.corpora import READERS  # the registry imports this module

    path = Path(path).expanduser()
    rows = read_table(path) if rows is None else rows
    given = sorted({row.values.get("corpus", "") for row in rows} - {""})
    if len(given) > 1:
        raise ManifestError(f"corpus table {path}: the corpus column holds {', '.join(given)}; a table is one corpus")
    name = safe_corpus_name(given[0] if given else path.stem)
    if name in READERS:
        raise ManifestError(
            f"corpus table {path} would be named {name}, which is the built-in {name} reader's corpus; "
            "rename the file or give a corpus column (e.g. EMODB_SUBSET) so their manifests and features stay apart"
        )
    return name


def load_label_map(path: Path | str) -> LabelMap:
    """{their_label: canonical emotion or None} from a JSON or YAML object; None leaves those rows out."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigFileNotFoundError(f"label map {path} does not exist")
    text = path.read_text(encoding="utf-8")
    is_json = path.suffix.lower() == ".json"
    try:
        raw = json.loads(text) if is_json else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"label map {path} is not valid {'JSON' if is_json else 'YAML'}: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise ConfigError(f"label map {path} must hold one object {{their_label: canonical_label}}, e.g. 'joy: happy'; got {type(raw).__name__}")
    label_map: LabelMap = {}
    for key, value in raw.items():
        if not (value is None or isinstance(value, str)):
            raise ConfigError(f"label map {path}: entry {key!r}: {value!r} must map a label to an emotion name or null")
        label_map[str(key).strip()] = None if value is None else parse_emotion(value.strip())
    return label_map


def resolve_label(label: str, label_map: LabelMap) -> tuple[bool, Emotion | None]:
    """(known, emotion): the label map first (exact, then case-insensitive), then the canonical names."""
    if label in label_map:
        return True, label_map[label]
    folded = {key.casefold(): value for key, value in label_map.items()}
    if label.casefold() in folded:
        return True, folded[label.casefold()]
    try:
        return True, Emotion(label.lower())
    except ValueError:
        return False, None


def prepare_table(
    table: Path | str, *, on_error: OnError = "raise", label_map: LabelMap | Path | str | None = None
) -> tuple[pd.DataFrame, PrepareReport]:
    """Manifest of the utterances a CSV/JSONL table lists (see the module docstring for its columns)."""
    table = Path(table).expanduser().resolve()
    rows = read_table(table)
    if not rows:
        raise CorpusNotFoundError(f"corpus table {table} holds no rows")
    corpus = table_corpus_name(table, rows)
    if label_map is None:
        label_map = {}
    elif not isinstance(label_map, dict):
        label_map = load_label_map(label_map)
    report = PrepareReport(corpus, str(table))
    collector = RowCollector(report, on_error)

    def row_path(row: TableRow) -> Path | str:
        raw = row.values["path"]
        if not raw:
            return f"{table}:{row.line}"
        path = Path(raw).expanduser()
        return (path if path.is_absolute() else table.parent / path).resolve()

    resolved = [(row, *resolve_label(row.values["label"], label_map)) for row in rows]
    unknown = [(row.line, row.values["label"]) for row, known, _ in resolved if not known]
    if unknown and on_error == "raise":
        raise UnknownLabelError(table, unknown, [e.value for e in Emotion], mapped=sorted(label_map))
    excluded: Counter[str] = Counter()
    kept: list[tuple[TableRow, Emotion]] = []
    for row, known, emotion in resolved:
        if not known:
            valid = [e.value for e in Emotion]
            collector.skip(row_path(row), f"unknown label: {UnknownLabelError.describe([(row.line, row.values['label'])], valid)}")
        elif emotion is None:
            excluded[row.values["label"]] += 1
        else:
            kept.append((row, emotion))

    ids = [row.values.get("utterance_id") or Path(row.values["path"]).stem for row, _ in kept]
    first_line: dict[str, int] = {}
    clashes = [(row.line, uid) for (row, _), uid in zip(kept, ids, strict=True) if first_line.setdefault(uid, row.line) != row.line]
    if clashes and on_error == "raise":
        listed = "; ".join(f"row {line} repeats {uid!r} of row {first_line[uid]}" for line, uid in clashes[:_LISTED_ROWS])
        raise ManifestError(
            f"corpus table {table}: duplicate utterance ids ({len(clashes)}): {listed}; each utterance must appear once "
            "(ids default to the file stem: add an utterance_id column where stems repeat)"
        )
    for (row, emotion), uid in zip(kept, ids, strict=True):
        path = row_path(row)
        if first_line[uid] != row.line:
            collector.skip(path, f"row {row.line}: duplicate utterance id {uid!r} (first in row {first_line[uid]})")
        elif not row.values["path"]:
            collector.skip(path, f"row {row.line}: the path cell is empty")
        elif not row.values["speaker"]:
            collector.skip(path, f"row {row.line}: the speaker cell is empty")
        elif not Path(path).is_file():
            collector.skip(path, f"row {row.line}: listed in {table} but the audio file is missing")
        else:
            collector.add(Path(path), lambda row=row, emotion=emotion, uid=uid: _manifest_row(row, emotion, uid, corpus))
    if not collector.rows and not report.skipped and not excluded:
        raise CorpusNotFoundError(f"corpus table {table} holds no usable rows")
    manifest = build_manifest(collector.rows, corpus=corpus)
    report.n_utterances = len(manifest)
    report.excluded_by_label_set = dict(sorted(excluded.items()))
    return manifest, report


def _manifest_row(row: TableRow, emotion: Emotion, utterance_id: str, corpus: str) -> dict:
    gender_cell = row.values.get("gender", "")
    gender = GENDER_VALUES.get(gender_cell.lower())
    if gender is None:
        raise ManifestError(f"row {row.line}: gender {gender_cell!r} is not one of {', '.join(repr(g) for g in GENDER_VALUES)}")
    return {
        "utterance_id": utterance_id,
        "corpus": corpus,
        "speaker": f"{corpus}_{row.values['speaker']}",
        "gender": gender,
        "session": row.values.get("session", ""),
        "label": emotion.value,
        "source_label": row.values["label"],
    }
