"""Cross-validation folds over a manifest (or a feature table with the same rows): train / val / test.

Every fold holds integer row positions (`iloc`) into the table it was made from. Protocols:

- LOSO           leave one speaker out: one fold per speaker.
- SPEAKER_KFOLD  speakers dealt into n_folds groups of about equal utterance count.
- LOSESSO        leave one session out (IEMOCAP): one fold per `session`.
- KFOLD          utterance-level stratified k-fold (speaker-dependent: speakers appear on both sides).
- KFOLD_PLAIN    utterance-level k-fold, not stratified: sklearn `KFold(n, shuffle=True, random_state=seed)`,
                 the split of TIM-Net's reference code (seed 46 there); speaker-dependent.
- LEAVE_ONE_CORPUS_OUT  pooled tables (`corpus` column, see training/pool.py): one fold per corpus, trained on
                 the others; validation speakers are carved from the training corpora only.

Validation is carved from each fold's training side. For the speaker-independent protocols it is made of
whole training speakers (disjoint from train and test), chosen with the seed so that it holds about
`val_fraction` of the training utterances, covers as many classes as possible, and leaves every class in
train. For KFOLD it is a stratified random `val_fraction` of the training side. `val_fraction=0` gives an
empty validation set.

`groups` names a column whose equal values must always stay on one side of every split (e.g. byte-identical
recordings). For the speaker protocols every group must lie within one speaker (then isolation follows from
speaker isolation); for KFOLD, StratifiedGroupKFold keeps groups whole.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

from ser_dist.errors import ConfigError, UnknownNameError

REQUIRED_COLUMNS: tuple[str, ...] = ("utterance_id", "speaker", "label", "session")
VAL_CANDIDATES = 64  # random speaker orders tried when carving a speaker-disjoint validation set
VAL_SIZE_TOLERANCE = 0.35  # a validation set within +-35% of the requested size counts as good


@dataclass(frozen=True)
class Fold:
    index: int
    train: np.ndarray  # (n_train,) int64 row positions into the table
    val: np.ndarray  # (n_val,) carved from the training side; speaker-disjoint for speaker protocols
    test: np.ndarray  # (n_test,)
    test_speakers: tuple[str, ...]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


class Protocol(StrEnum):
    LOSO = "loso"  # leave one speaker out
    SPEAKER_KFOLD = "speaker_kfold"  # speaker-independent k-fold
    LOSESSO = "losesso"  # leave one session out (IEMOCAP)
    KFOLD = "kfold"  # utterance-level stratified k-fold (speaker-dependent)
    KFOLD_PLAIN = "kfold_plain"  # utterance-level sklearn KFold(shuffle=True), as TIM-Net's code (speaker-dependent)
    LEAVE_ONE_CORPUS_OUT = "leave_one_corpus_out"  # pooled corpora: test on one corpus, train on the others

    @classmethod
    def parse(cls, value: Protocol | str) -> Protocol:
        try:
            return cls(str(value).lower())
        except ValueError:
            raise UnknownNameError("protocol", value, [p.value for p in cls]) from None


SPEAKER_INDEPENDENT: frozenset[Protocol] = frozenset(
    {Protocol.LOSO, Protocol.SPEAKER_KFOLD, Protocol.LOSESSO, Protocol.LEAVE_ONE_CORPUS_OUT}
)

_DESCRIPTIONS: dict[Protocol, str] = {
    Protocol.LOSO: "leave-one-speaker-out: each fold tests on one speaker unseen in training",
    Protocol.SPEAKER_KFOLD: "speaker-independent k-fold: speakers split into k groups of similar size",
    Protocol.LOSESSO: "leave-one-session-out: each fold tests on one recording session",
    Protocol.KFOLD: "stratified utterance-level k-fold: speakers appear in both train and test",
    Protocol.KFOLD_PLAIN: "utterance-level k-fold, sklearn KFold(shuffle=True, random_state=seed) as in TIM-Net's "
    "reference code: speakers appear in both train and test",
    Protocol.LEAVE_ONE_CORPUS_OUT: "leave-one-corpus-out: each fold tests on one corpus of the pool, trained on the others "
    "(no speaker, recording condition or language of the test corpus seen in training)",
}


def protocol_description(
    protocol: Protocol | str, n_folds: int | None, seed: int, *, val_fraction: float | None = None
) -> dict:
    """What a protocol means, for reports."""
    protocol = Protocol.parse(protocol)
    independent = protocol in SPEAKER_INDEPENDENT
    description = {
        "protocol": protocol.value,
        "description": _DESCRIPTIONS[protocol],
        "speaker_independent": independent,
        "test_unit": {Protocol.LOSO: "speaker", Protocol.LOSESSO: "session", Protocol.LEAVE_ONE_CORPUS_OUT: "corpus"}.get(
            protocol, "speaker group" if independent else "utterance"
        ),
        "n_folds": n_folds,
        "seed": seed,
        "validation": (
            "whole training speakers held out (speaker-disjoint from train and test)"
            if independent
            else "stratified random share of the training side"
        ),
    }
    if val_fraction is not None:
        description["val_fraction"] = val_fraction
    return description


def make_folds(
    table: pd.DataFrame,
    *,
    protocol: Protocol | str,
    n_folds: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.15,
    groups: str | None = None,
) -> list[Fold]:
    """Folds of `table` under `protocol`; see the module docstring.

    n_folds is required for SPEAKER_KFOLD and KFOLD; for LOSO / LOSESSO it must be None (or equal the
    number of speakers / sessions). Raises ConfigError when the table cannot support the protocol.
    """
    protocol = Protocol.parse(protocol)
    _check_table(table, groups)
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    speakers = table["speaker"].astype(str).to_numpy()
    labels = table["label"].astype(str).to_numpy()
    group_values = table[groups].to_numpy() if groups is not None else None

    if protocol in (Protocol.KFOLD, Protocol.KFOLD_PLAIN):
        return _kfold(labels, speakers, group_values, n_folds=n_folds, seed=seed, val_fraction=val_fraction,
                      stratified=protocol is Protocol.KFOLD)

    if protocol is Protocol.LOSESSO:
        units = table["session"].astype(str).to_numpy()
        missing = int((table["session"].isna() | (units == "")).sum())
        if missing:
            raise ConfigError(f"protocol losesso needs a session on every row; {missing} rows have none")
        unit_name = "session"
    elif protocol is Protocol.LEAVE_ONE_CORPUS_OUT:
        if "corpus" not in table.columns:
            raise ConfigError("protocol leave_one_corpus_out needs a 'corpus' column (a pooled table: --corpus EMODB,RAVDESS)")
        units = table["corpus"].astype(str).to_numpy()
        unit_name = "corpus"  # groups lie within one speaker (checked below), so within one corpus too
    else:
        units = speakers
        unit_name = "speaker"
    if group_values is not None:
        _check_groups_within(group_values, speakers, groups, "speaker")
        if unit_name == "session":
            _check_groups_within(group_values, units, groups, "session")

    unique_units = np.unique(units)
    if len(unique_units) < 2:
        raise ConfigError(
            f"protocol {protocol.value} needs at least 2 distinct {unit_name}s; found {len(unique_units)} "
            f"({', '.join(map(repr, unique_units[:3]))})"
        )
    if protocol is Protocol.SPEAKER_KFOLD:
        _check_n_folds(n_folds, len(unique_units), protocol, "speakers")
        test_sets = _deal_speakers(units, n_folds, seed)
    else:
        if n_folds is not None and n_folds != len(unique_units):
            raise ConfigError(
                f"protocol {protocol.value} makes one fold per {unit_name} ({len(unique_units)}), but "
                f"n_folds={n_folds}; pass n_folds=None, or use speaker_kfold for a chosen number of folds"
            )
        test_sets = [units == unit for unit in unique_units]

    all_labels = set(labels)
    folds = []
    for index, test_mask in enumerate(test_sets):
        train_pool = np.flatnonzero(~test_mask)
        val = _speaker_val(train_pool, speakers, labels, val_fraction, np.random.default_rng([seed, index]))
        train = np.setdiff1d(train_pool, val)
        _check_train_classes(labels[train], all_labels, protocol, index)
        test = np.flatnonzero(test_mask)
        folds.append(Fold(index, train, val, test, tuple(sorted(set(speakers[test])))))
    return folds


def _check_table(table: pd.DataFrame, groups: str | None) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if groups is not None and groups not in table.columns:
        missing.append(groups)
    if missing:
        raise ConfigError(f"the table lacks columns {missing}; it has {list(table.columns)}")
    if table.empty:
        raise ConfigError("the table has no rows; nothing to split")
    if groups is not None and table[groups].isna().any():
        raise ConfigError(f"group column {groups!r} has {int(table[groups].isna().sum())} missing values")


def _check_groups_within(group_values: np.ndarray, units: np.ndarray, groups: str, unit_name: str) -> None:
    spans = pd.Series(units).groupby(group_values).nunique()
    straddling = spans[spans > 1]
    if not straddling.empty:
        raise ConfigError(
            f"groups in column {groups!r} span several {unit_name}s (e.g. {list(straddling.index[:3])}); "
            f"a group must lie within one {unit_name} for a {unit_name}-wise split to keep it whole"
        )


def _check_n_folds(n_folds: int | None, n_units: int, protocol: Protocol, unit_name: str) -> None:
    if n_folds is None:
        raise ConfigError(f"protocol {protocol.value} needs n_folds (e.g. 5 or 10)")
    if not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise ConfigError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if n_folds > n_units:
        raise ConfigError(
            f"n_folds={n_folds} exceeds the number of {unit_name} ({n_units}) for protocol {protocol.value}"
        )


def _check_train_classes(
    train_labels: np.ndarray, all_labels: set[str], protocol: Protocol, index: int
) -> None:
    absent = sorted(all_labels - set(train_labels))
    if absent:
        raise ConfigError(
            f"protocol {protocol.value}, fold {index}: classes {absent} would be missing from train "
            "(every example of them falls in test/validation); drop those classes or use another protocol"
        )


def _deal_speakers(speakers: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Speakers, in a seeded order, each dealt to the fold with the fewest utterances so far."""
    names, counts = np.unique(speakers, return_counts=True)
    # A seeded random order (not largest-first), so that different seeds give different partitions;
    # fold sizes still differ by at most one speaker's utterance count.
    order = np.random.default_rng(seed).permutation(len(names))
    load = np.zeros(n_folds, dtype=np.int64)
    members: list[list[str]] = [[] for _ in range(n_folds)]
    for i in order:
        target = int(np.argmin(load))
        members[target].append(names[i])
        load[target] += counts[i]
    return [np.isin(speakers, m) for m in members]


