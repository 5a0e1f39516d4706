"""Classical references for the accuracy benchmark, scored on exactly the folds our model used.

- openSMILE functionals (`eGeMAPSv02`, 88-d; `ComParE_2016`, 6373-d) + SVM: `opensmile_functionals`
  then `svm_on_folds`. `opensmile` is a bench extra (`pip install 'ser-dist[bench]'`); it ships its own
  SMILExtract library, so it runs offline.
- mean+std pooled frames of any stored feature (e.g. one Whisper layer) + SVM: `pooled_svm_on_folds`.

The SVM protocol, per fold (the folds are taken as given, never rebuilt):

1. standardise on `fold.train` (StandardScaler), train one SVM per C in the grid on `fold.train`,
   score UAR on `fold.val`; the best C wins (the first in grid order on ties);
2. refit the scaler and the SVM (chosen C) on `fold.train` + `fold.val`;
3. predict `fold.test` once. The test rows never reach a fit, a scaler or the choice of C.

Headline UAR / WAR / macro-F1 pool all test predictions; per-fold UAR / WAR come as mean and std.
SVMs are sklearn's `SVC` (libsvm, one-vs-one, class_weight="balanced", no iteration cap, so it always
converges) on a precomputed kernel: the Gram matrix of a fold is computed once and shared by the whole C
grid. That gives the same model as `SVC(kernel="linear")` / `SVC(kernel="rbf", gamma="scale")` (the same
predictions, checked on EMODB ComParE) and is faster: on one EMODB LOSO fold (ComParE, 6373-d, ~400
training rows) the 5-value grid took 0.34 s CPU against 2.6 s for `SVC(kernel="linear")` and 19 s for
`LinearSVC` (liblinear, one-vs-rest, a different model: 82% agreement with the SVC predictions).
With ComParE's 6373 dimensions the training rows are linearly separable, so every C in the grid gives the
same validation UAR and the tie goes to the smallest C.

    python bench/references.py --corpus EMODB --protocol loso
    python bench/references.py --corpus EMODB --protocol kfold --n-folds 10
    python bench/references.py --corpus EMODB --protocol loso --feature-sets eGeMAPSv02 --json /tmp/ref.json

Functionals are cached as `<cache_dir>/<feature_set>_<sha>.npy` (sha of the opensmile version, the
feature set and the file paths in order), so reruns are instant. The cache folder (default
`bench/cache/`) is a build output, not for git.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from enum import StrEnum
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ser_dist.audio import TARGET_SAMPLE_RATE, load_audio
from ser_dist.errors import ConfigError, UnknownNameError
from ser_dist.training.metrics import classification_report, mean_std
from ser_dist.training.selection import pooled_statistics
from ser_dist.training.splits import Fold

logger = logging.getLogger("bench.references")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = Path(os.environ.get("SER_DIST_SHARED", REPO_ROOT.parent / "shared"))
DEFAULT_CACHE_DIR = REPO_ROOT / "bench" / "cache"
FEATURE_SETS: tuple[str, ...] = ("eGeMAPSv02", "ComParE_2016")
DEFAULT_C_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
PROTOCOL_NOTE = "C chosen on validation part of the training side"
CHUNKS_PER_WORKER = 4  # smaller chunks balance the load of unequal file lengths across workers
OPENSMILE_MISSING = "opensmile is not installed; it is a bench extra: pip install 'ser-dist[bench]' (or pip install opensmile)"


class Kernel(StrEnum):
    LINEAR = "linear"
    RBF = "rbf"

    @classmethod
    def parse(cls, value: Kernel | str) -> Kernel:
        try:
            return cls(str(value).lower())
        except ValueError:
            raise UnknownNameError("kernel", value, [k.value for k in cls]) from None


class Normalization(StrEnum):
    TRAIN = "train"  # StandardScaler fit on the side being trained (train, then train+val)
    NONE = "none"  # features used as they are

    @classmethod
    def parse(cls, value: Normalization | str) -> Normalization:
        try:
            return cls(str(value).lower())
        except ValueError:
            raise UnknownNameError("normalization", value, [n.value for n in cls]) from None


# ---------------------------------------------------------------------------------------------- openSMILE


def opensmile_functionals(
    paths: Sequence[str | Path], feature_set: str, *, cache_dir: Path | None, n_workers: int = 2
) -> np.ndarray:
    """(N, D) float32 openSMILE functionals, one row per path in order (D: eGeMAPSv02 88, ComParE_2016 6373).

    Audio is read with `ser_dist.audio.load_audio` (16 kHz mono). With `cache_dir`, the matrix is read
    from / written to `<cache_dir>/<feature_set>_<sha>.npy`. `n_workers` > 1 spreads the files over that
    many processes (spawned, so it is safe inside a driver that runs Ray or torch threads).
    Raises ImportError when opensmile is not installed.
    """
    if feature_set not in FEATURE_SETS:
        raise UnknownNameError("openSMILE feature set", feature_set, FEATURE_SETS)
    opensmile_version = _opensmile_version()
    paths = [os.path.abspath(p) for p in paths]
    if not paths:
        raise ConfigError("opensmile_functionals got no paths")
    cache_file = None
    if cache_dir is not None:
        digest = hashlib.sha256("\n".join([opensmile_version, feature_set, *paths]).encode()).hexdigest()[:16]
        cache_file = Path(cache_dir) / f"{feature_set}_{digest}.npy"
        if cache_file.is_file():
            cached = np.load(cache_file)
            if cached.shape[0] == len(paths):
                logger.info("openSMILE %s: %d rows from cache %s", feature_set, len(paths), cache_file)
                return cached
            logger.warning("ignoring cache %s: %d rows for %d paths", cache_file, cached.shape[0], len(paths))

    started = time.perf_counter()
    n_workers = max(1, min(int(n_workers), len(paths)))
    if n_workers == 1:
        matrix = _functionals_of(paths, feature_set)
    else:
        n_chunks = min(len(paths), n_workers * CHUNKS_PER_WORKER)
        chunks = [list(c) for c in np.array_split(np.asarray(paths, dtype=object), n_chunks)]
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=get_context("spawn")) as pool:
            matrix = np.concatenate(list(pool.map(_functionals_of, chunks, [feature_set] * n_chunks)))
    logger.info(
        "openSMILE %s: %d files -> %s in %.1f s (%d process%s)",
        feature_set, len(paths), matrix.shape, time.perf_counter() - started, n_workers, "es" if n_workers > 1 else "",
    )
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".tmp-{os.getpid()}-{cache_file.name}")
        with open(tmp, "wb") as handle:
            np.save(handle, matrix)
        os.replace(tmp, cache_file)
    return matrix


def _opensmile_version() -> str:
    try:
        import opensmile
    except ImportError as exc:
        raise ImportError(OPENSMILE_MISSING) from exc
    return opensmile.__version__


def _functionals_of(paths: list[str], feature_set: str) -> np.ndarray:
    """(len(paths), D) functionals, in one process (a worker of opensmile_functionals)."""
    import opensmile

    smile = opensmile.Smile(
        feature_set=opensmile.FeatureSet[feature_set], feature_level=opensmile.FeatureLevel.Functionals
    )
    rows = [
        smile.process_signal(load_audio(path), TARGET_SAMPLE_RATE).to_numpy(dtype=np.float32)[0] for path in paths
    ]
    return np.stack(rows)  # (n, D)


# ---------------------------------------------------------------------------------------------- SVM


def svm_on_folds(
    X: np.ndarray,
    labels: np.ndarray | Sequence[str],
    folds: Sequence[Fold],
    *,
    C_grid: Sequence[float] = DEFAULT_C_GRID,
    kernel: Kernel | str = Kernel.LINEAR,
    normalization: Normalization | str = Normalization.TRAIN,
) -> dict:
    """Score an SVM on `folds` of the rows of X (N, D), C chosen per fold on its validation part only.

    Returns {"folds": [{"fold", "test_speakers", "C", "val_uar", "uar", "war", "n_test"}], "uar", "war",
    "macro_f1", "per_class", "confusion", "labels" (pooled over all test predictions), "fold_uar",
    "fold_war" (mean_std over folds), "protocol_note", and the settings used}.
    A fold with an empty validation part is allowed only with a one-value C_grid (nothing to choose).
    """
    kernel = Kernel.parse(kernel)
    normalization = Normalization.parse(normalization)
    C_grid = tuple(float(c) for c in C_grid)
    if not C_grid or any(not np.isfinite(c) or c <= 0 for c in C_grid):
        raise ConfigError(f"C_grid must hold positive numbers, got {C_grid}")
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels).astype(str)
    _check_inputs(X, labels, folds)
    classes = sorted(set(labels))

    fold_rows, true_all, predicted_all = [], [], []
    for fold in folds:
        if len(C_grid) == 1:
            chosen, val_uar = C_grid[0], None
            if len(fold.val):
                predicted = _fit_predict(X[fold.train], labels[fold.train], X[fold.val], C_grid, kernel, normalization)[0]
                val_uar = classification_report(labels[fold.val], predicted, classes)["uar"]
        else:
            if not len(fold.val):
                raise ConfigError(
                    f"fold {fold.index} has no validation rows to choose C from {C_grid}; make folds with "
                    "val_fraction > 0 or pass a single C"
                )
            predictions = _fit_predict(X[fold.train], labels[fold.train], X[fold.val], C_grid, kernel, normalization)
            val_uars = [classification_report(labels[fold.val], p, classes)["uar"] for p in predictions]
            best = int(np.argmax(val_uars))  # first in grid order wins ties
            chosen, val_uar = C_grid[best], val_uars[best]
        fit_rows = np.concatenate([fold.train, fold.val])
        predicted = _fit_predict(X[fit_rows], labels[fit_rows], X[fold.test], (chosen,), kernel, normalization)[0]
        report = classification_report(labels[fold.test], predicted, classes)
        fold_rows.append({
            "fold": fold.index, "test_speakers": ",".join(fold.test_speakers), "C": chosen, "val_uar": val_uar,
            "uar": report["uar"], "war": report["war"], "n_test": len(fold.test), "predicted": predicted.tolist(),
        })
        true_all.append(labels[fold.test])
        predicted_all.append(predicted)
        logger.debug("fold %d: C=%g val UAR %s test UAR %.3f", fold.index, chosen, val_uar, report["uar"])

    pooled = classification_report(np.concatenate(true_all), np.concatenate(predicted_all), classes)
    return {
        "folds": [{k: v for k, v in row.items() if k != "predicted"} for row in fold_rows],
        "fold_predictions": [row["predicted"] for row in fold_rows],
        "uar": pooled["uar"],
        "war": pooled["war"],
        "macro_f1": pooled["macro_f1"],
        "n_test": pooled["n"],
        "per_class": pooled["per_class"],
        "confusion": pooled["confusion"],
        "labels": pooled["labels"],
        "fold_uar": mean_std([row["uar"] for row in fold_rows]),
        "fold_war": mean_std([row["war"] for row in fold_rows]),
        "n_features": int(X.shape[1]),
        "kernel": kernel.value,
        "normalization": normalization.value,
        "C_grid": list(C_grid),
        "protocol_note": PROTOCOL_NOTE,
    }


def pooled_svm_on_folds(
    matrices: Sequence[np.ndarray], labels: np.ndarray | Sequence[str], folds: Sequence[Fold], **svm_options
) -> dict:
    """svm_on_folds on mean+std pooled frames: matrices[i] is utterance i's (T_i, D); rows become (2D,)."""
    if len(matrices) != len(labels):
        raise ConfigError(f"{len(matrices)} feature matrices but {len(labels)} labels")
    if not len(matrices):
        raise ConfigError("pooled_svm_on_folds got no feature matrices")
    matrices = [np.asarray(m, dtype=np.float32) for m in matrices]
    bad = [i for i, m in enumerate(matrices) if m.ndim != 2 or m.shape[0] == 0]
    if bad:
        raise ConfigError(
            f"every matrix must be (T, D) with T >= 1 frames; {len(bad)} are not (first: row {bad[0]}, "
            f"shape {matrices[bad[0]].shape})"
        )
    dims = sorted({m.shape[1] for m in matrices})
    if len(dims) > 1:
        raise ConfigError(f"feature matrices differ in dimension D: {dims}; pool one feature type at a time")
    result = svm_on_folds(pooled_statistics(matrices), labels, folds, **svm_options)
    return {**result, "pooling": f"mean+std over frames of {dims[0]}-d frames"}


