"""Advantages (GRPO, Dr. GRPO, RLOO): hand-computed values, degenerate groups, unbiased std."""

import math

import pytest
import torch

from papo.algos import ADVANTAGE_ESTIMATORS, group_advantages, group_stats, rloo_advantages

EPS = 1e-6

# Three groups with unsorted, non-contiguous ids:
#   id 5 -> indices 0, 2: rewards [1.0, 0.5]     mean 0.75, unbiased std sqrt(0.125) = 0.35355339
#   id 2 -> indices 1, 4, 5: rewards [0, 1, 1]   mean 2/3,  unbiased std sqrt(1/3)   = 0.57735027
#   id 9 -> index 3: reward [2.0]                size 1 -> advantage 0
REWARDS = torch.tensor([1.0, 0.0, 0.5, 2.0, 1.0, 1.0])
IDS = torch.tensor([5, 2, 5, 9, 2, 2])


def test_grpo_hand_computed():
    adv = group_advantages(REWARDS, IDS)
    s5, s2 = math.sqrt(0.125), math.sqrt(1 / 3)
    expected = [
        0.25 / (s5 + EPS),
        -(2 / 3) / (s2 + EPS),
        -0.25 / (s5 + EPS),
        0.0,
        (1 / 3) / (s2 + EPS),
        (1 / 3) / (s2 + EPS),
    ]
    assert adv.tolist() == pytest.approx(expected, rel=1e-6)
    # the same numbers written out
    assert adv.tolist() == pytest.approx([0.707105, -1.154699, -0.707105, 0.0, 0.577349, 0.577349], abs=2e-6)


def test_grpo_two_groups_of_binary_rewards():
    # rewards [1, 0, 0, 1] in groups [0, 0, 1, 1]: each group mean 0.5, std sqrt(0.5)
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    a = 0.5 / (math.sqrt(0.5) + EPS)  # 0.70710578
    assert adv.tolist() == pytest.approx([a, -a, -a, a], rel=1e-7)
    assert a == pytest.approx(0.7071058, abs=1e-7)


def test_dr_grpo_is_centered_only():
    adv = group_advantages(REWARDS, IDS, norm_by_std=False)
    assert adv.tolist() == pytest.approx([0.25, -2 / 3, -0.25, 0.0, 1 / 3, 1 / 3], abs=1e-7)


def test_rloo_hand_computed():
    # id 5: 1.0 - 0.5 = 0.5, 0.5 - 1.0 = -0.5; id 2: 0 - mean(1, 1) = -1, 1 - mean(0, 1) = 0.5; id 9: 0
    adv = rloo_advantages(REWARDS, IDS)
    assert adv.tolist() == pytest.approx([0.5, -1.0, -0.5, 0.0, 0.5, 0.5], abs=1e-7)


@pytest.mark.parametrize(
    "fn", [group_advantages, rloo_advantages, lambda r, g: group_advantages(r, g, False)]
)
def test_identical_rewards_give_exactly_zero(fn):
    # In float32, mean([0.9] * 3) != 0.9 (off by 6e-8); divided by std + 1e-6 that would be an advantage
    # of 0.06 for a group that carries no signal. The estimators must return exactly 0.
    rewards = torch.tensor([0.9, 0.9, 0.9] + [0.1] * 7 + [1.0, 0.0])
    ids = torch.tensor([3, 3, 3] + [8] * 7 + [4, 4])
    adv = fn(rewards, ids)
    assert adv[:10].tolist() == [0.0] * 10  # exact, not rounding noise
    assert adv[10] > 0 > adv[11]


def test_unbiased_std_matches_torch_std():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(40, generator=g, dtype=torch.float64)
    ids = torch.randint(100, 110, (40,), generator=g)
    mean, std, count, _ = group_stats(rewards, ids)
    adv = group_advantages(rewards, ids)
    for gid in ids.unique():
        sel = ids == gid
        r = rewards[sel]
        assert count[sel][0].item() == sel.sum().item()
        if r.numel() > 1:
            assert torch.allclose(std[sel], r.std(unbiased=True).expand(r.numel()))
            assert torch.allclose(adv[sel], (r - r.mean()) / (r.std() + EPS))
        else:
            assert adv[sel].item() == 0.0
        assert torch.allclose(mean[sel], r.mean().expand(r.numel()))


def test_integer_rewards_and_order_invariance():
    adv = group_advantages(torch.tensor([1, 0, 0, 1]), torch.tensor([0, 0, 1, 1]))
    assert adv.is_floating_point()
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert torch.equal(group_advantages(REWARDS[perm], IDS[perm]), group_advantages(REWARDS, IDS)[perm])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same length"):
        group_advantages(torch.zeros(3), torch.zeros(4, dtype=torch.long))


def test_registry_entries_match_functions():
    assert ADVANTAGE_ESTIMATORS.names() == ["dr_grpo", "grpo", "rloo"]
    assert torch.equal(ADVANTAGE_ESTIMATORS.get("grpo")(REWARDS, IDS), group_advantages(REWARDS, IDS))
    assert torch.equal(
        ADVANTAGE_ESTIMATORS.get("dr_grpo")(REWARDS, IDS), group_advantages(REWARDS, IDS, norm_by_std=False)
    )
    assert torch.equal(ADVANTAGE_ESTIMATORS.get("rloo")(REWARDS, IDS), rloo_advantages(REWARDS, IDS))
