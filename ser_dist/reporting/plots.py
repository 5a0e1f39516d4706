"""Report figures: confusion matrix (counts and row-normalised %), training curves, source x target heatmaps.

Figures are drawn on the non-interactive Agg backend, so reports can be written on headless Ray nodes.
Every function writes one PNG and closes its figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display is needed (or available) on training nodes

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ser_dist.errors import ConfigError  # noqa: E402

DPI = 120
CURVE_PANELS: tuple[tuple[str, str], ...] = (
    ("train_loss", "train loss"),
    ("val_loss", "validation loss"),
    ("val_uar", "validation UAR"),
)


def confusion_png(path: Path | str, confusion: Sequence[Sequence[int]], labels: Sequence[str], *, title: str) -> Path:
    """Two panels: counts, and each true-class row as % of its items (rows without items stay blank)."""
    counts = np.asarray(confusion, dtype=np.int64)  # (n_labels, n_labels): true x predicted
    if counts.shape != (len(labels), len(labels)):
        raise ConfigError(f"confusion matrix has shape {counts.shape}, expected {(len(labels), len(labels))} for labels {list(labels)}")
    row_sums = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        percent = np.where(row_sums > 0, 100.0 * counts / np.maximum(row_sums, 1), np.nan)

    size = max(4.0, 0.6 * len(labels) + 2.0)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1.0, size), constrained_layout=True)
    try:
        _matrix_panel(axes[0], counts.astype(float), labels, labels, fmt="d", cmap="Blues", vmin=0.0, vmax=None)
        axes[0].set_title("counts")
        _matrix_panel(axes[1], percent, labels, labels, fmt=".1f", cmap="Blues", vmin=0.0, vmax=100.0)
        axes[1].set_title("% of true class (row-normalised)")
        for ax in axes:
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
        fig.suptitle(title)
        return _save(fig, path)
    finally:
        plt.close(fig)


def curves_png(path: Path | str, histories: Mapping[str, pd.DataFrame], *, title: str) -> Path:
    """Train loss, validation loss and validation UAR per epoch; one line per fold (key of `histories`)."""
    if not histories:
        raise ConfigError("curves_png needs at least one history (fold name -> per-epoch DataFrame)")
    for name, history in histories.items():
        missing = [c for c, _ in CURVE_PANELS if c not in history.columns]
        if "epoch" not in history.columns:
            missing.insert(0, "epoch")
        if missing:
            raise ConfigError(f"history {name!r} lacks columns {missing}; it has {list(history.columns)}")

    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(5.0 * len(CURVE_PANELS), 4.0), constrained_layout=True)
    try:
        for ax, (column, label) in zip(axes, CURVE_PANELS, strict=True):
            for name, history in histories.items():
                ax.plot(history["epoch"], history[column], marker="." if len(history) < 30 else None, label=name)
            ax.set_title(label)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        axes[-1].set_ylim(0.0, 1.0)
        if len(histories) <= 12:
            axes[-1].legend(fontsize="small", loc="lower right")
        fig.suptitle(title)
        return _save(fig, path)
    finally:
        plt.close(fig)


def heatmap_png(path: Path | str, matrix: pd.DataFrame, *, title: str, fmt: str = ".1f") -> Path:
    """A labelled heatmap of `matrix` (rows = index, e.g. source corpus; columns = target); NaN cells blank."""
    if matrix.empty:
        raise ConfigError(f"heatmap {title!r}: the matrix is empty")
    values = matrix.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    rows = [str(i) for i in matrix.index]
    cols = [str(c) for c in matrix.columns]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(cols) + 2.5), max(3.0, 0.7 * len(rows) + 1.8)), constrained_layout=True)
    try:
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        _matrix_panel(ax, values, rows, cols, fmt=fmt, cmap="viridis", vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1.0)
        ax.set_xlabel(str(matrix.columns.name or ""))
        ax.set_ylabel(str(matrix.index.name or ""))
        ax.set_title(title)
        return _save(fig, path)
    finally:
        plt.close(fig)


def _matrix_panel(
    ax: plt.Axes,
    values: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    fmt: str,
    cmap: str,
    vmin: float,
    vmax: float | None,
) -> None:
    """imshow with a colour bar and the value written in every finite cell."""
    masked = np.ma.masked_invalid(values)
    image = ax.imshow(masked, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    colorbar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if fmt == "d":
        colorbar.locator = MaxNLocator(integer=True)
        colorbar.update_ticks()
    ax.set_xticks(range(len(col_labels)), labels=list(col_labels), rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)), labels=list(row_labels))
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            value = values[i, j]
            if not np.isfinite(value):  # e.g. a class without test items, or a pair never evaluated
                ax.text(j, i, "–", ha="center", va="center", fontsize="small", color="grey")
                continue
            red, green, blue, _ = image.cmap(image.norm(value))
            dark_cell = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            text = format(int(value), fmt) if fmt == "d" else format(value, fmt)
            ax.text(j, i, text, ha="center", va="center", fontsize="small", color="white" if dark_cell else "black")


def _save(fig: plt.Figure, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path
