"""Trained runs as ONNX graphs (`ser_dist.export.onnx_export`, needs torch) and their torch-free predictor.

Importing this package loads only the predictor side (onnxruntime, numpy, soundfile, soxr).
"""

from ser_dist.export.onnx_predictor import OnnxPredictor, Prediction

__all__ = ["OnnxPredictor", "Prediction"]
