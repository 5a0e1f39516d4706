"""What a loaded model is: labels, feature spec, ensemble, normalisation, and its run's protocol and scores.

One description shared by the ONNX export (export.json) and the Serve application (GET /model).
The protocol and scores come from the run folder's `summary.json` (or `run_config.json` while a run
has no summary); a lone checkpoint folder inside `fold_<k>/` belongs to the run two levels up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ser_dist.prediction.predictor import Predictor

SCORE_KEYS = ("uar", "war", "macro_f1", "fold_uar", "fold_war", "n_test")


def normalization_name(predictor: Predictor) -> str:
    """`train_global` (training-part statistics), `per_speaker` (each input by its own), or `mixed`."""
    modes = {"per_speaker" if m.per_utterance_norm else "train_global" for m in predictor.members}
    return modes.pop() if len(modes) == 1 else "mixed"


def model_card(predictor: Predictor) -> dict:
    features = predictor.feature_config
    source = Path(predictor.source)
    run_dir = _run_dir(source)
    summary = _read(run_dir / "summary.json") if run_dir else {}
    run_config = _read(run_dir / "run_config.json") if run_dir else {}
    modes = ["per_speaker" if m.per_utterance_norm else "train_global" for m in predictor.members]
    return {
        "name": run_dir.name if run_dir else source.name,
        "source": str(source),
        "labels": list(predictor.labels),
        "feature_spec": {
            "feature_type": features.feature_type.value,
            "dim": predictor.computer.dim,
            "frame_rate": predictor.computer.frame_rate,
            "sample_rate": features.logmel.sample_rate,
            "config": features.to_dict(),
        },
        "ensemble": {"members": len(predictor.members), "sources": [Path(m.source).as_posix() for m in predictor.members],
                     "averaging": "class probabilities, mean over members"},
        "normalization": {
            "mode": normalization_name(predictor),
            "per_member": modes,
            "description": {"train_global": "each member's training-part mean/std",
                            "per_speaker": "each input standardised by its own mean/std (per-speaker training)"}},
        "protocol": summary.get("protocol") or run_config.get("protocol"),
        "scores": {k: summary[k] for k in SCORE_KEYS if k in summary} or None,
    }


def _run_dir(source: Path) -> Path | None:
    if any(source.glob("fold_*")):
        return source
    if source.parent.name.startswith("fold_"):
        return source.parent.parent
    return None


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
