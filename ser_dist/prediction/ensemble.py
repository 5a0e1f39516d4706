"""Ensemble: the one inference path from feature matrices to class probabilities.

Loads checkpoint folders (one, or every fold of a run), checks that they agree (labels, feature
config), and scores feature matrices: each member normalises them as its checkpoint records, and the
members' probabilities are averaged. `Predictor` (audio in), `CrossCorpusEvaluator` (stored target
features) and the seed CLI all score through it, so a model is normalised the same way everywhere.

Normalisation per member (checkpoint.json `normalization`):
- `train_global`: the fold's training-part statistics stored in the checkpoint, unless the caller
  gives statistics of its own for every input (e.g. a target corpus's, for cross-corpus evaluation).
- `per_speaker`: statistics of the input's speaker (or of the input itself, "utterance"), which the
  caller must give: the checkpoint cannot know the speaker.
- `per_corpus` (pooled runs): statistics of the input's corpus (recording condition), which the caller must
  give in the same way (one group name for every input of that corpus); the training-part statistics the
  checkpoint stores are not what the model saw.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ser_dist.errors import ModelLoadError
from ser_dist.model.timnet import TimNet
from ser_dist.training.checkpoint import LoadedModel, load_checkpoint
from ser_dist.training.data import Standardizer
from ser_dist.training.loop import predict_proba

logger = logging.getLogger(__name__)

CHUNK = 256  # inputs normalised at a time (bounds memory for large corpora)
INPUT_STATISTICS_MODES = ("per_speaker", "per_corpus")  # normalisations whose statistics come with the input


@dataclass
class Member:
    """One checkpoint of the ensemble."""

    name: str  # fold_0, ..., or the checkpoint folder's name
    path: Path
    loaded: LoadedModel

    @property
    def source(self) -> str:
        """The checkpoint folder, as a string (for reports)."""
        return str(self.path)

    @property
    def model(self) -> TimNet:
        return self.loaded.model

    @property
    def standardizer(self) -> Standardizer:
        return self.loaded.standardizer

    @property
    def normalization(self) -> str:
        return str(self.loaded.meta.get("normalization", "train_global"))

    @property
    def per_utterance_norm(self) -> bool:  # kept for callers that ask "does it need input statistics?"
        return self.normalization in INPUT_STATISTICS_MODES


class Ensemble:
    """Checkpoints that agree on labels and feature config; probabilities averaged over members."""

    def __init__(self, members: list[Member], *, device: str | torch.device = "cpu", batch_size: int = 32, source: str = ""):
        if not members:
            raise ModelLoadError(f"{source or 'ensemble'}: no checkpoint to load")
        self.members = members
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.source = source
        first = members[0]
        for other in members[1:]:
            differs = [what for what, a, b in (("labels", first.loaded.labels, other.loaded.labels),
                                                ("feature_config", first.loaded.feature_config, other.loaded.feature_config)) if a != b]
            if differs:
                raise ModelLoadError(
                    f"{source}: {other.path} differs from {first.path} in {' and '.join(differs)}; "
                    f"an ensemble needs one label list and one feature config"
                )
        for member in members:
            member.loaded.model.to(self.device).eval()
        self.labels = list(first.loaded.labels)
        self.feature_config = dict(first.loaded.feature_config)  # as stored (provenance such as "encoder" included)

    @classmethod
    def load(cls, folders: Sequence[tuple[str, Path]], *, expected_feature_type: str | None = None,
             device: str | torch.device = "cpu", batch_size: int = 32, source: str = "") -> Ensemble:
        members = [Member(name, Path(path), load_checkpoint(path, expected_feature_type=expected_feature_type)) for name, path in folders]
        return cls(members, device=device, batch_size=batch_size, source=source)

    @property
    def needs_input_statistics(self) -> bool:
        """True when some member was trained per speaker: the caller must give each input's statistics."""
        return any(m.per_utterance_norm for m in self.members)

    @property
    def normalizations(self) -> list[str]:
        return sorted({m.normalization for m in self.members})

    def member_probabilities(self, features: Sequence[np.ndarray], *,
                             override: Standardizer | Sequence[Standardizer] | None = None,
                             speaker_statistics: Sequence[Standardizer | None] | None = None) -> np.ndarray:
        """(n_members, N, C) probabilities of each member, in the ensemble's label order.

        Each member normalises as its checkpoint says: `train_global` members with their stored statistics,
        `per_speaker` members with `speaker_statistics[i]` (one per input; missing ones raise).
        `override` (one Standardizer, or one per input) replaces that for every member, e.g. a target
        corpus's own statistics in a cross-corpus evaluation."""
        features = list(features)
        for name, given in (("override", override), ("speaker_statistics", speaker_statistics)):
            if given is not None and not isinstance(given, Standardizer) and len(given) != len(features):
                raise ValueError(f"{len(given)} {name} for {len(features)} inputs; give one per input")
        out = np.zeros((len(self.members), len(features), len(self.labels)), np.float32)
        order = np.argsort([f.shape[0] for f in features], kind="stable")  # similar lengths share a chunk
        for m, member in enumerate(self.members):
            for start in range(0, len(order), CHUNK):
                chunk = order[start : start + CHUNK]
                normalised = [self._stats(member, override, speaker_statistics, i).apply(features[i]) for i in chunk]
                out[m, chunk] = predict_proba(member.model, normalised, np.arange(len(chunk)), device=self.device,
                                              batch_size=self.batch_size)
        return out

    def probabilities(self, features: Sequence[np.ndarray], **statistics) -> np.ndarray:
        """(N, C): the members' probabilities averaged (same keywords as member_probabilities)."""
        return self.member_probabilities(features, **statistics).mean(axis=0)

    @staticmethod
    def _stats(member: Member, override, speaker_statistics, i: int) -> Standardizer:
        if override is not None:
            return override if isinstance(override, Standardizer) else override[i]
        if member.per_utterance_norm:
            stats = speaker_statistics[i] if speaker_statistics is not None else None
            if stats is None:
                group = "speaker" if member.normalization == "per_speaker" else "corpus"
                raise ModelLoadError(f"{member.path} was trained with {member.normalization} normalisation; each input needs its {group}'s statistics")
            return stats
        return member.standardizer
