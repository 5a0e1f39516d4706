"""TIM-Net: a bidirectional stack of gated, dilated causal convolutions with multi-scale fusion.

After Ye, Wen, Wang, Zhang, Chen, Li (ICASSP 2023), "Temporal Modeling Matters: A Novel Temporal
Emotional Modeling Approach for Speech Emotion Recognition" (reference Keras code: Jiaxin-Ye/TIM-Net_SER).

    x (B, T, D) ──[masked avg-pool over time, optional]──[1x1 projection D -> width, per direction]
        forward:  h_f                      backward: h_b = h reversed *within each real length*
        block j (dilation 2^j), per direction, separate weights:
            branch = 2 x [causal dilated conv(k, d) -> masked BatchNorm -> ReLU -> Dropout1d]
            out    = in * sigmoid(branch)                               (TIM-Net's gate)
        block vector g_j = masked-mean(out_f) + masked-mean(out_b)   # (B, width)
    fused = sum_j softmax(w)_j * g_j   # (B, width)   (learned "dynamic fusion" over scales)
    logits = Linear(Dropout(fused))    # (B, n_classes)

Design choices (documented here, once):
- Forward and backward stacks have separate weights, as in the reference code (each
  Temporal_Aware_Block call there builds new layers). Both directions run as one grouped Conv1d
  (groups=2), so the bidirectional model costs one kernel call per layer, not two.
- The backward pass reverses every sequence within its own length, so its padding also sits at the
  end; both passes see real frames at positions [0, L) and causal convolutions never look at padding.
  Padding is additionally zeroed before every convolution, and pooled statistics are masked.
- BatchNorm is masked (`MaskedBatchNorm1d`): in training, batch mean/variance come from real frames
  only and feed the running statistics; in eval the running statistics are used, so an utterance's
  logits do not depend on how much padding its batch has.
- The fusion weights are softmax-normalised by default; they start at zero, i.e. a plain mean over
  scales. `fusion="linear"` is the reference's WeightLayer instead: an unconstrained weighted sum,
  weights drawn from U(-0.05, 0.05) (Keras' "uniform"). `block_weights()` returns them for reports.
- `init="keras"` initialises convolutions and the classifier as Keras does (Glorot-uniform weights,
  zero biases); `bn_momentum` / `bn_eps` set BatchNorm's (Keras: momentum 0.99 = torch 0.01, eps 1e-3).
  The "timnet_paper" preset (`ser_dist.model.presets`) sets all of these to the reference's values.
- `input_projection=True` (default) maps D -> width with a pointwise conv per direction (the reference's
  1x1 "causal" conv). With `input_projection=False` the input is used as is and `input_dim` must equal
  `width`.
- `time_pool > 1` average-pools the input over non-overlapping windows of `time_pool` frames (masked:
  a window averages only its real frames); lengths become ceil(length / time_pool).
- Receptive field of the stack: 1 + 2 * (kernel_size - 1) * (2**n_blocks - 1) (pooled) frames.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ser_dist.errors import ConfigError


@dataclass(frozen=True)
class TimNetConfig:
    input_dim: int  # feature size D: 128 LOGMEL, 768 HUBERT, 896/512 FUSION
    n_classes: int
    width: int = 64  # filters per direction
    n_blocks: int = 8  # temporal-aware blocks; dilations 1, 2, 4, ..., 2**(n_blocks - 1)
    kernel_size: int = 2
    dropout: float = 0.1  # spatial (whole-channel) dropout in the blocks, and before the classifier
    bidirectional: bool = True
    input_projection: bool = True  # pointwise conv D -> width; if False, input_dim must equal width
    time_pool: int = 1  # average-pool the input over this many frames (cuts cost); 1 = off
    input_dropout: float = 0.0  # element dropout on the input features
    head_dropout: float | None = None  # dropout before the classifier; None = `dropout` (the reference: 0)
    fusion: str = "softmax"  # softmax: convex weights over scales | linear: the reference's free weights
    init: str = "torch"  # torch defaults | keras: Glorot-uniform weights and zero biases, as the reference
    bn_momentum: float = 0.1  # torch convention (Keras' 0.99 is 0.01 here)
    bn_eps: float = 1e-5
    # Segment inference: in eval mode an utterance longer than eval_window frames (input frames, before
    # time pooling) is scored as overlapping windows (hop = half a window) whose logits are averaged;
    # pairs with random-crop training (AugmentOptions.max_frames). None: whole utterances.
    eval_window: int | None = None

    def __post_init__(self) -> None:
        for name in ("input_dim", "width", "n_blocks", "kernel_size", "time_pool"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"TimNetConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.n_classes, int) or self.n_classes < 2:
            raise ConfigError(f"TimNetConfig.n_classes must be an integer >= 2, got {self.n_classes!r}")
        if self.eval_window is not None and (not isinstance(self.eval_window, int) or self.eval_window < 2):
            raise ConfigError(f"TimNetConfig.eval_window must be an integer >= 2 or None, got {self.eval_window!r}")
        if self.fusion not in ("softmax", "linear"):
            raise ConfigError(f"TimNetConfig.fusion must be 'softmax' or 'linear', got {self.fusion!r}")
        if self.init not in ("torch", "keras"):
            raise ConfigError(f"TimNetConfig.init must be 'torch' or 'keras', got {self.init!r}")
        for name in ("dropout", "input_dropout", "head_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ConfigError(f"TimNetConfig.{name} must be in [0, 1), got {value!r}")
        if not self.input_projection and self.input_dim != self.width:
            raise ConfigError(
                f"TimNetConfig: input_projection=False needs input_dim == width, got input_dim="
                f"{self.input_dim} and width={self.width}; set input_projection=True or width={self.input_dim}"
            )

    @property
    def receptive_field(self) -> int:
        """Frames (after time pooling) that the last block's output at one position can see."""
        return 1 + 2 * (self.kernel_size - 1) * (2**self.n_blocks - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TimNetConfig:
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ConfigError(f"TimNetConfig: unknown keys {unknown}; expected some of {', '.join(valid)}")
        missing = [name for name in ("input_dim", "n_classes") if name not in d]
        if missing:
            raise ConfigError(f"TimNetConfig: missing required keys {missing}")
        return cls(**d)


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) real lengths -> (B, T) bool mask, True on real frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]  # (B, T)


