"""Feature matrices -> normalised, padded, length-bucketed batches for one fold.

Normalisation statistics come only from the rows a fold trains on (`train_global`), or from each
speaker's own frames (`per_speaker`, transductive: a test speaker's unlabelled audio sets its own
statistics). Validation and test rows never contribute to `train_global` statistics.

`per_corpus` (pooled corpora, training/pool.py): each corpus standardised with the statistics of ITS rows in
the fold's training part. A corpus with no training rows (the held-out corpus of leave-one-corpus-out) uses
all of its own frames instead: transductive, its unlabelled audio sets its statistics (`corpus_statistics_source`
says which corpora did so).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Standardizer:
    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)

    @classmethod
    def fit(cls, matrices: list[np.ndarray], *, eps: float = 1e-5) -> Standardizer:
        if not matrices:
            raise ValueError("cannot fit normalisation statistics on zero utterances")
        total = sum(m.shape[0] for m in matrices)
        mean = sum(m.sum(axis=0, dtype=np.float64) for m in matrices) / total
        var = sum(((m - mean) ** 2).sum(axis=0, dtype=np.float64) for m in matrices) / total
        return cls(mean.astype(np.float32), np.sqrt(var + eps).astype(np.float32))

    @classmethod
    def identity(cls, dim: int) -> Standardizer:
        """For features that are normalised already."""
        return cls(np.zeros(dim, np.float32), np.ones(dim, np.float32))

    def apply(self, matrix: np.ndarray) -> np.ndarray:
        return ((matrix - self.mean) / self.std).astype(np.float32, copy=False)

    def to_tensors(self, prefix: str = "norm") -> dict[str, torch.Tensor]:
        return {f"{prefix}.mean": torch.from_numpy(self.mean.copy()), f"{prefix}.std": torch.from_numpy(self.std.copy())}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str = "norm") -> Standardizer:
        return cls(tensors[f"{prefix}.mean"].numpy().astype(np.float32), tensors[f"{prefix}.std"].numpy().astype(np.float32))


def normalise(matrices: list[np.ndarray], speakers: list[str], *, train_positions: np.ndarray, mode: str,
              corpora: list[str] | None = None) -> tuple[list[np.ndarray], Standardizer]:
    """Normalised copies of `matrices`; returns the training-part Standardizer too (stored in checkpoints).

    `corpora` (one per matrix) is needed by mode `per_corpus` only."""
    global_stats = Standardizer.fit([matrices[i] for i in train_positions])
    if mode == "train_global":
        return [global_stats.apply(m) for m in matrices], global_stats
    if mode == "per_corpus":
        if corpora is None or len(corpora) != len(matrices):
            raise ValueError(f"per_corpus normalisation needs one corpus per utterance ({len(matrices)}), got "
                             f"{'none' if corpora is None else len(corpora)}")
        stats = corpus_statistics(matrices, corpora, train_positions)
        return [stats[c].apply(m) for m, c in zip(matrices, corpora, strict=True)], global_stats
    if mode == "per_speaker":
        return normalise_per_speaker(matrices, speakers), global_stats
    raise ValueError(f"unknown normalisation mode {mode!r}; expected train_global, per_speaker or per_corpus")


def corpus_statistics_source(corpora: list[str], train_positions: np.ndarray) -> dict[str, str]:
    """Per corpus: "training part" (its training rows set its statistics) or "own frames (transductive)"."""
    in_train = {corpora[i] for i in np.asarray(train_positions, dtype=np.int64)}
    return {c: "training part" if c in in_train else "own frames (transductive)" for c in sorted(set(corpora))}


def corpus_statistics(matrices: list[np.ndarray], corpora: list[str], train_positions: np.ndarray) -> dict[str, Standardizer]:
    """One Standardizer per corpus: fitted on its training-part rows, or on all its rows when it has none."""
    train = np.asarray(train_positions, dtype=np.int64)
    out = {}
    for corpus, source in corpus_statistics_source(corpora, train).items():
        rows = [i for i in train if corpora[i] == corpus] if source == "training part" else [i for i, c in enumerate(corpora) if c == corpus]
        out[corpus] = Standardizer.fit([matrices[i] for i in rows])
    return out


def normalise_per_speaker(matrices: list[np.ndarray], speakers: list[str]) -> list[np.ndarray]:
    """Each matrix standardised with the mean/std of all frames of its speaker (transductive, label-free)."""
    by_speaker: dict[str, list[int]] = {}
    for i, speaker in enumerate(speakers):
        by_speaker.setdefault(speaker, []).append(i)
    out: list[np.ndarray] = [None] * len(matrices)  # type: ignore[list-item]
    for positions in by_speaker.values():
        stats = Standardizer.fit([matrices[i] for i in positions])
        for i in positions:
            out[i] = stats.apply(matrices[i])
    return out


def length_buckets(lengths: np.ndarray, batch_size: int, *, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Batches of positions with similar lengths; shuffled within and across buckets when `rng` is given."""
    order = np.argsort(lengths, kind="stable")
    if rng is not None:  # jitter lengths so equal-length items mix between epochs
        jitter = rng.uniform(0, max(1.0, 0.1 * float(np.median(lengths))), size=len(lengths))
        order = np.argsort(lengths + jitter, kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def collate(
    matrices: list[np.ndarray], positions: np.ndarray, *, max_frames: int | None = None, rng: np.random.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the chosen matrices into x (B, T, D) and lengths (B,); long ones are randomly cropped when training."""
    chosen = []
    for i in positions:
        m = matrices[i]
        if max_frames is not None and m.shape[0] > max_frames:
            start = int(rng.integers(0, m.shape[0] - max_frames + 1)) if rng is not None else 0
            m = m[start : start + max_frames]
        chosen.append(torch.from_numpy(np.ascontiguousarray(m)))
    lengths = torch.tensor([c.shape[0] for c in chosen], dtype=torch.long)
    x = torch.nn.utils.rnn.pad_sequence(chosen, batch_first=True)  # (B, T, D)
    return x, lengths


def spec_augment(x: torch.Tensor, lengths: torch.Tensor, *, generator: torch.Generator, time_masks: int, time_frac: float, feature_masks: int, feature_frac: float) -> torch.Tensor:
    """Zero (= the mean after normalisation) random time spans and feature bands of each item."""
    x = x.clone()
    batch, _, dim = x.shape
    for b in range(batch):
        length = int(lengths[b])
        for _ in range(time_masks):
            width = int(torch.randint(0, max(1, int(length * time_frac)) + 1, (1,), generator=generator))
            start = int(torch.randint(0, max(1, length - width + 1), (1,), generator=generator))
            x[b, start : start + width] = 0
        for _ in range(feature_masks):
            width = int(torch.randint(0, max(1, int(dim * feature_frac)) + 1, (1,), generator=generator))
            start = int(torch.randint(0, max(1, dim - width + 1), (1,), generator=generator))
            x[b, :length, start : start + width] = 0
    return x