def per_speaker_standardised(X: np.ndarray, speakers: Sequence[str]) -> np.ndarray:
    """Each row z-normalised with the mean/std of its own speaker's rows (TRANSDUCTIVE: a test speaker's
    unlabelled rows set its statistics; labels are never read)."""
    X = np.asarray(X, dtype=np.float64)
    speakers = np.asarray(speakers).astype(str)
    out = np.empty_like(X)
    for speaker in np.unique(speakers):
        rows = speakers == speaker
        mean, std = X[rows].mean(axis=0), X[rows].std(axis=0)
        out[rows] = (X[rows] - mean) / np.where(std > 1e-8, std, 1.0)
    return out


def svm_choose_candidate_on_folds(
    candidates: dict[str, np.ndarray], labels: np.ndarray | Sequence[str], folds: Sequence[Fold], **svm_options
) -> dict:
    """For each fold, the candidate feature matrix (e.g. one encoder layer each) with the best VALIDATION
    UAR (C chosen on validation as in svm_on_folds) scores that fold's test part. The test part never
    takes part in the choice. Returns pooled/fold scores like svm_on_folds plus "chosen" per fold."""
    labels = np.asarray(labels).astype(str)
    classes = sorted(set(labels))
    results = {name: svm_on_folds(X, labels, folds, **svm_options) for name, X in candidates.items()}
    names = list(candidates)
    chosen, true_all, predicted_all, fold_rows = [], [], [], []
    for k, fold in enumerate(folds):
        val = [results[n]["folds"][k]["val_uar"] for n in names]
        if any(v is None for v in val):
            raise ConfigError(f"fold {fold.index} has no validation part to choose a candidate on")
        best = names[int(np.argmax(val))]  # first in order wins ties
        predicted = np.asarray(results[best]["fold_predictions"][k])
        report = classification_report(labels[fold.test], predicted, classes)
        chosen.append(best)
        true_all.append(labels[fold.test])
        predicted_all.append(predicted)
        fold_rows.append({"fold": fold.index, "chosen": best, "val_uar": dict(zip(names, val, strict=True)),
                          "uar": report["uar"], "war": report["war"], "n_test": len(fold.test)})
    pooled = classification_report(np.concatenate(true_all), np.concatenate(predicted_all), classes)
    return {"folds": fold_rows, "chosen": chosen, "uar": pooled["uar"], "war": pooled["war"], "macro_f1": pooled["macro_f1"],
            "n_test": pooled["n"], "fold_uar": mean_std([r["uar"] for r in fold_rows]),
            "fold_war": mean_std([r["war"] for r in fold_rows]),
            "per_candidate_test_uar_not_used_to_choose": {n: results[n]["uar"] for n in names}}


