"""EMODB (Berlin Database of Emotional Speech): `<root>/wav/03a01Fa.wav`.

Name: chars 0-1 speaker, 2-4 text code, 5 emotion letter, 6 version.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ser_dist.corpora.base import OnError, RowCollector, check_root
from ser_dist.corpora.manifest import PrepareReport, build_manifest
from ser_dist.emotions import EMODB_CODES, decode
from ser_dist.errors import CorpusNotFoundError, ManifestError

CORPUS = "EMODB"
FEMALE_SPEAKERS = frozenset({"08", "09", "13", "14", "16"})
MALE_SPEAKERS = frozenset({"03", "10", "11", "12", "15"})
_NAME = re.compile(r"^(?P<speaker>\d{2})(?P<text>[a-z]\d{2})(?P<emotion>[A-Z])(?P<version>[a-z])$")


def parse_emodb_name(path: Path) -> dict:
    match = _NAME.match(path.stem)
    if match is None:
        raise ManifestError(f"file name {path.name!r} does not parse as EMODB's <speaker 2 digits><text a01><emotion letter><version>.wav")
    speaker = match["speaker"]
    if speaker in FEMALE_SPEAKERS:
        gender = "F"
    elif speaker in MALE_SPEAKERS:
        gender = "M"
    else:
        raise ManifestError(f"speaker {speaker!r} in {path.name!r} is not one of EMODB's ten speakers")
    emotion = decode(match["emotion"], EMODB_CODES, corpus=CORPUS)
    return {
        "utterance_id": path.stem,
        "corpus": CORPUS,
        "speaker": f"{CORPUS}_{speaker}",
        "gender": gender,
        "session": "",
        "label": emotion.value,
        "source_label": match["emotion"],
    }


def prepare_emodb(root: Path | str, *, on_error: OnError = "raise") -> tuple[pd.DataFrame, PrepareReport]:
    root = check_root(Path(root), corpus=CORPUS, expected="wav/")
    wav_dir = root / "wav"
    if not wav_dir.is_dir():
        raise CorpusNotFoundError(f"{CORPUS}: {wav_dir} is missing; the published layout is <root>/wav/03a01Fa.wav")
    report = PrepareReport(CORPUS, str(root))
    collector = RowCollector(report, on_error)
    for path in sorted(p for p in wav_dir.iterdir() if p.is_file()):
        if path.suffix.lower() != ".wav":
            collector.skip(path, "not a .wav file")
            continue
        collector.add(path, lambda path=path: parse_emodb_name(path))
    if not collector.rows and not report.skipped:
        raise CorpusNotFoundError(f"{CORPUS}: {wav_dir} holds no .wav files")
    manifest = build_manifest(collector.rows, corpus=CORPUS)
    report.n_utterances = len(manifest)
    return manifest, report
