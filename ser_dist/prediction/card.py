"""What a loaded model is: labels, feature spec, ensemble, normalisation, and its run's protocol and scores.

One description shared by the ONNX export (export.json) and the Serve application (GET /model).
The protocol and scores come from the run folder's `summary.json` (or `run_config.json` while a run
has no summary), found by `ser_dist.runs.RunFolder.of`: a lone checkpoint folder inside `fold_<k>/` belongs to
the run two levels up.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ser_dist.runs import RunFolder

if TYPE_CHECKING:
    from ser_dist.prediction.predictor import Predictor

SCORE_KEYS = ("uar", "war", "macro_f1", "fold_uar", "fold_war", "n_test")


def normalization_name(predictor: Predictor) -> str:
    """`train_global` (training-part statistics), `per_speaker` / `per_corpus` (each input by its own), or `mixed`."""
    modes = {m.normalization if m.per_utterance_norm else "train_global" for m in predictor.members}
    return modes.pop() if len(modes) == 1 else "mixed"


def model_card(predictor: Predictor) -> dict:
    features = predictor.feature_config
    source = Path(predictor.source)
    run = RunFolder.of(source)
    summary = run.read_summary() if run and run.has_summary() else {}
    run_config = run.read_run_config() if run else {}
    modes = [m.normalization if m.per_utterance_norm else "train_global" for m in predictor.members]
    return {
        "name": run.name if run else source.name,
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
                            "per_speaker": "each input standardised by its own mean/std (per-speaker training)",
                            "per_corpus": "each input standardised by its own mean/std (per-corpus training)"}},
        "protocol": summary.get("protocol") or run_config.get("protocol"),
        "scores": {k: summary[k] for k in SCORE_KEYS if k in summary} or None,
    }

