"""RAVDESS, audio-only speech: `<root>/Actor_XX/03-01-EE-II-SS-RR-AA.wav`.

Fields: modality (03 audio-only), vocal channel (01 speech), emotion, intensity, statement,
repetition, actor. Odd actors are male, even female. Song (channel 02) and video files are skipped
and reported, since this reader prepares the speech corpus only.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ser_dist.corpora.base import OnError, RowCollector, check_root
from ser_dist.corpora.manifest import PrepareReport, build_manifest
from ser_dist.emotions import RAVDESS_CODES, decode
from ser_dist.errors import CorpusNotFoundError, ManifestError

CORPUS = "RAVDESS"
_NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
_ACTOR_DIR = re.compile(r"^Actor_(\d{2})$")


def parse_ravdess_name(path: Path) -> dict:
    match = _NAME.match(path.stem)
    if match is None:
        raise ManifestError(f"file name {path.name!r} does not parse as RAVDESS's MM-VV-EE-II-SS-RR-AA.wav")
    modality, channel, emotion_code, intensity, statement, repetition, actor = match.groups()
    if modality != "03" or channel != "01":
        raise ManifestError(
            f"{path.name!r} is modality {modality}, vocal channel {channel}; only audio-only speech (03-01) is prepared"
        )
    if intensity not in ("01", "02"):
        raise ManifestError(f"intensity {intensity!r} in {path.name!r} is not 01 or 02")
    emotion = decode(emotion_code, RAVDESS_CODES, corpus=CORPUS)
    if path.parent.name != f"Actor_{actor}":
        raise ManifestError(f"{path.name!r} names actor {actor} but lies in folder {path.parent.name!r}")
    return {
        "utterance_id": path.stem,
        "corpus": CORPUS,
        "speaker": f"{CORPUS}_{actor}",
        "gender": "M" if int(actor) % 2 else "F",
        "session": "",
        "label": emotion.value,
        "source_label": emotion_code,
    }


def prepare_ravdess(root: Path | str, *, on_error: OnError = "raise") -> tuple[pd.DataFrame, PrepareReport]:
    root = check_root(Path(root), corpus=CORPUS, expected="Actor_01 ... Actor_24")
    actor_dirs = sorted(p for p in root.iterdir() if p.is_dir() and _ACTOR_DIR.match(p.name))
    if not actor_dirs:
        raise CorpusNotFoundError(f"{CORPUS}: {root} holds no Actor_XX folders; the published layout is <root>/Actor_01/03-01-01-01-01-01-01.wav")
    report = PrepareReport(CORPUS, str(root))
    collector = RowCollector(report, on_error)
    for actor_dir in actor_dirs:
        for path in sorted(p for p in actor_dir.iterdir() if p.is_file()):
            if path.suffix.lower() != ".wav":
                collector.skip(path, "not a .wav file")
                continue
            collector.add(path, lambda path=path: parse_ravdess_name(path))
    if not collector.rows and not report.skipped:
        raise CorpusNotFoundError(f"{CORPUS}: the Actor_XX folders under {root} hold no .wav files")
    manifest = build_manifest(collector.rows, corpus=CORPUS)
    report.n_utterances = len(manifest)
    return manifest, report
