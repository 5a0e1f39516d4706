"""Corpus readers: a corpus folder in its published layout -> one manifest (see manifest.py).

A corpus is a registry name (EMODB, ...) or `table:PATH`, a CSV/JSONL table of files (see table.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ser_dist.corpora.base import OnError
from ser_dist.corpora.cremad import prepare_cremad
from ser_dist.corpora.emodb import prepare_emodb
from ser_dist.corpora.iemocap import prepare_iemocap
from ser_dist.corpora.manifest import MANIFEST_COLUMNS, PrepareReport
from ser_dist.corpora.ravdess import prepare_ravdess
from ser_dist.corpora.savee import prepare_savee
from ser_dist.corpora.table import TABLE_PREFIX, prepare_table, table_corpus_name, table_path
from ser_dist.corpora.tess import prepare_tess
from ser_dist.errors import ConfigError, UnknownNameError

READERS: dict[str, Callable[..., tuple[pd.DataFrame, PrepareReport]]] = {
    "EMODB": prepare_emodb,
    "IEMOCAP": prepare_iemocap,
    "RAVDESS": prepare_ravdess,
    "CREMAD": prepare_cremad,
    "SAVEE": prepare_savee,
    "TESS": prepare_tess,
}
# Folder of each corpus under a data root (DATA_ROOT/emodb, ...).
CORPUS_DIRS: dict[str, str] = {
    "EMODB": "emodb", "IEMOCAP": "iemocap", "RAVDESS": "ravdess", "CREMAD": "crema-d", "SAVEE": "savee", "TESS": "tess",
}
ALIASES: dict[str, str] = {"RAVDE": "RAVDESS", "CREMA-D": "CREMAD", "CREMA_D": "CREMAD"}  # RAVDE: the seed's spelling


def corpus_name(name: str) -> str:
    """Normalise a user-given corpus ('emodb', 'RAVDE', 'table:my.csv') to its manifest name."""
    table = table_path(name)
    if table is not None:
        return table_corpus_name(table)
    key = ALIASES.get(name.upper(), name.upper())
    if key not in READERS:
        raise UnknownNameError("corpus", name, [*READERS, f"{TABLE_PREFIX}PATH"])
    return key


POOL_DELIMITER = ","  # --corpus EMODB,RAVDESS,table:more.csv: a pool of corpora


def split_corpora(text: str) -> list[str]:
    """The corpora of a pool spec (`EMODB,RAVDESS`, `EMODB,table:x.csv`), as given; one name gives a list of one.

    Each is checked (unknown names raise, listing the valid ones) and none may repeat. A table path holding a
    comma cannot be pooled this way (its name would be cut at the comma)."""
    parts = [p.strip() for p in str(text).split(POOL_DELIMITER)]
    if not all(parts):
        raise ConfigError(f"corpus list {text!r} has an empty entry; write e.g. EMODB,RAVDESS")
    names = [corpus_name(p) for p in parts]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"corpus list {text!r} names {', '.join(repeated)} more than once; name each corpus once")
    return parts


def corpus_root(data_root: Path | str, corpus: str) -> Path:
    """The folder of a registry corpus under `data_root`; for `table:PATH`, the table file itself."""
    table = table_path(corpus)
    if table is not None:
        return table
    return Path(data_root) / CORPUS_DIRS[corpus_name(corpus)]


def reader_options(corpus: str, *, iemocap_label_set: str | None = None, label_map: str | None = None) -> dict:
    """The reader keyword options that apply to `corpus`; a label map for a non-table corpus is refused."""
    options: dict = {}
    if table_path(corpus) is not None:
        if label_map:
            options["label_map"] = label_map
        return options
    if label_map:
        raise ConfigError(f"a label map applies to table corpora (table:PATH) only, not to {corpus}")
    if corpus_name(corpus) == "IEMOCAP" and iemocap_label_set is not None:
        options["label_set"] = iemocap_label_set
    return options


def prepare_with_report(
    corpus: str, root: Path | str | None = None, *, on_error: OnError = "raise", **options
) -> tuple[pd.DataFrame, PrepareReport]:
    """Manifest and report (skipped files with reasons) of the corpus whose folder is `root`.

    For `table:PATH` the table is the corpus and `root` may be left out.
    """
    table = table_path(corpus)
    if table is not None:
        return prepare_table(root if root is not None else table, on_error=on_error, **options)
    if root is None:
        raise ConfigError(f"prepare {corpus}: pass the corpus folder")
    return READERS[corpus_name(corpus)](root, on_error=on_error, **options)


def prepare(corpus: str, root: Path | str | None = None, *, on_error: OnError = "raise", **options) -> pd.DataFrame:
    """Manifest of the corpus whose folder is `root`; columns are MANIFEST_COLUMNS."""
    manifest, _ = prepare_with_report(corpus, root, on_error=on_error, **options)
    return manifest


__all__ = [
    "MANIFEST_COLUMNS", "POOL_DELIMITER", "PrepareReport", "READERS", "corpus_name", "corpus_root", "prepare", "prepare_with_report",
    "reader_options", "split_corpora",
]
