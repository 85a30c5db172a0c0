"""The method blocks as components (papo.blocks): each binds its hyperparameters to the pure maths and gives
hand-computed values; every config of the block groups instantiates to the component it names."""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONFIG_DIR
from papo.algos.entropy import entropy_from_logits
from papo.blocks.base import RolloutView, ShapingInputs
from papo.blocks.sensitivity_sampled import SampledTokenSensitivity
from papo.blocks.shaping_fixed_range import FixedRangeTrajectoryShaping
from papo.blocks.shaping_vppo import VppoTrajectoryShaping, min_max_dependency
from papo.blocks.token_selection import TokenSelection
from papo.losses.base import LossInputs
from papo.losses.entropy import EntropyLoss

MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])


def test_k3_sensitivity_is_the_masked_as_reference_estimator() -> None:
    logps = torch.tensor([[-1.0, -0.5, -2.0, 0.0]])
    alt = torch.tensor([[-2.0, -0.5, -1.0, -7.0]])
    out = SampledTokenSensitivity("k3")(logps, alt, MASK[:1])
    d = torch.tensor([-1.0, 0.0, 1.0])  # l' - l
    expected = torch.exp(d) - d - 1  # e^-1, 0, e - 2
    assert torch.allclose(out[0, :3], expected) and out[0, 3] == 0  # padding exactly 0
    assert torch.allclose(
        SampledTokenSensitivity("k1")(logps, alt, MASK[:1])[0, :3], torch.tensor([1.0, 0.0, -1.0])
    )
    with pytest.raises(ValueError, match="valid"):
        SampledTokenSensitivity("kl2")


def test_token_selection_zeroes_the_advantages_of_dropped_tokens() -> None:
    scores = torch.tensor([[3.0, 1.0, 2.0, 9.0], [0.5, 0.7, 9.0, 9.0]])  # 9 at padding never wins
    adv = torch.tensor([[2.0] * 4, [-1.0] * 4])
    sel = TokenSelection("top_fraction_per_sequence", 0.4)
    shaped, metrics = sel(ShapingInputs(adv, MASK, scores))
    # row 0: ceil(0.4 * 3) = 2 kept (scores 3 and 2); row 1: ceil(0.4 * 2) = 1 kept (score 0.7)
    assert shaped.tolist() == [[2.0, 0.0, 2.0, 0.0], [0.0, -1.0, 0.0, 0.0]]
    assert metrics["kept_frac"] == pytest.approx(3 / 5)
    assert metrics["score_kept"] == pytest.approx((3 + 2 + 0.7) / 3)
    assert metrics["score_dropped"] == pytest.approx((1 + 0.5) / 2)
    with pytest.raises(ValueError, match="Valid names"):
        TokenSelection("top_k", 0.4)
    with pytest.raises(ValueError, match=r"token_selection\.value"):
        TokenSelection("top_fraction_per_sequence", 1.5)


def test_vppo_shaping_scales_by_normalised_mean_sensitivity() -> None:
    scores = torch.tensor([[1.0, 1.0, 1.0, 0.0], [2.0, 4.0, 0.0, 0.0]])  # S = 1 and 3
    adv = torch.tensor([[1.0] * 4, [-2.0] * 4])
    shaper = VppoTrajectoryShaping(beta_min=0.9)
    # own range (1, 3): u = (0, 1), mu = 0.5, beta_max = 0.9 + 0.1 / 0.5 = 1.1, alpha = (0.9, 1.1)
    shaped, m = shaper(ShapingInputs(adv, MASK, scores))
    assert torch.allclose(shaped[:, 0], torch.tensor([0.9, -2.2]), atol=1e-6)
    assert m["scale_min"] == pytest.approx(0.9) and m["scale_max"] == pytest.approx(1.1)
    assert m["dependency_mean"] == pytest.approx(2.0)
    # the mini-batch's range (0, 4): u = (0.25, 0.75), mu = 0.5, alpha = 0.9 + 0.1 u / 0.5 = (0.95, 1.05)
    shaped, _ = shaper(ShapingInputs(adv, MASK, scores, population=(0.0, 4.0)))
    assert torch.allclose(shaped[:, 0], torch.tensor([0.95, -2.1]), atol=1e-6)
    assert shaper.population(scores, MASK) == pytest.approx((1.0, 3.0))


