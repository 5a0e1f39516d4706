"""Prediction with trained checkpoints: files, folders, signals, and timelines of long recordings."""

from ser_dist.prediction.predictor import Prediction, Predictor, Segment, Timeline, predict_paths
from ser_dist.prediction.segmentation import (
    DroppedSpan,
    SegmentationConfig,
    Segmenter,
    fixed_windows,
    vad_segments,
)

__all__ = [
    "DroppedSpan",
    "Prediction",
    "Predictor",
    "Segment",
    "SegmentationConfig",
    "Segmenter",
    "Timeline",
    "fixed_windows",
    "predict_paths",
    "vad_segments",
]
