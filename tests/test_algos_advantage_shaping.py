"""Advantage shaping (papo.algos.advantage_shaping): VPPO's trajectory scale and token-level advantages
against hand-computed values; token-level filtering equals VPPO's masked loss."""

from __future__ import annotations

import pytest
import torch

from papo.algos import clipped_policy_loss
from papo.algos.advantage_shaping import (
    fixed_range_trajectory_scale,
    token_level_advantages,
    trajectory_dependency,
    vppo_shaped_advantages,
    vppo_trajectory_scale,
)

ALL = torch.tensor([True, True, True])


def test_trajectory_dependency_is_the_token_mean_per_response() -> None:
    scores = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 9.0, 9.0, 9.0], [5.0, 5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float)
    assert trajectory_dependency(scores, mask).tolist() == [2.0, 4.0, 0.0]


def test_vppo_scale_hand_values() -> None:
    # S = (0.1, 0.3, 0.5): u = (0, 1/2, 1), mu = 1/2, beta_max = 0.9 + 0.1 / 0.5 = 1.1 -> (0.9, 1.0, 1.1)
    scale = vppo_trajectory_scale(torch.tensor([0.1, 0.3, 0.5]), ALL, beta_min=0.9)
    assert torch.allclose(scale, torch.tensor([0.9, 1.0, 1.1]), atol=1e-6)
    # S = (0, 0, 1): u = (0, 0, 1), mu = 1/3, beta_max = 0.9 + 0.3 = 1.2 -> (0.9, 0.9, 1.2), mean 1
    scale = vppo_trajectory_scale(torch.tensor([0.0, 0.0, 1.0]), ALL, beta_min=0.9)
    assert torch.allclose(scale, torch.tensor([0.9, 0.9, 1.2]), atol=1e-6)
    assert scale.mean().item() == pytest.approx(1.0, abs=1e-6)
    # beta_min 0.5: alpha = 0.5 + 0.5 u / mu = (0.5, 0.5, 2.0)
    scale = vppo_trajectory_scale(torch.tensor([0.0, 0.0, 1.0]), ALL, beta_min=0.5)
    assert torch.allclose(scale, torch.tensor([0.5, 0.5, 2.0]), atol=1e-6)


def test_vppo_scale_with_a_population_range_clamps_to_it() -> None:
    # population (0, 1): u = (1/4, 1/2), mu = 3/8, alpha = 0.9 + 0.1 u / mu = (0.9 + 1/15, 0.9 + 2/15)
    scale = vppo_trajectory_scale(torch.tensor([0.25, 0.5]), torch.tensor([True, True]), 0.9, (0.0, 1.0))
    assert torch.allclose(scale, torch.tensor([0.9 + 1 / 15, 0.9 + 2 / 15]), atol=1e-6)
    # scores outside the population range are clamped to u in {0, 1}
    scale = vppo_trajectory_scale(torch.tensor([0.2, 0.5]), torch.tensor([True, True]), 0.9, (0.3, 0.4))
    assert torch.allclose(scale, torch.tensor([0.9, 1.1]), atol=1e-6)


def test_vppo_scale_is_one_when_it_cannot_rank() -> None:
    ones = torch.ones(3)
    assert torch.equal(vppo_trajectory_scale(torch.tensor([0.4, 0.4, 0.4]), ALL), ones)  # no range
    one_valid = torch.tensor([True, False, False])
    assert torch.equal(vppo_trajectory_scale(torch.tensor([0.1, 0.3, 0.5]), one_valid), ones)  # < 2 responses
    # a response without tokens keeps 1; the others are ranked among themselves: u = (0, 1), mu = 1/2
    scale = vppo_trajectory_scale(torch.tensor([0.1, 0.9, 0.5]), torch.tensor([True, False, True]))
    assert torch.allclose(scale, torch.tensor([0.9, 1.0, 1.1]), atol=1e-6)


def test_fixed_range_scale_hand_values() -> None:
    scale = fixed_range_trajectory_scale(torch.tensor([0.1, 0.3, 0.5]), ALL, beta_min=0.8, beta_max=1.2)
    assert torch.allclose(scale, torch.tensor([0.8, 1.0, 1.2]), atol=1e-6)
    with pytest.raises(ValueError, match="beta_max"):
        fixed_range_trajectory_scale(torch.tensor([0.1, 0.3]), ALL[:2], beta_min=1.2, beta_max=0.8)


def test_vppo_shaped_advantages_end_to_end() -> None:
    # token means: (0.1, 0.3, 0.5) -> alpha (0.9, 1.0, 1.1)
    scores = torch.tensor([[0.1, 0.1, 7.0], [0.2, 0.4, 7.0], [0.5, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 0]], dtype=torch.float)
    shaped, m = vppo_shaped_advantages(torch.tensor([1.0, -2.0, 0.5]), scores, mask, beta_min=0.9)
    assert torch.allclose(shaped, torch.tensor([0.9, -2.0, 0.55]), atol=1e-6)
    assert m["dependency_mean"].item() == pytest.approx(0.3)
    assert (m["scale_min"].item(), m["scale_max"].item()) == pytest.approx((0.9, 1.1))
    assert m["scale_mean"].item() == pytest.approx(1.0)
    per_token, _ = vppo_shaped_advantages(torch.tensor([[1.0, 1.0, 1.0]] * 3), scores, mask)
    assert torch.allclose(per_token[:, 0], torch.tensor([0.9, 1.0, 1.1]), atol=1e-6)


def test_token_level_advantages_broadcast_weight_and_zero_padding() -> None:
    keep = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    out = token_level_advantages(torch.tensor([2.0, -1.0]), keep, mask)
    assert out.tolist() == [[2.0, 0.0, 2.0], [0.0, -1.0, 0.0]]


def test_token_filtering_through_advantages_equals_vppo_masked_loss() -> None:
    """VPPO multiplies the per-token clipped loss by the keep mask and normalises by ALL response tokens;
    zeroing the dropped tokens' advantages gives the same loss and gradient."""
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 5, generator=g) * 2
    logps = (old + 0.3 * torch.randn(3, 5, generator=g)).requires_grad_(True)
    adv = torch.tensor([1.0, -0.5, 2.0])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.float)
    keep = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 1, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.float)
    ratio = torch.exp(logps - old)
    a = adv.unsqueeze(1)
    per_token = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 0.8, 1.28))
    per_token = torch.where(a < 0, torch.minimum(per_token, -a * 3.0), per_token)
    vppo = (per_token * keep * mask).sum() / mask.sum()
    (grad_vppo,) = torch.autograd.grad(vppo, logps)
    ours, _ = clipped_policy_loss(logps, old, token_level_advantages(adv, keep, mask), mask, 0.2, 0.28, 3.0)
    (grad_ours,) = torch.autograd.grad(ours, logps)
    assert ours.item() == pytest.approx(vppo.item(), abs=1e-6)
    assert torch.allclose(grad_ours, grad_vppo, atol=1e-6)
