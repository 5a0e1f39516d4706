"""TESS (Toronto Emotional Speech Set): `<root>/OAF_angry/OAF_back_angry.wav`.

Two female speakers, OAF (older) and YAF (younger), say 200 words in 7 emotions; each speaker-emotion
pair is a folder `<speaker>_<emotion>` and each file `<speaker>_<word>_<emotion>.wav`. Emotions: angry,
disgust, fear, happy, neutral, ps (pleasant surprise), sad. Published copies spell some folders
`YAF_pleasant_surprised` / `OAF_Pleasant_surprise` and mix case in names, so emotions are matched
case-insensitively. The root may hold the folders directly or one folder that holds them (the
download's "TESS Toronto emotional speech set data/").
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ser_dist.corpora.base import OnError, RowCollector, check_root
from ser_dist.corpora.manifest import PrepareReport, build_manifest
from ser_dist.emotions import TESS_CODES, Emotion, decode
from ser_dist.errors import CorpusNotFoundError, ManifestError

CORPUS = "TESS"
SPEAKERS: tuple[str, ...] = ("OAF", "YAF")  # both female
# Folder spellings of the surprise class in published copies; the other folders use the file's code.
_FOLDER_EMOTIONS: dict[str, Emotion] = {
    "pleasant_surprise": Emotion.SURPRISE, "pleasant_surprised": Emotion.SURPRISE, "surprise": Emotion.SURPRISE,
}
_FOLDER = re.compile(r"^(?P<speaker>OAF|YAF)_(?P<emotion>.+)$", re.IGNORECASE)
_NAME = re.compile(r"^(?P<speaker>OAF|YAF)_(?P<word>.+)_(?P<emotion>[A-Za-z]+)$", re.IGNORECASE)


def folder_emotion(name: str) -> tuple[str, Emotion] | None:
    """(speaker, emotion) of a `<speaker>_<emotion>` folder name; None when it is not one."""
    match = _FOLDER.match(name)
    if match is None:
        return None
    code = match["emotion"].lower()
    emotion = _FOLDER_EMOTIONS.get(code) or TESS_CODES.get(code)
    return (match["speaker"].upper(), emotion) if emotion is not None else None


def parse_tess_name(path: Path) -> dict:
    match = _NAME.match(path.stem)
    if match is None:
        raise ManifestError(f"file name {path.name!r} does not parse as TESS's <OAF|YAF>_<word>_<emotion>.wav")
    speaker, code = match["speaker"].upper(), match["emotion"].lower()
    emotion = decode(code, TESS_CODES, corpus=CORPUS)
    folder = folder_emotion(path.parent.name)
    if folder is not None and folder != (speaker, emotion):
        raise ManifestError(
            f"{path.name!r} names {speaker} {emotion.value} but lies in folder {path.parent.name!r} ({folder[0]} {folder[1].value})"
        )
    return {
        "utterance_id": path.stem,
        "corpus": CORPUS,
        "speaker": f"{CORPUS}_{speaker}",
        "gender": "F",
        "session": "",
        "label": emotion.value,
        "source_label": code,
    }


def _emotion_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and folder_emotion(p.name) is not None)


def prepare_tess(root: Path | str, *, on_error: OnError = "raise") -> tuple[pd.DataFrame, PrepareReport]:
    root = check_root(Path(root), corpus=CORPUS, expected="OAF_angry ... YAF_sad")
    base = root
    if not _emotion_dirs(base):
        nested = [p for p in root.iterdir() if p.is_dir() and _emotion_dirs(p)]
        if len(nested) == 1:
            base = nested[0]
    emotion_dirs = _emotion_dirs(base)
    if not emotion_dirs:
        raise CorpusNotFoundError(
            f"{CORPUS}: {root} holds no <OAF|YAF>_<emotion> folders; the published layout is <root>/OAF_angry/OAF_back_angry.wav"
        )
    report = PrepareReport(CORPUS, str(root))
    collector = RowCollector(report, on_error)
    for entry in sorted(base.iterdir()):
        if entry not in emotion_dirs:
            collector.skip(entry, "not a <OAF|YAF>_<emotion> folder of TESS "
                                  f"(emotions: {', '.join(TESS_CODES)}, pleasant_surprise(d))")
    for emotion_dir in emotion_dirs:
        for path in sorted(emotion_dir.iterdir()):
            if not path.is_file() or path.suffix.lower() != ".wav":
                collector.skip(path, "not a .wav file")
                continue
            collector.add(path, lambda path=path: parse_tess_name(path))
    if not collector.rows and not report.skipped:
        raise CorpusNotFoundError(f"{CORPUS}: the emotion folders under {base} hold no .wav files")
    manifest = build_manifest(collector.rows, corpus=CORPUS)
    report.n_utterances = len(manifest)
    return manifest, report