def _fit_predict(
    X_fit: np.ndarray,
    y_fit: np.ndarray,
    X_predict: np.ndarray,
    C_values: Sequence[float],
    kernel: Kernel,
    normalization: Normalization,
) -> list[np.ndarray]:
    """Fit (scaler and) one SVM per C on X_fit only; predictions for X_predict, one array per C.

    It is handed only the rows it may learn from, so no other row can leak into a fit.
    """
    if normalization is Normalization.TRAIN:
        scaler = StandardScaler().fit(X_fit)
        Z_fit, Z_predict = scaler.transform(X_fit), scaler.transform(X_predict)
    else:
        Z_fit, Z_predict = X_fit, X_predict
    if kernel is Kernel.LINEAR:
        K_fit, K_predict = Z_fit @ Z_fit.T, Z_predict @ Z_fit.T  # (n_fit, n_fit), (n_predict, n_fit)
    else:
        variance = Z_fit.var()
        gamma = 1.0 / (Z_fit.shape[1] * variance) if variance > 0 else 1.0  # sklearn's gamma="scale"
        K_fit, K_predict = rbf_kernel(Z_fit, Z_fit, gamma=gamma), rbf_kernel(Z_predict, Z_fit, gamma=gamma)
    return [
        SVC(C=C, kernel="precomputed", class_weight="balanced").fit(K_fit, y_fit).predict(K_predict)
        for C in C_values
    ]


