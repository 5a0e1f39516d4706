from __future__ import annotations

import torch

from ser_dist.training.lmmd import lmmd_loss


def _onehot(y, c):
    return torch.nn.functional.one_hot(torch.as_tensor(y), c).float()


def test_zero_for_identical_distributions():
    torch.manual_seed(0)
    x = torch.randn(12, 8)
    y = torch.tensor([0, 1, 2] * 4)
    assert abs(float(lmmd_loss(x, x.clone(), _onehot(y, 3), _onehot(y, 3)))) < 1e-5


def test_grows_with_a_shift():
    torch.manual_seed(0)
    source = torch.randn(40, 8)
    y = torch.randint(0, 3, (40,))
    values = [float(lmmd_loss(source, torch.randn(40, 8) + shift, _onehot(y, 3), _onehot(y, 3))) for shift in (0.0, 0.5, 1.0, 2.0)]
    # the biased (V-statistic) estimate is > 0 for two finite samples of one distribution; a shift adds to it
    assert values == sorted(values) and values[-1] > 2 * values[0]


def test_class_conditional_not_marginal():
    """Same marginal, swapped classes: plain MMD would be ~0, LMMD is large."""
    torch.manual_seed(0)
    a, b = torch.randn(20, 4) - 3, torch.randn(20, 4) + 3
    source = torch.cat([a, b])
    target = torch.cat([b, a])
    y = torch.tensor([0] * 20 + [1] * 20)
    same = float(lmmd_loss(source, source.clone(), _onehot(y, 2), _onehot(y, 2)))
    swapped = float(lmmd_loss(source, target, _onehot(y, 2), _onehot(y, 2)))
    assert swapped > 0.1 and swapped > 50 * abs(same)


def test_gradients_flow_to_both_sides():
    source = torch.randn(10, 4, requires_grad=True)
    target = (torch.randn(10, 4) + 1).requires_grad_()
    y = torch.tensor([0, 1] * 5)
    lmmd_loss(source, target, _onehot(y, 2), torch.softmax(torch.randn(10, 2), -1)).backward()
    assert source.grad.abs().sum() > 0 and target.grad.abs().sum() > 0
