"""TimNet: shapes, padding invariance, masked statistics, learning on a toy problem, config round-trip."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ser_dist.errors import ConfigError
from ser_dist.model import MaskedBatchNorm1d, TimNet, TimNetConfig, count_parameters
from ser_dist.model.timnet import reverse_within_lengths


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions run thousands of times slower with intra-op threads fighting over a busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(**overrides) -> TimNetConfig:
    base = {"input_dim": 12, "n_classes": 3, "width": 8, "n_blocks": 4}
    return TimNetConfig(**(base | overrides))


def warmed_up(model: TimNet, seed: int = 0) -> TimNet:
    """Give BatchNorm non-trivial running statistics (as after training), then switch to eval."""
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(6, 30, model.config.input_dim, generator=gen) * 2 + 0.5
            model(x, torch.randint(5, 31, (6,), generator=gen))
    return model.eval()


def test_output_and_embedding_shapes():
    model = TimNet(tiny_config())
    x, lengths = torch.randn(5, 40, 12), torch.tensor([40, 3, 17, 1, 25])
    assert model(x, lengths).shape == (5, 3)
    assert model.embed(x, lengths).shape == (5, 8)
    assert sum(model.block_weights()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"time_pool": 3}, {"bidirectional": False}, {"input_projection": False, "input_dim": 8}],
    ids=["bidirectional", "time_pool3", "forward_only", "no_projection"],
)
def test_padding_invariance_in_eval(overrides):
    torch.manual_seed(0)
    model = warmed_up(TimNet(tiny_config(**overrides)))
    dim = model.config.input_dim
    utterances = [torch.randn(n, dim) for n in (23, 7, 40, 1)]
    alone = torch.cat([model(u[None], torch.tensor([len(u)])) for u in utterances])
    # in a batch, padded to 40 with garbage (NaN, not zeros) in the padding
    batch = torch.full((4, 40, dim), float("nan"))
    for i, u in enumerate(utterances):
        batch[i, : len(u)] = u
    lengths = torch.tensor([len(u) for u in utterances])
    together = model(batch, lengths)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    # and padded further still
    longer = torch.cat([batch, torch.randn(4, 33, dim) * 50], dim=1)
    torch.testing.assert_close(model(longer, lengths), alone, rtol=1e-4, atol=1e-5)


def test_reverse_within_lengths_keeps_padding_in_place():
    x = torch.arange(10.0).reshape(1, 1, 10).repeat(2, 1, 1)  # (B=2, C=1, T=10)
    out = reverse_within_lengths(x, torch.tensor([10, 4]))
    assert out[0, 0].tolist() == list(range(9, -1, -1))
    assert out[1, 0].tolist() == [3, 2, 1, 0, 4, 5, 6, 7, 8, 9]


def test_masked_pooling_and_batchnorm_ignore_padding():
    # Training-mode batch statistics come from real frames only: padding full of huge values
    # changes neither the output on real frames nor the running statistics.
    torch.manual_seed(0)
    x = torch.randn(3, 4, 20)  # (B, C, T)
    mask = (torch.arange(20)[None, :] < torch.tensor([20, 11, 5])[:, None]).float()[:, None, :]
    norm_a, norm_b = MaskedBatchNorm1d(4), MaskedBatchNorm1d(4)
    out_a = norm_a(x, mask)
    out_b = norm_b(torch.where(mask.bool(), x, torch.full_like(x, 1e4)), mask)
    torch.testing.assert_close(out_a * mask, out_b * mask)
    torch.testing.assert_close(norm_a.running_mean, norm_b.running_mean)
    torch.testing.assert_close(norm_a.running_var, norm_b.running_var)
    real = x.transpose(1, 2)[mask[:, 0].bool()]  # (n_real, C)
    torch.testing.assert_close(norm_a.running_mean, 0.1 * real.mean(0))
    torch.testing.assert_close(norm_a.running_var, 0.9 + 0.1 * real.var(0, unbiased=True))

    # Whole model, training mode (dropout off): padded content never changes the pooled embedding.
    model = TimNet(tiny_config(dropout=0.0))
    x = torch.randn(3, 20, 12)
    lengths = torch.tensor([20, 11, 5])
    garbage = x.clone()
    garbage[1, 11:] = 1e3
    garbage[2, 5:] = -1e3
    torch.testing.assert_close(model.embed(x, lengths), model.embed(garbage, lengths))


def test_learns_a_toy_separable_problem():
    torch.manual_seed(0)
    n, T, dim = 48, 24, 12
    labels = torch.arange(n) % 3
    means = torch.randn(3, dim) * 1.5
    x = torch.randn(n, T, dim) + means[labels][:, None, :]
    lengths = torch.randint(8, T + 1, (n,))
    model = TimNet(tiny_config())
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = nn.functional.cross_entropy(model(x, lengths), labels)
        optimiser.zero_grad()
        loss.backward()
        losses.append(loss.item())
        optimiser.step()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.fusion_logits.grad.abs().sum() > 0
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    with torch.no_grad():
        assert (model(x, lengths).argmax(1) == labels).float().mean() > 0.9


def test_count_parameters():
    config = tiny_config()
    model = TimNet(config)
    w, d, k, D, C = config.width, 2, config.kernel_size, config.input_dim, config.n_classes
    channels = w * d
    projection = D * channels + channels
    per_block = 2 * (channels * w * k + channels) + 2 * (2 * channels)  # grouped convs + BN affine
    expected = projection + config.n_blocks * per_block + config.n_blocks + w * C + C
    assert count_parameters(model) == expected
    model.classifier.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == expected - (w * C + C)


def test_config_round_trip_and_validation():
    config = tiny_config(time_pool=2, input_dropout=0.1, bidirectional=False)
    restored = TimNetConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    model, copy = TimNet(config), TimNet(restored)
    copy.load_state_dict(model.state_dict())
    assert config.receptive_field == 1 + 2 * (2**4 - 1)
    with pytest.raises(ConfigError, match="unknown keys"):
        TimNetConfig.from_dict(config.to_dict() | {"depth": 3})
    with pytest.raises(ConfigError, match="input_projection=False"):
        TimNetConfig(input_dim=128, n_classes=4, input_projection=False)
    with pytest.raises(ConfigError):
        TimNetConfig(input_dim=128, n_classes=4, dropout=1.0)
    with pytest.raises(ConfigError):
        TimNetConfig(input_dim=128, n_classes=1)
    model = TimNet(tiny_config())
    with pytest.raises(ConfigError, match="expects x of shape"):
        model(torch.randn(2, 10, 5), torch.tensor([10, 10]))
    with pytest.raises(ConfigError, match="lengths must lie in"):
        model(torch.randn(2, 10, 12), torch.tensor([11, 0]))