def _check_inputs(X: np.ndarray, labels: np.ndarray, folds: Sequence[Fold]) -> None:
    if X.ndim != 2:
        raise ConfigError(f"X must be a (N, D) matrix, got shape {X.shape}")
    if len(labels) != X.shape[0]:
        raise ConfigError(f"X has {X.shape[0]} rows but there are {len(labels)} labels")
    non_finite = ~np.isfinite(X)
    if non_finite.any():
        rows = np.flatnonzero(non_finite.any(axis=1))
        raise ConfigError(f"X holds {int(non_finite.sum())} non-finite values in {len(rows)} rows (first: {rows[:5].tolist()})")
    if not folds:
        raise ConfigError("no folds given")
    for fold in folds:
        parts = {"train": fold.train, "val": fold.val, "test": fold.test}
        for name, rows in parts.items():
            if len(rows) and (np.min(rows) < 0 or np.max(rows) >= len(labels)):
                raise ConfigError(f"fold {fold.index}: {name} positions fall outside 0..{len(labels) - 1}")
        if not len(fold.train) or not len(fold.test):
            raise ConfigError(f"fold {fold.index} needs train and test rows, has {fold.sizes()}")
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = np.intersect1d(parts[a], parts[b])
            if shared.size:
                raise ConfigError(f"fold {fold.index}: {shared.size} rows are in both {a} and {b} (e.g. {shared[:3].tolist()})")


# ---------------------------------------------------------------------------------------------- CLI