def _speaker_val(
    train_pool: np.ndarray,
    speakers: np.ndarray,
    labels: np.ndarray,
    val_fraction: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Whole training speakers as validation: ~val_fraction of the pool, most classes, train keeps all."""
    if val_fraction == 0.0:
        return np.empty(0, dtype=np.int64)
    pool_speakers = speakers[train_pool]
    names = np.unique(pool_speakers)
    if len(names) < 2:
        raise ConfigError(
            f"a speaker-disjoint validation set needs at least 2 training speakers per fold, found "
            f"{len(names)} ({', '.join(names)}); use more speakers or val_fraction=0"
        )
    rows_of = {name: train_pool[pool_speakers == name] for name in names}
    pool_classes = set(labels[train_pool])
    target = val_fraction * len(train_pool)
    best_key, best = None, None
    for _ in range(VAL_CANDIDATES):
        chosen: list[str] = []
        size = 0
        for i in rng.permutation(len(names)):
            if chosen and abs(size + len(rows_of[names[i]]) - target) >= abs(size - target):
                break
            if len(chosen) == len(names) - 1:
                break
            chosen.append(names[i])
            size += len(rows_of[names[i]])
        val = np.sort(np.concatenate([rows_of[n] for n in chosen]))
        train_classes = set(labels[np.setdiff1d(train_pool, val)])
        miss = abs(size - target)
        key = (
            train_classes == pool_classes,  # hard: train keeps every class
            len(set(labels[val])),  # cover as many classes as possible
            0.0 if miss <= VAL_SIZE_TOLERANCE * target else -miss,  # near the requested size
        )  # ties keep the earliest candidate, so the seed (not size alone) picks among good sets
        if best_key is None or key > best_key:
            best_key, best = key, val
    return best


def _kfold(
    labels: np.ndarray,
    speakers: np.ndarray,
    group_values: np.ndarray | None,
    *,
    n_folds: int | None,
    seed: int,
    val_fraction: float,
    stratified: bool = True,
) -> list[Fold]:
    n_units = len(np.unique(group_values)) if group_values is not None else len(labels)
    _check_n_folds(n_folds, n_units, Protocol.KFOLD, "groups" if group_values is not None else "rows")
    positions = np.arange(len(labels))
    if not stratified:
        if group_values is not None and len(np.unique(group_values)) < len(group_values):
            raise ConfigError("protocol kfold_plain splits single utterances but this table has rows that must stay "
                              "together (e.g. duplicate recordings); use protocol kfold, which keeps them whole")
        group_values = None
        splits = KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(positions)
    elif group_values is None:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(positions, labels)
    else:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(positions, labels, group_values)
    all_labels = set(labels)
    folds = []
    for index, (train_pool, test) in enumerate(splits):
        val = _stratified_val(train_pool, labels, group_values, val_fraction, seed + index)
        train = np.setdiff1d(train_pool, val)
        _check_train_classes(labels[train], all_labels, Protocol.KFOLD, index)
        folds.append(Fold(index, train, val, np.sort(test), tuple(sorted(set(speakers[test])))))
    return folds


def _stratified_val(
    train_pool: np.ndarray,
    labels: np.ndarray,
    group_values: np.ndarray | None,
    val_fraction: float,
    seed: int,
) -> np.ndarray:
    """A stratified ~val_fraction of train_pool (group-whole when group_values is given)."""
    if val_fraction == 0.0:
        return np.empty(0, dtype=np.int64)
    n_units = len(np.unique(group_values[train_pool])) if group_values is not None else len(train_pool)
    n_splits = min(max(2, round(1.0 / val_fraction)), n_units)  # one split's share ~ val_fraction
    if n_splits < 2:
        raise ConfigError(f"a validation set needs at least 2 training rows/groups per fold, found {n_units}")
    pool_labels = labels[train_pool]
    with warnings.catch_warnings():
        # Classes rarer than n_splits cannot be stratified exactly; sklearn warns and does its best.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        if group_values is None:
            splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            _, val_idx = next(splitter.split(train_pool, pool_labels))
        else:
            splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            _, val_idx = next(splitter.split(train_pool, pool_labels, group_values[train_pool]))
    return np.sort(train_pool[val_idx])


def full_training_fold(table: pd.DataFrame, *, seed: int = 0, val_fraction: float = 0.15, speaker_independent: bool = True) -> Fold:
    """One 'fold' that trains on the whole corpus (for cross-corpus use): no test part, a validation
    part of whole speakers (or a stratified share) for early stopping and epoch selection."""
    _check_table(table, None)
    everything = np.arange(len(table), dtype=np.int64)
    labels = table["label"].to_numpy()
    if speaker_independent:
        val = _speaker_val(everything, table["speaker"].to_numpy(), labels, val_fraction, np.random.default_rng([seed, 10_000]))
    else:
        val = _stratified_val(everything, labels, None, val_fraction, seed)
    train = np.setdiff1d(everything, val)
    _check_train_classes(labels[train], set(labels), Protocol.LOSO if speaker_independent else Protocol.KFOLD, 0)
    return Fold(0, train, np.sort(val), np.empty(0, dtype=np.int64), ())
