"""Models: a config dataclass beside the network it builds (see timnet.py)."""

from __future__ import annotations

from ser_dist.model.timnet import MaskedBatchNorm1d, TimNet, TimNetConfig, count_parameters

__all__ = ["MaskedBatchNorm1d", "TimNet", "TimNetConfig", "count_parameters"]
