"""PAPO expressed through the method blocks (loss=papo_blocks, method=papo) gives the same losses and gradients
as the written-out loss=papo: per micro-batch (every aggregation, with and without the released token options)
and end to end in a training step."""

from __future__ import annotations

import pytest
import torch

from papo.blocks.sensitivity_sampled import SampledTokenSensitivity
from papo.blocks.token_selection import TokenSelection
from papo.losses.base import LossInputs
from papo.losses.perception_kl import PerceptionKLLoss
from papo.losses.perception_signal import PerceptionSignalLoss


def _inputs(agg_mode: str, seed: int = 0) -> tuple[LossInputs, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(4, 7)
    mask[1, 5:] = 0
    mask[3, 2:] = 0
    logits = torch.randn(4, 7, generator=g, requires_grad=True)
    logps = torch.nn.functional.logsigmoid(logits)
    masked = logps.detach() + 0.5 * torch.randn(4, 7, generator=g)
    inputs = LossInputs(
        logps=logps,
        old_logps=logps.detach(),
        advantages=torch.zeros(4, 7),
        response_mask=mask,
        agg_mode=agg_mode,
        num_tokens=float(mask.sum()) * 2,  # a micro-batch of a larger mini-batch
        logps_masked=masked,
        progress=0.3,
        norm_len=9,
    )
    return inputs, logits


OPTIONS = [
    ({}, {}),
    ({"top_fraction": 0.2}, {"selection": TokenSelection("top_quantile_per_sequence", 0.2)}),
    ({"token_clip": 0.05}, {"token_clip": 0.05}),
    ({"schedule": "linear", "gamma_end": 0.0}, {"schedule": "linear", "gamma_end": 0.0}),
]


@pytest.mark.parametrize("agg_mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize(("written", "blocks"), OPTIONS)
def test_block_built_term_equals_the_written_out_perception_kl(
    agg_mode: str, written: dict, blocks: dict
) -> None:
    old = PerceptionKLLoss(gamma=0.02, kind="k3", **written)
    new = PerceptionSignalLoss(SampledTokenSensitivity("k3"), gamma=0.02, **blocks)
    a_in, a_logits = _inputs(agg_mode)
    b_in, b_logits = _inputs(agg_mode)
    a, a_metrics = old(a_in)
    b, b_metrics = new(b_in)
    assert torch.equal(a.detach(), b.detach())
    a.backward()
    b.backward()
    assert torch.equal(a_logits.grad, b_logits.grad)
    assert b_metrics["signal"] == a_metrics["kl"] and b_metrics["gamma"] == a_metrics["gamma"]
    assert b_metrics["kept_frac"] == pytest.approx(a_metrics["kept_frac"])
    assert b_metrics["signal_token_max"] == a_metrics["kl_token_max"]