def test_vppo_shaping_needs_two_responses_in_the_mini_batch() -> None:
    one = torch.tensor([[1.0, 1.0, 1.0, 0.0], [5.0, 5.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # one response with tokens
    assert min_max_dependency(one, mask) == (0.0, 0.0)
    adv = torch.ones(2, 4)
    shaped, _ = VppoTrajectoryShaping(0.9)(ShapingInputs(adv, mask, one, population=(0.0, 0.0)))
    assert torch.equal(shaped, adv)  # degenerate range: alpha = 1


def test_fixed_range_shaping_stays_in_its_range() -> None:
    scores = torch.tensor([[1.0, 1.0, 1.0, 0.0], [2.0, 4.0, 0.0, 0.0]])
    shaped, m = FixedRangeTrajectoryShaping(0.8, 1.2)(ShapingInputs(torch.ones(2, 4), MASK, scores))
    assert torch.allclose(shaped[:, 0], torch.tensor([0.8, 1.2]))
    assert m["scale_mean"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="beta_min"):
        FixedRangeTrajectoryShaping(1.2, 0.8)


def test_entropy_from_logits_by_hand() -> None:
    assert float(entropy_from_logits(torch.zeros(2))) == pytest.approx(math.log(2))
    # a suppressed id gets probability 0: two live ids left
    assert float(entropy_from_logits(torch.zeros(3), suppress_ids=torch.tensor([2]))) == pytest.approx(
        math.log(2)
    )
    # temperature 0.5 on logits (0, ln 2): softmax of (0, 2 ln 2) = (1/5, 4/5)
    h = float(entropy_from_logits(torch.tensor([0.0, math.log(2)]), temperature=0.5))
    assert h == pytest.approx(-(0.2 * math.log(0.2) + 0.8 * math.log(0.8)))
    # the gradient is finite with suppressed ids (0 * -inf must not reach it): dH/dz = -p (log p + H)
    z = torch.zeros(3, requires_grad=True)
    entropy_from_logits(z, suppress_ids=torch.tensor([2])).backward()
    assert torch.allclose(z.grad, torch.zeros(3))  # uniform over the two live ids: a stationary point


def test_entropy_loss_sampled_penalty_and_full_bonus() -> None:
    logps = torch.tensor([[-1.0, -2.0, -3.0, -50.0]], requires_grad=True)
    mask = MASK[:1]
    inputs = LossInputs(logps, logps.detach(), torch.zeros(1, 4), mask)
    loss, m = EntropyLoss(0.06, "sampled")(inputs)
    assert float(loss.detach()) == pytest.approx(0.06 * 2.0) and m["entropy"] == pytest.approx(
        2.0
    )  # mean of 1, 2, 3
    full = EntropyLoss(-1e-3, "full")
    assert full.needs_entropy and not EntropyLoss(0.06, "sampled").needs_entropy
    with pytest.raises(ValueError, match="entropies"):
        full(inputs)
    inputs.entropies = torch.tensor([[0.5, 1.5, 1.0, 99.0]])
    loss, m = full(inputs)
    assert float(loss.detach()) == pytest.approx(-1e-3 * 1.0) and m["entropy"] == pytest.approx(1.0)
    assert not EntropyLoss(0.0).active


def test_plain_rollout_view_samples_the_whole_group_from_the_batch() -> None:
    calls = []
    exp, metrics = RolloutView().rollout(lambda b, n: calls.append((b, n)) or "exp", {"uid": ["a"]}, 5, 0, 10)
    assert exp == "exp" and calls == [({"uid": ["a"]}, 5)] and metrics == {}


BLOCK_GROUPS = ("sensitivity", "token_selection", "advantage_shaping", "rollout_view")
CASES = [(g, p.stem) for g in BLOCK_GROUPS for p in sorted((Path(CONFIG_DIR) / g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_block_config_instantiates(group: str, option: str) -> None:
    cfg = OmegaConf.load(Path(CONFIG_DIR, group, f"{option}.yaml"))
    cfg = OmegaConf.merge({"seed": 3}, {"block": cfg}).block  # the one interpolation the groups use
    if cfg.get("_target_") is None:
        assert option == "none"
        return
    block = hydra.utils.instantiate(cfg)
    assert type(block).__name__ == cfg._target_.rsplit(".", 1)[-1]
