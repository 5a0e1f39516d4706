"""What every corpus reader shares: root checks and the raise-or-skip policy for bad files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from ser_dist.corpora.manifest import PrepareReport, SkippedItem, read_audio_header
from ser_dist.errors import AudioError, CorpusNotFoundError, ManifestError, UnknownNameError

OnError = Literal["raise", "skip"]
ON_ERROR_CHOICES: tuple[str, ...] = ("raise", "skip")


def check_root(root: Path, *, corpus: str, expected: str) -> Path:
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise CorpusNotFoundError(
            f"{corpus}: corpus folder {root} does not exist; pass the folder that holds {expected} "
            "(--data-root DIR, or DATA_ROOT=DIR for make)"
        )
    return root


class RowCollector:
    """Turns files into manifest rows; a bad file raises, or with on_error='skip' is listed in the report."""

    def __init__(self, report: PrepareReport, on_error: OnError):
        if on_error not in ON_ERROR_CHOICES:
            raise UnknownNameError("on_error policy", on_error, ON_ERROR_CHOICES)
        self.report, self.on_error, self.rows = report, on_error, []

    def add(self, path: Path, make_row: Callable[[], dict]) -> None:
        try:
            row = make_row()
            duration_s, sample_rate, channels = read_audio_header(path)
        except (ManifestError, UnknownNameError, AudioError) as exc:
            self.skip(path, str(exc))
            return
        row.update(path=str(path), duration_s=duration_s, sample_rate=sample_rate, channels=channels)
        self.rows.append(row)

    def skip(self, path: Path | str, reason: str) -> None:
        if self.on_error == "raise":
            raise ManifestError(f"{path}: {reason} (pass on_error='skip' / --on-error skip to skip and report it)")
        self.report.skipped.append(SkippedItem(str(path), reason))
