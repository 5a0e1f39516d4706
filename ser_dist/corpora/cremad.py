"""CREMA-D: `<root>/AudioWAV/1001_DFA_ANG_XX.wav`, speakers' sex in `<root>/VideoDemographics.csv`.

Name: actor (1001-1091), sentence (3 letters), emotion (ANG, DIS, FEA, HAP, NEU, SAD), intensity
(LO, MD, HI, or XX unspecified). The root may hold `AudioWAV/` or the wav files directly. Gender comes
from `VideoDemographics.csv` (columns ActorID, Age, Sex, Race, Ethnicity) in the root, or in the parent
of a root that holds the wavs directly; without that file every speaker's gender is "unknown".
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ser_dist.corpora.base import OnError, RowCollector, check_root
from ser_dist.corpora.manifest import PrepareReport, build_manifest
from ser_dist.emotions import CREMAD_CODES, decode
from ser_dist.errors import CorpusNotFoundError, ManifestError

CORPUS = "CREMAD"
ACTORS = range(1001, 1092)
INTENSITIES: tuple[str, ...] = ("LO", "MD", "HI", "XX")
DEMOGRAPHICS_FILE = "VideoDemographics.csv"
_SEX = {"male": "M", "female": "F"}
_NAME = re.compile(r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>[A-Z]{3})_(?P<intensity>[A-Z]{2})$")


def parse_cremad_name(path: Path, genders: dict[int, str] | None = None) -> dict:
    """Row of one file; `genders` (actor -> F/M) from the demographics file, None when it is absent."""
    match = _NAME.match(path.stem)
    if match is None:
        raise ManifestError(
            f"file name {path.name!r} does not parse as CREMA-D's <actor 1001-1091>_<sentence>_<emotion>_<intensity>.wav"
        )
    actor = int(match["actor"])
    if actor not in ACTORS:
        raise ManifestError(f"actor {actor} in {path.name!r} is not one of CREMA-D's actors 1001-1091")
    emotion = decode(match["emotion"], CREMAD_CODES, corpus=CORPUS)
    if match["intensity"] not in INTENSITIES:
        raise ManifestError(f"intensity {match['intensity']!r} in {path.name!r} is not one of {', '.join(INTENSITIES)}")
    if genders is None:
        gender = "unknown"
    elif actor in genders:
        gender = genders[actor]
    else:
        raise ManifestError(f"actor {actor} of {path.name!r} is not listed in {DEMOGRAPHICS_FILE}")
    return {
        "utterance_id": path.stem,
        "corpus": CORPUS,
        "speaker": f"{CORPUS}_{actor}",
        "gender": gender,
        "session": "",
        "label": emotion.value,
        "source_label": match["emotion"],
    }


def read_demographics(path: Path) -> dict[int, str]:
    """actor id -> "F" | "M" from CREMA-D's VideoDemographics.csv."""
    table = pd.read_csv(path, dtype=str)
    missing = {"ActorID", "Sex"} - set(table.columns)
    if missing:
        raise ManifestError(f"{path} lacks column(s) {', '.join(sorted(missing))}; it has {', '.join(table.columns)}")
    genders = {}
    for actor, sex in zip(table["ActorID"], table["Sex"], strict=True):
        gender = _SEX.get(str(sex).strip().lower())
        if gender is None or not str(actor).strip().isdigit():
            raise ManifestError(f"{path}: actor {actor!r} has Sex {sex!r}; expected an actor number and Male or Female")
        genders[int(actor)] = gender
    return genders


def prepare_cremad(root: Path | str, *, on_error: OnError = "raise") -> tuple[pd.DataFrame, PrepareReport]:
    root = check_root(Path(root), corpus=CORPUS, expected="AudioWAV/ (or the .wav files)")
    wav_dir = root / "AudioWAV" if (root / "AudioWAV").is_dir() else root
    files = sorted(p for p in wav_dir.iterdir() if p.is_file())
    if not any(p.suffix.lower() == ".wav" for p in files):
        raise CorpusNotFoundError(f"{CORPUS}: {wav_dir} holds no .wav files; the published layout is <root>/AudioWAV/1001_DFA_ANG_XX.wav")
    candidates = [root / DEMOGRAPHICS_FILE] if wav_dir != root else [root / DEMOGRAPHICS_FILE, root.parent / DEMOGRAPHICS_FILE]
    demographics = next((p for p in candidates if p.is_file()), None)
    genders = read_demographics(demographics) if demographics is not None else None
    report = PrepareReport(CORPUS, str(root))
    collector = RowCollector(report, on_error)
    for path in files:
        if path.suffix.lower() != ".wav":
            if path.name != DEMOGRAPHICS_FILE:
                collector.skip(path, "not a .wav file")
            continue
        collector.add(path, lambda path=path: parse_cremad_name(path, genders))
    manifest = build_manifest(collector.rows, corpus=CORPUS)
    report.n_utterances = len(manifest)
    return manifest, report
