"""Corpus readers: a corpus folder in its published layout -> one manifest (see manifest.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ser_dist.corpora.base import OnError
from ser_dist.corpora.emodb import prepare_emodb
from ser_dist.corpora.iemocap import prepare_iemocap
from ser_dist.corpora.manifest import MANIFEST_COLUMNS, PrepareReport
from ser_dist.corpora.ravdess import prepare_ravdess
from ser_dist.errors import UnknownNameError

READERS: dict[str, Callable[..., tuple[pd.DataFrame, PrepareReport]]] = {
    "EMODB": prepare_emodb,
    "IEMOCAP": prepare_iemocap,
    "RAVDESS": prepare_ravdess,
}
# Folder of each corpus under a data root (DATA_ROOT/emodb, ...).
CORPUS_DIRS: dict[str, str] = {"EMODB": "emodb", "IEMOCAP": "iemocap", "RAVDESS": "ravdess"}
ALIASES: dict[str, str] = {"RAVDE": "RAVDESS"}  # the seed's spelling


def corpus_name(name: str) -> str:
    """Normalise a user-given corpus name ('emodb', 'RAVDE') to its registry key."""
    key = ALIASES.get(name.upper(), name.upper())
    if key not in READERS:
        raise UnknownNameError("corpus", name, sorted(READERS))
    return key


def corpus_root(data_root: Path | str, corpus: str) -> Path:
    return Path(data_root) / CORPUS_DIRS[corpus_name(corpus)]


def prepare_with_report(
    corpus: str, root: Path | str, *, on_error: OnError = "raise", **options
) -> tuple[pd.DataFrame, PrepareReport]:
    """Manifest and report (skipped files with reasons) of the corpus whose folder is `root`."""
    return READERS[corpus_name(corpus)](root, on_error=on_error, **options)


def prepare(corpus: str, root: Path | str, *, on_error: OnError = "raise", **options) -> pd.DataFrame:
    """Manifest of the corpus whose folder is `root`; columns are MANIFEST_COLUMNS."""
    manifest, _ = prepare_with_report(corpus, root, on_error=on_error, **options)
    return manifest


__all__ = ["MANIFEST_COLUMNS", "PrepareReport", "READERS", "corpus_name", "corpus_root", "prepare", "prepare_with_report"]
