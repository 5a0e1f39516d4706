"""The manifest: one row per utterance, a fixed schema shared by every corpus reader."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import soundfile as sf

from ser_dist.errors import AudioError, ManifestError

# utterance_id  str    unique within the corpus, stable across runs (file stem for EMODB/RAVDESS)
# corpus        str    EMODB | RAVDESS | IEMOCAP | SAVEE | TESS | CREMAD, or a table corpus's name
# speaker       str    corpus-prefixed speaker id, e.g. "EMODB_03", "RAVDESS_07", "IEMOCAP_Ses01F"
# gender        str    "F" | "M" | "unknown" (CREMA-D without its demographics file, tables without it)
# session       str    recording session ("" when the corpus has none)
# label         str    canonical emotion (ser_dist.emotions.Emotion value)
# source_label  str    the corpus's own code (e.g. "W", "05", "exc")
# path          str    absolute path of the audio file
# duration_s    float  duration from the file header
# sample_rate   int    native sample rate from the file header
# channels      int    native channel count from the file header
MANIFEST_COLUMNS: tuple[str, ...] = (
    "utterance_id",
    "corpus",
    "speaker",
    "gender",
    "session",
    "label",
    "source_label",
    "path",
    "duration_s",
    "sample_rate",
    "channels",
)


@dataclass
class SkippedItem:
    path: str
    reason: str


@dataclass
class PrepareReport:
    """What a corpus reader found: kept utterances and everything it skipped, with the reason."""

    corpus: str
    root: str
    n_utterances: int = 0
    skipped: list[SkippedItem] = field(default_factory=list)
    excluded_by_label_set: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "corpus": self.corpus,
            "root": self.root,
            "n_utterances": self.n_utterances,
            "n_skipped": len(self.skipped),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "excluded_by_label_set": self.excluded_by_label_set,
        }


def read_audio_header(path: Path) -> tuple[float, int, int]:
    """(duration_s, sample_rate, channels) from the header; raises AudioError naming the file."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/TypeError variously
        raise AudioError(path, f"not a readable audio file ({exc})") from exc
    if info.frames == 0:
        raise AudioError(path, "the file holds no samples")
    return info.frames / info.samplerate, int(info.samplerate), int(info.channels)


def build_manifest(rows: list[dict], *, corpus: str) -> pd.DataFrame:
    """Rows (dicts with MANIFEST_COLUMNS) -> DataFrame, checking uniqueness of utterance ids."""
    frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    duplicated = frame["utterance_id"][frame["utterance_id"].duplicated(keep=False)]
    if not duplicated.empty:
        clashes = frame[frame["utterance_id"].isin(duplicated)]["path"].tolist()
        raise ManifestError(
            f"{corpus}: duplicate utterance ids {sorted(set(duplicated))[:5]} from files {clashes[:6]}; "
            "each utterance must appear once in the corpus folder"
        )
    frame = frame.astype(
        {"duration_s": "float64", "sample_rate": "int64", "channels": "int64"}
    ).sort_values("utterance_id", kind="stable")
    return frame.reset_index(drop=True)