def reverse_within_lengths(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence of x (B, C, T) within its real length; padding stays at the end."""
    B, C, T = x.shape
    t = torch.arange(T, device=x.device)[None, :]  # (1, T)
    index = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, T)
    return x.gather(2, index[:, None, :].expand(B, C, T))


def masked_mean(x: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
    """Mean of x (B, C, T) over real frames only -> (B, C). mask (B, 1, T) float."""
    return torch.einsum("bct,bt->bc", x, mask[:, 0, :]) / lengths[:, None].to(x.dtype)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over (B, C, T) whose training statistics come from real (unmasked) frames only.

    Running statistics are updated from those masked statistics (unbiased variance, as nn.BatchNorm1d
    does). In eval mode it is plain BatchNorm with running statistics, hence independent of padding.
    The state dict is that of nn.BatchNorm1d.
    """

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x (B, C, T), mask (B, 1, T) float
        if not self.training:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        m = mask[:, 0, :]  # (B, T)
        n = m.sum()  # real frames in the batch
        mean = torch.einsum("bct,bt->c", x, m) / n  # (C,)
        mean_sq = torch.einsum("bct,bt->c", x * x, m) / n  # (C,)
        var = (mean_sq - mean * mean).clamp(min=0.0)  # (C,) biased, used to normalise
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (n / (n - 1).clamp(min=1))
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
        scale = torch.rsqrt(var + self.eps)  # (C,)
        if self.affine:
            scale = scale * self.weight
            shift = self.bias - mean * scale
        else:
            shift = -mean * scale
        return torch.addcmul(shift[None, :, None], x, scale[None, :, None])  # (B, C, T)


class TemporalAwareBlock(nn.Module):
    """Two causal dilated conv layers whose output gates the block input: out = x * sigmoid(branch).

    With `directions=2` the channels hold [forward | backward] halves, each with its own weights
    (grouped convolutions; BatchNorm and Dropout1d act per channel anyway).
    """

    def __init__(self, width: int, *, kernel_size: int, dilation: int, dropout: float, directions: int,
                 bn_momentum: float = 0.1, bn_eps: float = 1e-5):
        super().__init__()
        channels = width * directions
        self.left_pad = dilation * (kernel_size - 1)  # causal: output t sees inputs t - left_pad .. t
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, dilation=dilation, groups=directions)
        self.norm1 = MaskedBatchNorm1d(channels, momentum=bn_momentum, eps=bn_eps)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, dilation=dilation, groups=directions)
        self.norm2 = MaskedBatchNorm1d(channels, momentum=bn_momentum, eps=bn_eps)
        self.dropout = nn.Dropout1d(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x (B, C, T) zero on padding, mask (B, 1, T)
        h = self.conv1(F.pad(x, (self.left_pad, 0)))  # (B, C, T)
        h = self.dropout(F.relu(self.norm1(h, mask))) * mask
        h = self.conv2(F.pad(h, (self.left_pad, 0)))  # (B, C, T)
        h = self.dropout(F.relu(self.norm2(h, mask)))
        return x * torch.sigmoid(h)  # (B, C, T); zero on padding because x is


class TimNet(nn.Module):
    """TIM-Net classifier over padded frame sequences. See the module docstring for the design."""

    def __init__(self, config: TimNetConfig):
        super().__init__()
        self.config = config
        c = config
        self.directions = 2 if c.bidirectional else 1
        self.input_dropout = nn.Dropout(c.input_dropout)
        # One pointwise conv for all directions: a per-frame map commutes with time reversal.
        self.projection = (
            nn.Conv1d(c.input_dim, c.width * self.directions, kernel_size=1) if c.input_projection else None
        )
        self.blocks = nn.ModuleList(
            TemporalAwareBlock(
                c.width,
                kernel_size=c.kernel_size,
                dilation=2**j,
                dropout=c.dropout,
                directions=self.directions,
                bn_momentum=c.bn_momentum,
                bn_eps=c.bn_eps,
            )
            for j in range(c.n_blocks)
        )
        # softmax fusion: logits start at 0 (a plain mean); linear fusion: the reference's U(-0.05, 0.05)
        initial = torch.zeros(c.n_blocks) if c.fusion == "softmax" else torch.empty(c.n_blocks).uniform_(-0.05, 0.05)
        self.fusion_logits = nn.Parameter(initial)
        self.head_dropout = nn.Dropout(c.dropout if c.head_dropout is None else c.head_dropout)
        self.classifier = nn.Linear(c.width, c.n_classes)
        if c.init == "keras":
            self._keras_init()

    def _keras_init(self) -> None:
        """Glorot-uniform weights and zero biases (Keras' Conv1D/Dense defaults), per direction."""
        for module in self.modules():
            if isinstance(module, nn.Conv1d | nn.Linear):
                weight = module.weight  # Conv1d (out, in/groups, k); grouped: fans are per group
                fan_in = weight.shape[1] * (weight.shape[2] if weight.dim() == 3 else 1)
                groups = module.groups if isinstance(module, nn.Conv1d) else 1
                fan_out = weight.shape[0] // groups * (weight.shape[2] if weight.dim() == 3 else 1)
                bound = (6.0 / (fan_in + fan_out)) ** 0.5
                with torch.no_grad():
                    weight.uniform_(-bound, bound)
                    if module.bias is not None:
                        module.bias.zero_()

    def _check_inputs(self, x: Tensor, lengths: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.config.input_dim:
            raise ConfigError(
                f"TimNet expects x of shape (B, T, {self.config.input_dim}), got {tuple(x.shape)}"
            )
        if lengths.shape != (x.shape[0],):
            raise ConfigError(f"TimNet expects lengths of shape ({x.shape[0]},), got {tuple(lengths.shape)}")
        lengths = lengths.to(device=x.device, dtype=torch.long)
        if x.shape[0] and (int(lengths.min()) < 1 or int(lengths.max()) > x.shape[1]):
            raise ConfigError(
                f"TimNet: lengths must lie in [1, T={x.shape[1]}], got min {int(lengths.min())} "
                f"and max {int(lengths.max())}"
            )
        return lengths

    def _pool_time(self, x: Tensor, mask: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Masked average over windows of time_pool frames: x (B, D, T) -> (B, D, ceil(T/p))."""
        p = self.config.time_pool
        T = x.shape[2]
        extra = -T % p
        x = F.pad(x * mask, (0, extra))  # (B, D, T')
        counts = F.pad(mask, (0, extra)).unflatten(2, (-1, p)).sum(dim=3)  # (B, 1, T'/p)
        x = x.unflatten(2, (-1, p)).sum(dim=3) / counts.clamp(min=1)  # (B, D, T'/p)
        return x, (lengths + p - 1) // p

    def embed(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Fused multi-scale vector before the classifier: x (B, T, D), lengths (B,) -> (B, width)."""
        lengths = self._check_inputs(x, lengths)
        B, T, _ = x.shape
        real = lengths_to_mask(lengths, T)  # (B, T) bool
        h = self.input_dropout(x.masked_fill(~real[:, :, None], 0.0)).transpose(1, 2)  # (B, D, T)
        mask = real[:, None, :].to(h.dtype)  # (B, 1, T)
        if self.config.time_pool > 1:
            h, lengths = self._pool_time(h, mask, lengths)
            T = h.shape[2]
            mask = lengths_to_mask(lengths, T)[:, None, :].to(h.dtype)  # (B, 1, T/p)
        if self.projection is not None:
            h = self.projection(h)  # (B, directions * width, T)
        elif self.directions == 2:
            h = torch.cat([h, h], dim=1)  # (B, 2 * width, T)
        if self.directions == 2:
            width = self.config.width
            h = torch.cat([h[:, :width], reverse_within_lengths(h[:, width:], lengths)], dim=1)
        h = h * mask  # (B, C, T) zero on padding
        pooled = []
        for block in self.blocks:
            h = block(h, mask)  # (B, C, T)
            g = masked_mean(h, mask, lengths)  # (B, C)
            pooled.append(g.unflatten(1, (self.directions, -1)).sum(dim=1))  # (B, width) fwd + bwd
        stacked = torch.stack(pooled, dim=1)  # (B, n_blocks, width)
        return torch.einsum("bkw,k->bw", stacked, self._fusion_weights())  # (B, width)

    def _fusion_weights(self) -> Tensor:
        if self.config.fusion == "linear":
            return self.fusion_logits  # (n_blocks,) free weights, as the reference's WeightLayer
        return torch.softmax(self.fusion_logits, dim=0)  # (n_blocks,)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """x (B, T, D) padded, lengths (B,) real frame counts -> logits (B, n_classes)."""
        window = self.config.eval_window
        if not self.training and window is not None and x.shape[1] > window:
            return self._segment_logits(x, self._check_inputs(x, lengths), window)
        return self.classifier(self.head_dropout(self.embed(x, lengths)))  # (B, n_classes)

    def _segment_logits(self, x: Tensor, lengths: Tensor, window: int) -> Tensor:
        """Mean logits over windows of `window` frames, hop window // 2, the last one flush with the end."""
        hop = max(1, window // 2)
        segments, owners, segment_lengths = [], [], []
        for b, length in enumerate(lengths.tolist()):
            if length <= window:
                starts = [0]
            else:
                starts = list(range(0, length - window + 1, hop))
                if starts[-1] != length - window:
                    starts.append(length - window)
            for start in starts:
                segments.append(x[b, start : start + min(window, length)])  # (<=window, D)
                owners.append(b)
                segment_lengths.append(min(window, length))
        batch = nn.utils.rnn.pad_sequence(segments, batch_first=True)  # (S, <=window, D)
        seg_lengths = torch.tensor(segment_lengths, device=x.device)
        logits = self.classifier(self.head_dropout(self.embed(batch, seg_lengths)))  # (S, n_classes)
        owner = torch.tensor(owners, device=x.device)
        total = torch.zeros(x.shape[0], logits.shape[1], device=x.device, dtype=logits.dtype).index_add_(0, owner, logits)
        counts = torch.bincount(owner, minlength=x.shape[0]).to(logits.dtype)
        return total / counts[:, None]  # (B, n_classes)

    def block_weights(self) -> list[float]:
        """The fusion weight of each block (scale); they sum to 1 with softmax fusion."""
        with torch.no_grad():
            return self._fusion_weights().tolist()


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (not buffers) in model; only those with requires_grad if trainable_only."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
