"""Cross-corpus emotion mapping: one explicit table from canonical labels onto a shared label space.

The default table is the seed's (`ser_dist.emotions.CROSS_CORPUS_MAPPING`): EMODB boredom -> neutral,
RAVDESS calm -> neutral, IEMOCAP excited -> happy, frustrated -> angry, surprise -> neutral. A label
missing from the table maps to itself. A user file (YAML or JSON, ``{from: to}``) overrides or adds
entries; ``to: null`` leaves that class out on both sides, and ``surprise: surprise`` undoes a default.

The same table maps both corpora. The scored classes are the shared labels present on *both* sides
(`common_label_space`). Then:

- a target utterance whose shared label is not common is removed from the score, and counted per
  original label (`removed_counts`);
- the source model's probabilities are summed per shared label: p(shared) = sum of p(source classes
  mapped to it) (`merge_probabilities`). Mass of source classes outside the common space is dropped,
  not renormalised; the prediction is the argmax over the common classes, which renormalising would
  not change.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ser_dist.emotions import CROSS_CORPUS_MAPPING, parse_emotion
from ser_dist.errors import ConfigError

DEFAULT_SOURCE = "default (ser_dist.emotions.CROSS_CORPUS_MAPPING)"


def default_table() -> dict[str, str | None]:
    return {source.value: target.value for source, target in CROSS_CORPUS_MAPPING.items()}


@dataclass(frozen=True)
class LabelMapping:
    """canonical label -> shared label (None: left out); labels not in `table` map to themselves."""

    table: dict[str, str | None] = field(default_factory=default_table)
    source: str = DEFAULT_SOURCE  # where the table came from, for reports
    overrides: dict[str, str | None] = field(default_factory=dict)  # entries a user file changed or added

    def shared(self, label: str) -> str | None:
        return self.table.get(str(label), str(label))

    def to_dict(self) -> dict:
        return {"table": dict(sorted(self.table.items())), "source": self.source, "overrides": dict(sorted(self.overrides.items()))}


def load_mapping(path: Path | str, *, base: LabelMapping | None = None) -> LabelMapping:
    """The default table (or `base`) updated with a YAML/JSON file of ``{from: to}`` entries.

    Names are canonical emotions (case-insensitive); an unknown one raises UnknownNameError listing
    the valid names. ``to`` may be null to leave a class out of the score.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mapping file {path} does not exist")
    text = path.read_text()
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"mapping file {path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"mapping file {path} must hold one mapping {{from: to}}, e.g. 'boredom: neutral'; got {type(raw).__name__}")
    overrides: dict[str, str | None] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not (value is None or isinstance(value, str)):
            raise ConfigError(f"mapping file {path}: entry {key!r}: {value!r} must map an emotion name to an emotion name or null")
        overrides[parse_emotion(key).value] = None if value is None else parse_emotion(value).value
    base = base or LabelMapping()
    return LabelMapping(table=base.table | overrides, source=str(path), overrides=base.overrides | overrides)


def map_labels(labels: Iterable[str], mapping: LabelMapping) -> list[str | None]:
    """The shared label of each canonical label (None where the table leaves it out)."""
    return [mapping.shared(label) for label in labels]


def common_label_space(source_labels: Iterable[str], target_labels: Iterable[str], mapping: LabelMapping) -> list[str]:
    """Shared labels that both sides have (sorted): the classes a cross-corpus score is computed on."""
    source = set(map_labels(source_labels, mapping)) - {None}
    target = set(map_labels(target_labels, mapping)) - {None}
    return sorted(source & target)


def removed_counts(target_labels: Sequence[str], common: Sequence[str], mapping: LabelMapping) -> dict[str, int]:
    """Per original target label, how many utterances fall outside the common space (and are not scored)."""
    keep = set(common)
    counts = Counter(str(label) for label in target_labels if mapping.shared(label) not in keep)
    return dict(sorted(counts.items()))


def merge_probabilities(probabilities: np.ndarray, source_labels: Sequence[str], common: Sequence[str], mapping: LabelMapping) -> np.ndarray:
    """(N, C_source) source-class probabilities -> (N, len(common)): each column sums its source classes.

    Source classes whose shared label is not common contribute nothing (their mass is dropped).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(source_labels):
        raise ConfigError(f"probabilities have shape {probabilities.shape}; expected (N, {len(source_labels)}) for labels {list(source_labels)}")
    index = {label: k for k, label in enumerate(common)}
    merge = np.zeros((len(source_labels), len(common)))  # (C_source, K): 1 where a source class feeds a shared one
    for row, label in enumerate(source_labels):
        shared = mapping.shared(label)
        if shared in index:
            merge[row, index[shared]] = 1.0
    return probabilities @ merge


def left_out_source_classes(source_labels: Sequence[str], common: Sequence[str], mapping: LabelMapping) -> list[str]:
    """Source classes with no counterpart on the target side (their probability mass is dropped)."""
    keep = set(common)
    return [str(label) for label in source_labels if mapping.shared(label) not in keep]
