"""SAVEE (Surrey Audio-Visual Expressed Emotion): `<root>/AudioData/DC/sa03.wav`.

Four male speakers (DC, JE, JK, KL), each a folder; a file name is an emotion prefix (a anger,
d disgust, f fear, h happiness, n neutral, sa sadness, su surprise) and a two-digit sentence number.
The root may hold `AudioData/` or the speaker folders directly.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ser_dist.corpora.base import OnError, RowCollector, check_root
from ser_dist.corpora.manifest import PrepareReport, build_manifest
from ser_dist.emotions import SAVEE_CODES, decode
from ser_dist.errors import CorpusNotFoundError, ManifestError

CORPUS = "SAVEE"
SPEAKERS: tuple[str, ...] = ("DC", "JE", "JK", "KL")  # all male
# Two-letter prefixes first: "sa03" is sadness, not "s" + "a03".
_NAME = re.compile(r"^(?P<emotion>sa|su|a|d|f|h|n)(?P<number>\d{2})$")


def parse_savee_name(path: Path) -> dict:
    match = _NAME.match(path.stem)
    if match is None:
        raise ManifestError(
            f"file name {path.name!r} does not parse as SAVEE's <emotion a|d|f|h|n|sa|su><2 digits>.wav"
        )
    speaker = path.parent.name
    if speaker not in SPEAKERS:
        raise ManifestError(f"{path.name!r} lies in folder {speaker!r}, not one of SAVEE's speakers {', '.join(SPEAKERS)}")
    emotion = decode(match["emotion"], SAVEE_CODES, corpus=CORPUS)
    return {
        "utterance_id": f"{speaker}_{path.stem}",  # sentence names repeat across speakers
        "corpus": CORPUS,
        "speaker": f"{CORPUS}_{speaker}",
        "gender": "M",
        "session": "",
        "label": emotion.value,
        "source_label": match["emotion"],
    }


def prepare_savee(root: Path | str, *, on_error: OnError = "raise") -> tuple[pd.DataFrame, PrepareReport]:
    root = check_root(Path(root), corpus=CORPUS, expected="AudioData/ (or the DC, JE, JK, KL folders)")
    audio_dir = root / "AudioData" if (root / "AudioData").is_dir() else root
    entries = sorted(audio_dir.iterdir())
    speaker_dirs = [p for p in entries if p.is_dir() and p.name in SPEAKERS]
    if not speaker_dirs:
        raise CorpusNotFoundError(
            f"{CORPUS}: {audio_dir} holds none of the speaker folders {', '.join(SPEAKERS)}; "
            "the published layout is <root>/AudioData/DC/a01.wav"
        )
    report = PrepareReport(CORPUS, str(root))
    collector = RowCollector(report, on_error)
    for entry in entries:
        if entry not in speaker_dirs:
            collector.skip(entry, f"not one of SAVEE's speaker folders {', '.join(SPEAKERS)}")
    for speaker_dir in speaker_dirs:
        for path in sorted(speaker_dir.iterdir()):
            if not path.is_file() or path.suffix.lower() != ".wav":
                collector.skip(path, "not a .wav file")
                continue
            collector.add(path, lambda path=path: parse_savee_name(path))
    if not collector.rows and not report.skipped:
        raise CorpusNotFoundError(f"{CORPUS}: the speaker folders under {audio_dir} hold no .wav files")
    manifest = build_manifest(collector.rows, corpus=CORPUS)
    report.n_utterances = len(manifest)
    return manifest, report
