"""Fold isolation: rows, speakers and duplicate groups never cross between train, val and test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ser_dist.errors import ConfigError, UnknownNameError
from ser_dist.training.splits import Fold, Protocol, make_folds, protocol_description

CLASSES = ("angry", "happy", "neutral", "sad")


def synthetic_table(
    n_speakers: int = 8, per_class: int = 5, n_sessions: int = 4, seed: int = 0
) -> pd.DataFrame:
    """Each speaker has `per_class` utterances of every class; speakers pair up into sessions."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_speakers):
        for label in CLASSES:
            for k in range(per_class + int(rng.integers(0, 3))):
                rows.append(
                    {
                        "utterance_id": f"s{s:02d}_{label}_{k}",
                        "speaker": f"SYN_{s:02d}",
                        "session": f"Ses{s % n_sessions + 1:02d}",
                        "label": label,
                    }
                )
    table = pd.DataFrame(rows).sample(frac=1.0, random_state=seed)
    table.index = np.arange(100, 100 + len(table))  # positions, not index labels, are what folds hold
    return table


def assert_isolated(table: pd.DataFrame, folds: list[Fold], *, speaker_independent: bool) -> None:
    n = len(table)
    speakers = table["speaker"].to_numpy()
    test_count = np.zeros(n, dtype=int)
    for fold in folds:
        for part in (fold.train, fold.val, fold.test):
            assert part.dtype.kind == "i"
            assert len(np.unique(part)) == len(part)
            assert part.size == 0 or (part.min() >= 0 and part.max() < n)
        assert not set(fold.train) & set(fold.val)
        assert not set(fold.train) & set(fold.test)
        assert not set(fold.val) & set(fold.test)
        assert len(fold.train) + len(fold.val) + len(fold.test) == n
        assert fold.test_speakers == tuple(sorted(set(speakers[fold.test])))
        if speaker_independent:
            train_spk, val_spk = set(speakers[fold.train]), set(speakers[fold.val])
            assert not set(fold.test_speakers) & (train_spk | val_spk)
            assert not val_spk & train_spk
        # every class is learnable in every fold
        assert set(table["label"].iloc[fold.train]) == set(table["label"])
        test_count[fold.test] += 1
    assert np.all(test_count == 1), "every row must be in exactly one test fold"
    assert [f.index for f in folds] == list(range(len(folds)))


def test_loso_synthetic():
    table = synthetic_table()
    folds = make_folds(table, protocol="loso")
    assert len(folds) == 8
    assert [f.test_speakers for f in folds] == [(f"SYN_{s:02d}",) for s in range(8)]
    assert_isolated(table, folds, speaker_independent=True)
    for fold in folds:  # validation: whole speakers covering every class, about 15 % of train side
        assert set(table["label"].iloc[fold.val]) == set(CLASSES)
        assert 0.05 < len(fold.val) / (len(fold.train) + len(fold.val)) < 0.35


def test_speaker_kfold_balanced_and_seeded():
    table = synthetic_table(n_speakers=10)
    folds = make_folds(table, protocol=Protocol.SPEAKER_KFOLD, n_folds=5, seed=3)
    assert len(folds) == 5
    assert_isolated(table, folds, speaker_independent=True)
    sizes = [len(f.test) for f in folds]
    assert max(sizes) - min(sizes) <= table["speaker"].value_counts().max()
    again = make_folds(table, protocol="speaker_kfold", n_folds=5, seed=3)
    for a, b in zip(folds, again, strict=True):
        assert np.array_equal(a.test, b.test) and np.array_equal(a.val, b.val)
    other = make_folds(table, protocol="speaker_kfold", n_folds=5, seed=4)
    assert [f.test_speakers for f in other] != [f.test_speakers for f in folds]


def test_losesso():
    table = synthetic_table(n_speakers=8, n_sessions=4)
    folds = make_folds(table, protocol="losesso")
    assert len(folds) == 4
    assert_isolated(table, folds, speaker_independent=True)
    sessions = table["session"].to_numpy()
    for fold, session in zip(folds, ["Ses01", "Ses02", "Ses03", "Ses04"], strict=True):
        assert set(sessions[fold.test]) == {session}
        assert session not in set(sessions[fold.train]) | set(sessions[fold.val])


def test_kfold_stratified_and_reproducible():
    table = synthetic_table(n_speakers=6, per_class=10)
    folds = make_folds(table, protocol="kfold", n_folds=5, seed=7)
    assert_isolated(table, folds, speaker_independent=False)
    labels = table["label"].to_numpy()
    overall = pd.Series(labels).value_counts(normalize=True)
    for fold in folds:
        for part in (fold.test, fold.val):
            share = pd.Series(labels[part]).value_counts(normalize=True)
            assert (share.reindex(overall.index) - overall).abs().max() < 0.05
    again = make_folds(table, protocol="kfold", n_folds=5, seed=7)
    other = make_folds(table, protocol="kfold", n_folds=5, seed=8)
    assert all(
        np.array_equal(a.test, b.test) and np.array_equal(a.val, b.val)
        for a, b in zip(folds, again, strict=True)
    )
    assert not all(np.array_equal(a.test, b.test) for a, b in zip(folds, other, strict=True))


