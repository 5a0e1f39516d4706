"""Local maximum mean discrepancy (LMMD; Zhu et al. 2021, "Deep Subdomain Adaptation Network").

LMMD aligns class-conditional feature distributions: every class c weighs the source items by their
(one-hot) label and the target items by the model's soft prediction for c, and the MMD between the
two weighted samples is averaged over the classes that occur in the source batch. Target labels are
never used: the target side only contributes unlabelled audio and the model's own predictions.
"""

from __future__ import annotations

import torch


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, *, n_kernels: int = 5, multiplier: float = 2.0) -> torch.Tensor:
    """Sum of Gaussian kernels over bandwidths around the mean pairwise distance: (N+M, N+M)."""
    joint = torch.cat([x, y], dim=0)  # (N+M, E)
    distances = torch.cdist(joint, joint).pow(2)
    n = joint.shape[0]
    bandwidth = distances.detach().sum() / max(1, n * n - n)
    bandwidth = bandwidth / (multiplier ** (n_kernels // 2))
    return sum(torch.exp(-distances / (bandwidth * multiplier**i + 1e-8)) for i in range(n_kernels))


def lmmd_loss(source: torch.Tensor, target: torch.Tensor, source_onehot: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """source (N, E), target (M, E), source_onehot (N, C), target_probs (M, C) -> scalar LMMD."""
    present = source_onehot.sum(0) > 0  # classes seen in this source batch
    if not bool(present.any()):
        return source.new_zeros(())
    w_s = source_onehot[:, present] / source_onehot[:, present].sum(0, keepdim=True)  # (N, C')
    t = target_probs[:, present]
    w_t = t / t.sum(0, keepdim=True).clamp_min(1e-8)  # (M, C')
    kernel = gaussian_kernel(source, target)
    n = source.shape[0]
    k_ss, k_tt, k_st = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    per_class = (
        torch.einsum("ic,ij,jc->c", w_s, k_ss, w_s)
        + torch.einsum("ic,ij,jc->c", w_t, k_tt, w_t)
        - 2 * torch.einsum("ic,ij,jc->c", w_s, k_st, w_t)
    )
    return per_class.mean()
