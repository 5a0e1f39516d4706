"""The one canonical emotion vocabulary and every corpus's mapping onto it.

Corpus readers translate their own codes (EMODB letters, RAVDESS numbers, IEMOCAP tags) into these
names once, at the door; everything downstream speaks only canonical labels. Cross-corpus label
mappings (which class of one corpus counts as which class of another) also live here, in one table.
"""

from __future__ import annotations

from enum import StrEnum

from ser_dist.errors import UnknownNameError


class Emotion(StrEnum):
    ANGRY = "angry"
    BOREDOM = "boredom"
    CALM = "calm"
    DISGUST = "disgust"
    EXCITED = "excited"
    FEAR = "fear"
    FRUSTRATED = "frustrated"
    HAPPY = "happy"
    NEUTRAL = "neutral"
    OTHER = "other"
    SAD = "sad"
    SURPRISE = "surprise"
    NO_AGREEMENT = "no_agreement"


EMODB_CODES: dict[str, Emotion] = {
    "W": Emotion.ANGRY,  # Wut
    "L": Emotion.BOREDOM,  # Langeweile
    "E": Emotion.DISGUST,  # Ekel
    "A": Emotion.FEAR,  # Angst
    "F": Emotion.HAPPY,  # Freude
    "T": Emotion.SAD,  # Trauer
    "N": Emotion.NEUTRAL,
}

RAVDESS_CODES: dict[str, Emotion] = {
    "01": Emotion.NEUTRAL,
    "02": Emotion.CALM,
    "03": Emotion.HAPPY,
    "04": Emotion.SAD,
    "05": Emotion.ANGRY,
    "06": Emotion.FEAR,
    "07": Emotion.DISGUST,
    "08": Emotion.SURPRISE,
}

IEMOCAP_CODES: dict[str, Emotion] = {
    "neu": Emotion.NEUTRAL,
    "hap": Emotion.HAPPY,
    "exc": Emotion.EXCITED,
    "sad": Emotion.SAD,
    "ang": Emotion.ANGRY,
    "fru": Emotion.FRUSTRATED,
    "fea": Emotion.FEAR,
    "sur": Emotion.SURPRISE,
    "dis": Emotion.DISGUST,
    "oth": Emotion.OTHER,
    "xxx": Emotion.NO_AGREEMENT,
}

SAVEE_CODES: dict[str, Emotion] = {
    "a": Emotion.ANGRY,
    "d": Emotion.DISGUST,
    "f": Emotion.FEAR,
    "h": Emotion.HAPPY,
    "n": Emotion.NEUTRAL,
    "sa": Emotion.SAD,
    "su": Emotion.SURPRISE,
}

TESS_CODES: dict[str, Emotion] = {  # lower-cased; "ps" is pleasant surprise
    "angry": Emotion.ANGRY,
    "disgust": Emotion.DISGUST,
    "fear": Emotion.FEAR,
    "happy": Emotion.HAPPY,
    "neutral": Emotion.NEUTRAL,
    "ps": Emotion.SURPRISE,
    "sad": Emotion.SAD,
}

CREMAD_CODES: dict[str, Emotion] = {
    "ANG": Emotion.ANGRY,
    "DIS": Emotion.DISGUST,
    "FEA": Emotion.FEAR,
    "HAP": Emotion.HAPPY,
    "NEU": Emotion.NEUTRAL,
    "SAD": Emotion.SAD,
}

# The standard IEMOCAP 4-class set: neutral, happy (hap + exc merged), sad, angry.
IEMOCAP_FOUR_CLASS: dict[Emotion, Emotion] = {
    Emotion.NEUTRAL: Emotion.NEUTRAL,
    Emotion.HAPPY: Emotion.HAPPY,
    Emotion.EXCITED: Emotion.HAPPY,
    Emotion.SAD: Emotion.SAD,
    Emotion.ANGRY: Emotion.ANGRY,
}

# Cross-corpus mapping onto a shared label space (the seed's choices): a label missing from this
# table maps to itself. A class with no counterpart on the other side is left out of the score.
CROSS_CORPUS_MAPPING: dict[Emotion, Emotion] = {
    Emotion.BOREDOM: Emotion.NEUTRAL,  # EMODB boredom -> neutral
    Emotion.CALM: Emotion.NEUTRAL,  # RAVDESS calm -> neutral
    Emotion.EXCITED: Emotion.HAPPY,  # IEMOCAP excited -> happy
    Emotion.FRUSTRATED: Emotion.ANGRY,  # IEMOCAP frustrated -> angry
    Emotion.SURPRISE: Emotion.NEUTRAL,  # IEMOCAP surprised -> neutral
}


def decode(code: str, table: dict[str, Emotion], *, corpus: str) -> Emotion:
    """Translate one corpus code; unknown codes raise an error listing the valid ones."""
    try:
        return table[code]
    except KeyError:
        raise UnknownNameError(f"{corpus} emotion code", code, sorted(table)) from None


def parse_emotion(name: str) -> Emotion:
    try:
        return Emotion(name.lower())
    except ValueError:
        raise UnknownNameError("emotion", name, [e.value for e in Emotion]) from None