@pytest.mark.parametrize("protocol, n_folds", [("kfold", 5), ("loso", None), ("speaker_kfold", 3)])
def test_groups_never_straddle(protocol, n_folds):
    table = synthetic_table(n_speakers=6, per_class=6)
    # groups of 1-3 utterances, always within one speaker (like duplicate recordings)
    table["dup"] = table["speaker"] + "_" + (table.groupby("speaker").cumcount() // 3).astype(str)
    folds = make_folds(table, protocol=protocol, n_folds=n_folds, groups="dup", seed=1)
    assert_isolated(table, folds, speaker_independent=protocol != "kfold")
    dup = table["dup"].to_numpy()
    for fold in folds:
        sides = [set(dup[fold.train]), set(dup[fold.val]), set(dup[fold.test])]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])


def test_val_fraction_zero_gives_empty_val():
    table = synthetic_table()
    for protocol, k in (("loso", None), ("kfold", 4)):
        for fold in make_folds(table, protocol=protocol, n_folds=k, val_fraction=0.0):
            assert fold.val.size == 0


def test_errors():
    table = synthetic_table(n_speakers=4)
    with pytest.raises(UnknownNameError, match="expected one of loso, speaker_kfold, losesso, kfold"):
        make_folds(table, protocol="leave_one_out")
    with pytest.raises(ConfigError, match="at least 2 distinct speakers"):
        make_folds(table[table["speaker"] == "SYN_00"], protocol="loso")
    with pytest.raises(ConfigError, match="at least 2 distinct sessions"):
        make_folds(table.assign(session="S1"), protocol="losesso")
    with pytest.raises(ConfigError, match="needs a session"):
        make_folds(table.assign(session=""), protocol="losesso")
    with pytest.raises(ConfigError, match="exceeds the number of speakers"):
        make_folds(table, protocol="speaker_kfold", n_folds=5)
    with pytest.raises(ConfigError, match="needs n_folds"):
        make_folds(table, protocol="kfold")
    with pytest.raises(ConfigError, match="one fold per speaker"):
        make_folds(table, protocol="loso", n_folds=3)
    with pytest.raises(ConfigError, match="lacks columns"):
        make_folds(table.drop(columns="session"), protocol="loso")
    # 'sad' spoken by one speaker only: leaving that speaker out leaves no 'sad' in train
    lonely = table[(table["label"] != "sad") | (table["speaker"] == "SYN_01")]
    with pytest.raises(ConfigError, match=r"classes \['sad'\] would be missing from train"):
        make_folds(lonely, protocol="loso")
    # a group spanning two speakers cannot be kept whole by a speaker-wise split
    crossing = table.assign(dup=np.arange(len(table)))
    first_of = [int(np.flatnonzero(crossing["speaker"].to_numpy() == s)[0]) for s in ("SYN_00", "SYN_01")]
    crossing.iloc[first_of, crossing.columns.get_loc("dup")] = -1
    with pytest.raises(ConfigError, match="span several speakers"):
        make_folds(crossing, protocol="loso", groups="dup")
    # two speakers: LOSO leaves one training speaker, too few for a speaker-disjoint validation set
    two = table[table["speaker"].isin(["SYN_00", "SYN_01"])]
    with pytest.raises(ConfigError, match="at least 2 training speakers"):
        make_folds(two, protocol="loso")
    assert len(make_folds(two, protocol="loso", val_fraction=0.0)) == 2


def test_protocol_description():
    d = protocol_description("loso", None, 0)
    assert d["speaker_independent"] is True and d["protocol"] == "loso"
    assert protocol_description(Protocol.KFOLD, 5, 1)["speaker_independent"] is False


@pytest.fixture(scope="module")
def emodb(emodb_root) -> pd.DataFrame:
    """The real EMODB manifest; `emodb_root` (conftest) skips with a reason when ../shared is absent."""
    from ser_dist.corpora import prepare

    return prepare("EMODB", emodb_root)


def test_emodb_loso(emodb):
    folds = make_folds(emodb, protocol="loso", seed=0)
    assert len(folds) == 10
    assert_isolated(emodb, folds, speaker_independent=True)
    assert sorted(s for f in folds for s in f.test_speakers) == sorted(emodb["speaker"].unique())


def test_emodb_speaker_kfold_and_kfold(emodb):
    assert_isolated(emodb, make_folds(emodb, protocol="speaker_kfold", n_folds=5), speaker_independent=True)
    assert_isolated(emodb, make_folds(emodb, protocol="kfold", n_folds=10), speaker_independent=False)
