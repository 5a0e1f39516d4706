"""FUSION features: LogMel frames moved onto the encoder's frame grid and concatenated with its frames.

Encoder frame i (stride 320 samples, receptive field 400 samples at 16 kHz: 20 ms / 25 ms) covers
samples [320 i, 320 i + 400). LogMel frame j (hop 160, centred) is centred on sample 160 j, so the
frames centred inside that span are j = 2i, 2i + 1, 2i + 2; their mean is the aligned LogMel frame.
Where the mel ends early (Whisper counts a frame for any started 20 ms), its last frame is repeated.
"""

from __future__ import annotations

import numpy as np

from ser_dist.errors import ConfigError

ENCODER_STRIDE = 320  # samples per encoder frame (50 frames/s at 16 kHz)
MEL_HOP = 160  # samples per LogMel frame (100 frames/s)
_MEL_PER_ENCODER_FRAME = ENCODER_STRIDE // MEL_HOP  # 2
_SPAN = (0, 1, 2)  # mel frames 2i + k, k in _SPAN, are centred in encoder frame i's 400-sample span
# Frames by which the mel may differ from the 2 T_enc + 1 the encoder's span needs: HuBERT-style
# front ends leave up to 2 mel frames of tail unused, Whisper's ceil() grid needs up to 2 more than exist.
_MAX_MISMATCH = 3


def align_logmel_to_encoder(logmel: np.ndarray, n_encoder_frames: int) -> np.ndarray:
    """(T_mel, n_mels) at 100 fps -> (n_encoder_frames, n_mels) at 50 fps, from the same signal."""
    if logmel.ndim != 2 or logmel.shape[0] < 1:
        raise ConfigError(f"expected a LogMel matrix of shape (T, n_mels) with T >= 1, got {logmel.shape}")
    if n_encoder_frames < 1:
        raise ConfigError(f"need at least one encoder frame, got {n_encoder_frames}")
    n_mel = logmel.shape[0]
    needed = _MEL_PER_ENCODER_FRAME * n_encoder_frames + 1  # frames 0 .. 2 T_enc
    if abs(n_mel - needed) > _MAX_MISMATCH:
        raise ConfigError(
            f"{n_mel} LogMel frames cannot match {n_encoder_frames} encoder frames (about {needed} expected): "
            f"both must come from the same signal, with a {MEL_HOP}-sample mel hop and a {ENCODER_STRIDE}-sample "
            f"encoder stride"
        )
    index = _MEL_PER_ENCODER_FRAME * np.arange(n_encoder_frames)[:, None] + np.array(_SPAN)  # (T_enc, 3)
    np.minimum(index, n_mel - 1, out=index)  # repeat the last mel frame where the mel ends early
    return logmel[index].mean(axis=1, dtype=np.float32)  # (T_enc, n_mels)


def fuse(logmel: np.ndarray, encoded: np.ndarray) -> np.ndarray:
    """(T_mel, n_mels) LogMel and (T_enc, D) encoder frames of one signal -> (T_enc, n_mels + D) float32."""
    if encoded.ndim != 2:
        raise ConfigError(f"expected encoder frames of shape (T, D), got {encoded.shape}")
    aligned = align_logmel_to_encoder(logmel, encoded.shape[0])
    return np.concatenate([aligned, encoded.astype(np.float32, copy=False)], axis=1)
