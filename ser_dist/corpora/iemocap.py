"""IEMOCAP in its published layout.

    <root>/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt     label lines
    <root>/Session{1..5}/sentences/wav/<dialog>/<utterance>.wav audio

A label line reads ``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]``.
The speaker is the session plus the F/M letter of the utterance id's last segment (``Ses01F``): in
each session one actress and one actor record both sides of the dialogs.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Literal

import pandas as pd

from ser_dist.corpora.base import OnError, RowCollector, check_root
from ser_dist.corpora.manifest import PrepareReport, build_manifest
from ser_dist.emotions import IEMOCAP_CODES, IEMOCAP_FOUR_CLASS, decode
from ser_dist.errors import CorpusNotFoundError, ManifestError, UnknownNameError

CORPUS = "IEMOCAP"
IemocapLabelSet = Literal["four", "all"]
LABEL_SETS: tuple[str, ...] = ("four", "all")
_LABEL_LINE = re.compile(r"^\[(?P<start>[\d.]+) - (?P<end>[\d.]+)\]\t(?P<utt>\S+)\t(?P<code>\S+)\t\[.*\]\s*$")
_UTTERANCE = re.compile(r"^Ses(?P<session>0[1-5])[FM]_(?P<dialog_rest>.+)_(?P<who>[FM])\d{3}$")


def parse_iemocap_utterance(utterance_id: str, code: str) -> dict:
    match = _UTTERANCE.match(utterance_id)
    if match is None:
        raise ManifestError(f"utterance id {utterance_id!r} does not parse as Ses0<s><F|M>_<dialog>_<F|M><nnn>")
    emotion = decode(code, IEMOCAP_CODES, corpus=CORPUS)
    session = f"Session{int(match['session'])}"
    speaker = f"Ses{match['session']}{match['who']}"
    return {
        "utterance_id": utterance_id,
        "corpus": CORPUS,
        "speaker": f"{CORPUS}_{speaker}",
        "gender": match["who"],
        "session": session,
        "label": emotion.value,
        "source_label": code,
    }


def prepare_iemocap(
    root: Path | str, *, on_error: OnError = "raise", label_set: IemocapLabelSet = "four"
) -> tuple[pd.DataFrame, PrepareReport]:
    """Manifest of IEMOCAP. label_set='four' keeps the standard 4 classes (hap+exc -> happy)."""
    if label_set not in LABEL_SETS:
        raise UnknownNameError("IEMOCAP label set", label_set, LABEL_SETS)
    root = check_root(Path(root), corpus=CORPUS, expected="Session1 ... Session5")
    sessions = sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"Session[1-5]", p.name))
    if not sessions:
        raise CorpusNotFoundError(f"{CORPUS}: {root} holds no Session1..Session5 folders")
    report = PrepareReport(CORPUS, str(root))
    collector = RowCollector(report, on_error)
    excluded: Counter[str] = Counter()
    for session_dir in sessions:
        label_dir = session_dir / "dialog" / "EmoEvaluation"
        if not label_dir.is_dir():
            collector.skip(label_dir, "label folder dialog/EmoEvaluation is missing for this session")
            continue
        for label_file in sorted(label_dir.glob("*.txt")):
            if label_file.name.startswith("._"):  # macOS resource forks in some copies
                continue
            for utterance_id, code in _read_label_file(label_file):
                if label_set == "four":
                    try:
                        canonical = decode(code, IEMOCAP_CODES, corpus=CORPUS)
                    except UnknownNameError as exc:
                        collector.skip(label_file, f"{utterance_id}: {exc}")
                        continue
                    if canonical not in IEMOCAP_FOUR_CLASS:
                        excluded[code] += 1
                        continue
                dialog = utterance_id.rsplit("_", 1)[0]
                wav = session_dir / "sentences" / "wav" / dialog / f"{utterance_id}.wav"
                if not wav.is_file():
                    collector.skip(wav, f"listed in {label_file} but the wav file is missing")
                    continue
                collector.add(wav, lambda u=utterance_id, c=code: _row(u, c, label_set))
    if not collector.rows and not report.skipped:
        raise CorpusNotFoundError(f"{CORPUS}: no labelled utterances found under {root}")
    manifest = build_manifest(collector.rows, corpus=CORPUS)
    report.n_utterances = len(manifest)
    report.excluded_by_label_set = dict(sorted(excluded.items()))
    return manifest, report


def _row(utterance_id: str, code: str, label_set: str) -> dict:
    row = parse_iemocap_utterance(utterance_id, code)
    if label_set == "four":
        row["label"] = IEMOCAP_FOUR_CLASS[decode(code, IEMOCAP_CODES, corpus=CORPUS)].value
    return row


def _read_label_file(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("["):
            match = _LABEL_LINE.match(line)
            if match is None:
                raise ManifestError(f"{path}: label line does not parse: {line!r}")
            pairs.append((match["utt"], match["code"]))
    return pairs