@dataclass(frozen=True)
class ReferenceConfig:
    corpus: str = "EMODB"
    protocol: str = "loso"
    n_folds: int | None = None  # None for loso / losesso; e.g. 10 for kfold
    seed: int = 0
    val_fraction: float = 0.15
    feature_sets: tuple[str, ...] = FEATURE_SETS
    kernel: str = Kernel.LINEAR.value
    C_grid: tuple[float, ...] = DEFAULT_C_GRID
    data_root: str = str(DEFAULT_SHARED / "data")
    cache_dir: str | None = str(DEFAULT_CACHE_DIR)
    n_workers: int = 2


def run_references(config: ReferenceConfig) -> dict:
    """openSMILE functionals + SVM on the corpus's folds (manifest sorted by utterance_id), one row per feature set."""
    from ser_dist.corpora import corpus_root, prepare
    from ser_dist.training.splits import make_folds, protocol_description

    manifest = prepare(config.corpus, corpus_root(config.data_root, config.corpus))
    manifest = manifest.sort_values("utterance_id").reset_index(drop=True)
    folds = make_folds(
        manifest, protocol=config.protocol, n_folds=config.n_folds, seed=config.seed, val_fraction=config.val_fraction
    )
    labels = manifest["label"].to_numpy()
    cache_dir = Path(config.cache_dir) if config.cache_dir else None
    rows, details = [], {}
    for feature_set in config.feature_sets:
        started = time.perf_counter()
        X = opensmile_functionals(manifest["path"].tolist(), feature_set, cache_dir=cache_dir, n_workers=config.n_workers)
        extracted = time.perf_counter()
        result = svm_on_folds(X, labels, folds, C_grid=config.C_grid, kernel=config.kernel)
        finished = time.perf_counter()
        details[feature_set] = result
        chosen = [row["C"] for row in result["folds"]]
        rows.append({
            "reference": f"openSMILE {feature_set} functionals + SVM ({config.kernel})",
            "dim": X.shape[1], "uar": result["uar"], "war": result["war"], "macro_f1": result["macro_f1"],
            "fold_uar_mean": result["fold_uar"]["mean"], "fold_uar_std": result["fold_uar"]["std"],
            "fold_war_mean": result["fold_war"]["mean"], "fold_war_std": result["fold_war"]["std"],
            "C_median": float(np.median(chosen)), "features_s": extracted - started, "svm_s": finished - extracted,
        })
    return {
        "config": asdict(config),
        "protocol": protocol_description(config.protocol, len(folds), config.seed, val_fraction=config.val_fraction),
        "n_utterances": len(manifest),
        "references": rows,
        "details": details,
        "protocol_note": PROTOCOL_NOTE,
    }


def main(argv: list[str] | None = None) -> int:
    defaults = ReferenceConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=defaults.corpus, help="default %(default)s")
    parser.add_argument("--protocol", default=defaults.protocol, help="loso, speaker_kfold, losesso, kfold (default %(default)s)")
    parser.add_argument("--n-folds", type=int, default=defaults.n_folds, help="for speaker_kfold / kfold")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="default %(default)s")
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction, help="default %(default)s")
    parser.add_argument("--feature-sets", nargs="+", choices=FEATURE_SETS, default=list(defaults.feature_sets))
    parser.add_argument("--kernel", choices=[k.value for k in Kernel], default=defaults.kernel, help="default %(default)s")
    parser.add_argument("--data-root", default=defaults.data_root, help="folder holding emodb/, ... (env SER_DIST_SHARED/data; default %(default)s)")
    parser.add_argument("--cache-dir", default=defaults.cache_dir, help="functionals cache (default %(default)s)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    parser.add_argument("--workers", type=int, default=defaults.n_workers, help="extraction processes (default %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the full result (per fold, per class) to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    config = ReferenceConfig(
        corpus=args.corpus, protocol=args.protocol, n_folds=args.n_folds, seed=args.seed, val_fraction=args.val_fraction,
        feature_sets=tuple(args.feature_sets), kernel=args.kernel, data_root=args.data_root,
        cache_dir=None if args.no_cache else args.cache_dir, n_workers=args.workers,
    )
    result = run_references(config)
    if __package__:  # python -m bench.references
        from bench.common import format_table
    else:  # python bench/references.py
        from common import format_table
    description = result["protocol"]
    print(f"\n{config.corpus} {description['protocol']} ({description['n_folds']} folds, {result['n_utterances']} utterances); "
          f"{PROTOCOL_NOTE}")
    print(format_table(result["references"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
