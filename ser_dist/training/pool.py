"""Pooled training data: several corpora's feature stores -> one labelled FeatureTable on their shared classes.

    table = build_pool(["data/features/LOGMEL/EMODB_LOGMEL", "data/features/LOGMEL/RAVDESS_LOGMEL"])

Each store is read as extraction wrote it (one store per corpus; nothing is re-extracted). Then:

- every canonical label goes through the one cross-corpus mapping (`ser_dist.evaluation.mapping`,
  default `ser_dist.emotions.CROSS_CORPUS_MAPPING`: EMODB boredom -> neutral, RAVDESS calm and surprise
  -> neutral, ...); a mapping file can override entries (``surprise: null`` drops a class instead);
- the pool keeps the shared labels that EVERY member has (or the `classes` asked for, which must be
  among them); rows of other labels are dropped and counted per corpus and original label. Fewer than
  two shared classes is refused;
- speakers (and sessions) are namespaced `<CORPUS>_<speaker>` where they are not yet, so two corpora's
  speaker "03" never merge; utterance ids are namespaced `<CORPUS>/<id>` only when two members share one;
- the members must hold the same kind of features: same dim, and no difference between their stored
  feature specs (`FeatureSpec.differences`), else ConfigError names the field and both stores.

The pooled table's `metadata["pool"]` records the members (corpus, store, rows read and kept, label
counts after mapping, dropped rows per original label), the mapping and the classes. A pool of ONE
store is allowed: it is that corpus mapped and restricted to `classes` (the per-corpus baseline of a
pooled run on the same classes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ser_dist.errors import ConfigError
from ser_dist.evaluation.mapping import LabelMapping, load_mapping
from ser_dist.features.spec import FeatureSpec
from ser_dist.features.store import FeatureTable, load_features
from ser_dist.storage import as_location

logger = logging.getLogger(__name__)

POOL_SEPARATOR = "+"  # EMODB+RAVDESS: the pooled corpus's name


@dataclass(frozen=True)
class PoolMember:
    corpus: str
    path: str
    n_read: int
    n_kept: int
    label_counts: dict[str, int]  # shared label -> rows kept
    dropped: dict[str, int]  # original label -> rows dropped (no shared class, or a class another member lacks)

    def to_dict(self) -> dict:
        return {"corpus": self.corpus, "path": self.path, "n_read": self.n_read, "n_kept": self.n_kept,
                "label_counts": self.label_counts, "dropped": self.dropped}


def pool_name(corpora: Sequence[str]) -> str:
    return POOL_SEPARATOR.join(corpora)


def build_pool(paths: Sequence[str], *, mapping: LabelMapping | None = None, mapping_file: str | None = None,
               classes: Sequence[str] | None = None) -> FeatureTable:
    """One FeatureTable of the stores in `paths`, on the shared classes under the mapping (see module docstring)."""
    if not paths:
        raise ConfigError("a pool needs at least one feature store")
    if mapping is None:
        mapping = load_mapping(mapping_file) if mapping_file else LabelMapping()
    tables = [load_features(p) for p in paths]
    corpora = [_corpus_of(t) for t in tables]
    repeated = sorted({c for c in corpora if corpora.count(c) > 1})
    if repeated:
        raise ConfigError(f"the pool names corpus {repeated} more than once ({', '.join(map(str, paths))}); name each corpus once")
    _check_same_features(tables)

    shared_per_member = [{mapping.shared(x) for x in t.meta["label"].astype(str).unique()} - {None} for t in tables]
    shared = sorted(set.intersection(*shared_per_member))
    if classes:
        wanted = sorted({mapping.shared(c) or c for c in classes})
        missing = sorted(set(wanted) - set(shared))
        if missing:
            raise ConfigError(f"classes {missing} are not shared by every member of the pool {pool_name(corpora)} "
                              f"under the mapping ({mapping.source}); shared: {shared}")
        shared = wanted
    if len(shared) < 2:
        detail = "; ".join(f"{c}: {sorted(s)}" for c, s in zip(corpora, shared_per_member, strict=True))
        raise ConfigError(f"the pool {pool_name(corpora)} shares {shared or 'no'} class(es) under the mapping ({mapping.source}) "
                          f"[{detail}]; pooled training needs at least two: pool other corpora or change the mapping file")

    metas, features, members = [], [], []
    for corpus, table in zip(corpora, tables, strict=True):
        original = table.meta["label"].astype(str)
        mapped = original.map(mapping.shared)
        keep = mapped.isin(shared).to_numpy()
        positions = np.flatnonzero(keep)
        meta = table.meta.iloc[positions].reset_index(drop=True).copy()
        meta["original_label"] = original.iloc[positions].to_numpy()
        meta["label"] = mapped.iloc[positions].to_numpy()
        meta["corpus"] = corpus
        meta["speaker"] = [_namespaced(corpus, s) for s in meta["speaker"].astype(str)]
        meta["session"] = [_namespaced(corpus, s) if s not in ("", "None", "nan") else "" for s in meta["session"].astype(str)]
        metas.append(meta)
        features.extend(table.features[i] for i in positions)
        members.append(PoolMember(
            corpus=corpus, path=str(table.path), n_read=len(table.meta), n_kept=len(positions),
            label_counts={k: int(v) for k, v in sorted(meta["label"].value_counts().items())},
            dropped={k: int(v) for k, v in sorted(original[~keep].value_counts().items())},
        ))
        if (~keep).any():
            logger.info("pool: %s drops %d row(s) outside the shared classes: %s", corpus, int((~keep).sum()), members[-1].dropped)
    meta = pd.concat(metas, ignore_index=True)
    if meta["utterance_id"].duplicated().any():  # two corpora with the same file names: keep ids unique
        meta["utterance_id"] = meta["corpus"] + "/" + meta["utterance_id"].astype(str)
    order = np.argsort(meta["utterance_id"].to_numpy(), kind="stable")  # as load_features: rows sorted by id
    meta = meta.iloc[order].reset_index(drop=True)
    features = [features[i] for i in order]

    first = tables[0].metadata
    feature_type = (first.get("feature_config") or {}).get("feature_type", "")
    metadata = {k: v for k, v in first.items() if k in ("feature_config", "feature_spec", "encoder", "dim", "frame_rate")}
    metadata |= {
        "corpus": pool_name(corpora),
        "dataset_name": f"{pool_name(corpora)}_{feature_type}" if feature_type else pool_name(corpora),
        "status": "complete",
        "pool": {"corpora": corpora, "members": [m.to_dict() for m in members], "classes": shared,
                 "mapping": mapping.to_dict(), "n_rows": len(meta)},
    }
    return FeatureTable(meta, features, metadata, as_location(paths[0]))


def pool_description(table: FeatureTable) -> dict | None:
    """The `pool` record of a pooled table (None for a plain store)."""
    return table.metadata.get("pool")


def _corpus_of(table: FeatureTable) -> str:
    corpus = table.metadata.get("corpus") or (table.meta["corpus"].iloc[0] if len(table.meta) else "")
    if not corpus:
        raise ConfigError(f"{table.path} records no corpus (metadata.json 'corpus'); extract it again with `ser-dist extract`")
    return str(corpus)


def _namespaced(corpus: str, value: str) -> str:
    return value if value.startswith(f"{corpus}_") else f"{corpus}_{value}"


def _check_same_features(tables: list[FeatureTable]) -> None:
    first = tables[0]
    for other in tables[1:]:
        if other.dim != first.dim:
            raise ConfigError(f"cannot pool {other.path} (feature dim {other.dim}) with {first.path} (dim {first.dim}); "
                              "extract every corpus of a pool with the same feature settings")
        specs = [t.metadata.get("feature_spec") or t.metadata.get("feature_config") for t in (first, other)]
        if all(specs):
            differences = FeatureSpec.from_json(specs[0]).differences(FeatureSpec.from_json(specs[1]))
            if differences:
                listed = ", ".join(f"{key}: {a!r} vs {b!r}" for key, a, b in differences)
                raise ConfigError(f"cannot pool {other.path} with {first.path}: their features were computed differently "
                                  f"({listed}); extract every corpus of a pool with the same feature settings")
