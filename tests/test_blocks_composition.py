"""MethodBlocks (papo.blocks.composition), what the module calls: the identity when every group is none; VPPO's
composition by hand (mini-batch range, micro-batch mean, then the token filter); a shaper without a signal is a
config error naming the group."""

from __future__ import annotations

import math

import pytest
import torch

from papo.blocks.composition import MethodBlocks
from papo.blocks.sensitivity_sampled import SampledTokenSensitivity
from papo.blocks.shaping_vppo import VppoTrajectoryShaping
from papo.blocks.token_selection import TokenSelection


class FakePasses:
    """ModelPasses over given tensors (the module's are papo.models.rollout_passes.RolloutPasses)."""

    temperature = 1.0

    def __init__(self, logps, alt, hidden=None, head=None) -> None:
        self._logps, self._hidden, self._head = (logps, alt), hidden, head

    def logps(self, masked: bool) -> torch.Tensor:
        return self._logps[int(masked)]

    def hidden(self, masked: bool) -> torch.Tensor:
        return self._hidden[int(masked)]

    def head(self):
        return self._head


def test_every_group_none_is_the_identity() -> None:
    blocks = MethodBlocks()
    assert not blocks.needs_scores and not blocks.needs_masked
    adv = torch.randn(2, 3)
    shaped, metrics = blocks.shape(adv, torch.ones(2, 3), None, blocks.populations(None, torch.ones(2, 3)))
    assert shaped is adv and metrics == {}
    exp, m = blocks.rollout(lambda b, n: ("rows", n), {}, 4, 0, 1)
    assert exp == ("rows", 4) and m == {}
    # a signal that no shaper uses is not computed
    assert MethodBlocks(sensitivity=SampledTokenSensitivity("k3")).sensitivity is None


def test_a_shaper_without_a_signal_names_the_sensitivity_group() -> None:
    with pytest.raises(ValueError, match=r"token_selection need .*sensitivity=k3"):
        MethodBlocks(token_selection=TokenSelection())


def test_vppo_composition_by_hand() -> None:
    blocks = MethodBlocks(
        sensitivity=SampledTokenSensitivity("k1"),
        token_selection=TokenSelection("top_fraction_per_sequence", 0.5),
        advantage_shaping=VppoTrajectoryShaping(0.9),
    )
    assert blocks.needs_scores and blocks.needs_masked
    # k1 = l - l': a mini-batch of 3 responses with mean signals 0, 1 and 4
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    logps = torch.tensor([[-1.0, -1.0], [-1.0, -1.0], [-1.0, -3.0]])
    alt = torch.tensor([[-1.0, -1.0], [-1.5, -2.5], [-5.0, -9.0]])
    scores = blocks.score(FakePasses(logps, alt), mask)
    assert scores.tolist() == [[0.0, 0.0], [0.5, 1.5], [4.0, 0.0]]
    m = blocks.score_metrics(scores, mask)
    assert m == {"sensitivity/token_mean": pytest.approx(6.0 / 5), "sensitivity/token_max": 4.0}
    pops = blocks.populations(scores, mask)
    assert pops == [(0.0, 4.0), None]
    # micro-batch = the last two responses, in the mini-batch's range (0, 4): u = (0.25, 1), mu = 0.625,
    # alpha = 0.9 + 0.1 u / 0.625 = (0.94, 1.06) (its own range would give 0.9 and 1.1); then the top half of
    # each response's tokens keeps its advantage: ceil(0.5 * 2) = 1 and ceil(0.5 * 1) = 1 tokens
    adv = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    shaped, metrics = blocks.shape(adv, mask[1:], scores[1:], pops)
    assert torch.allclose(shaped, torch.tensor([[0.0, 0.94], [2.12, 0.0]]))
    assert metrics["advantage_shaping/scale_max"] == pytest.approx(1.06)
    assert metrics["token_selection/kept_frac"] == pytest.approx(2 / 3)


def test_a_full_distribution_signal_reads_the_hidden_states_and_the_head() -> None:
    from papo.blocks.sensitivity_distribution import DistributionSensitivity

    # head = identity on 2 dims: logits = hidden; real (0, 0) -> p = (1/2, 1/2); altered (ln 3, 0) -> q = (3/4, 1/4)
    hidden = torch.zeros(1, 2, 2)
    alt = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]])
    mask = torch.ones(1, 2)
    passes = FakePasses(None, None, hidden=(hidden, alt), head=(torch.eye(2), None))
    kl = DistributionSensitivity("kl", chunk_size=1).score(passes, mask)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert kl[0, 0].item() == pytest.approx(expected) and kl[0, 1].item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="hidden states"):
        DistributionSensitivity("jsd")(torch.zeros(1, 2), torch.zeros(1, 2), mask)
    with pytest.raises(ValueError, match="Valid names"):
        DistributionSensitivity("kl3")
