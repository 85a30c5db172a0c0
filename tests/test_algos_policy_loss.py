"""Clipped policy loss (PPO/DAPO + dual clip) and GSPO: hand values, clip fractions, padding."""

import math

import pytest
import torch

from papo.algos import POLICY_LOSSES, clipped_policy_loss, gspo_policy_loss

# Six response tokens + one padding token, old log-probs 0 so that ratio = exp(logps).
#   tok  A   r     -A r   -A clip(r, .8, 1.3)  max    dual(c=3)  flags
#   0    1   1.5   -1.5   -1.3                 -1.3   -1.3       high clip
#   1    1   0.5   -0.5   -0.8                 -0.5   -0.5
#   2   -1   0.5    0.5    0.8                  0.8    0.8       low clip
#   3   -1   10    10      1.3                 10      3         dual clip
#   4   -1   1      1      1                    1      1
#   5    2   1     -2     -2                   -2     -2
#   pad -5   e^5   (never counts)
RATIOS = [1.5, 0.5, 0.5, 10.0, 1.0, 1.0, math.exp(5.0)]
ADV = torch.tensor([[1.0, 1.0, -1.0, -1.0, -1.0, 2.0, -5.0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
OLD = torch.zeros(1, 7)


def _logps():
    return torch.log(torch.tensor([RATIOS])).requires_grad_(True)


def test_ppo_clip_hand_values_and_metrics():
    logps = _logps()
    loss, m = clipped_policy_loss(logps, OLD, ADV, MASK, clip_low=0.2, clip_high=0.3, dual_clip=3.0)
    assert loss.item() == pytest.approx((-1.3 - 0.5 + 0.8 + 3.0 + 1.0 - 2.0) / 6, rel=1e-6)  # 1/6
    assert m["clipfrac_high"].item() == pytest.approx(1 / 6)
    assert m["clipfrac_low"].item() == pytest.approx(1 / 6)
    assert m["clipfrac_dual"].item() == pytest.approx(1 / 6)
    assert m["clipfrac"].item() == pytest.approx(2 / 6)
    assert m["ratio_mean"].item() == pytest.approx(14.5 / 6, rel=1e-6)
    assert m["ratio_max"].item() == pytest.approx(10.0, rel=1e-6)
    assert m["ratio_min"].item() == pytest.approx(0.5, rel=1e-6)
    # approx_kl = mean(l_old - l) = -(ln 1.5 + 2 ln 0.5 + ln 10) / 6 = -0.22029264
    assert m["approx_kl"].item() == pytest.approx(-0.22029264, abs=1e-6)
    # approx_kl_k3 = mean(r - 1 - ln r) = (0.0945349 + 2 * 0.1931472 + 6.6974149) / 6 = 1.19637403
    assert m["approx_kl_k3"].item() == pytest.approx(1.19637403, abs=1e-6)
    assert all(not v.requires_grad for v in m.values())
    loss.backward()
    # d/dl of -A r = -A r on unclipped tokens, times 1/6; clipped / dual-clipped / padding tokens get 0
    expected = [0.0, -0.5 / 6, 0.0, 0.0, 1.0 / 6, -2.0 / 6, 0.0]
    assert logps.grad[0].tolist() == pytest.approx(expected, abs=1e-7)


def test_dual_clip_disabled():
    loss, m = clipped_policy_loss(_logps(), OLD, ADV, MASK, clip_low=0.2, clip_high=0.3, dual_clip=None)
    assert loss.item() == pytest.approx((-1.3 - 0.5 + 0.8 + 10.0 + 1.0 - 2.0) / 6, rel=1e-6)  # 8/6
    assert m["clipfrac_dual"].item() == 0.0


def test_dual_clip_with_huge_ratio_is_finite_and_capped():
    logps = torch.tensor([[50.0, 50.0]], requires_grad=True)  # log-ratio clamped to 20 -> r = e^20
    adv = torch.tensor([[-1.0, 2.0]])
    loss, m = clipped_policy_loss(logps, torch.zeros(1, 2), adv, torch.ones(1, 2), dual_clip=3.0)
    # token 0: min(max(e^20, 1.2), 3) = 3;  token 1: max(-2 e^20, -2 * 1.2) = -2.4
    assert loss.item() == pytest.approx((3.0 - 2.4) / 2, rel=1e-6)
    assert m["clipfrac_dual"].item() == 0.5 and m["clipfrac_high"].item() == 0.5
    assert m["ratio_max"].item() == pytest.approx(math.exp(20.0), rel=1e-5)
    loss.backward()
    assert torch.equal(logps.grad, torch.zeros(1, 2))


def test_dual_clip_must_exceed_one():
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_policy_loss(_logps(), OLD, ADV, MASK, dual_clip=0.5)


def test_sequence_advantages_broadcast_and_agg_mode():
    logps = torch.zeros(2, 3, requires_grad=True)  # r = 1 everywhere -> loss_mat = -A
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = torch.tensor([1.0, -2.0])
    loss, _ = clipped_policy_loss(logps, torch.zeros(2, 3), adv, mask, agg_mode="seq-mean-token-mean")
    assert loss.item() == pytest.approx((-1.0 + 2.0) / 2)
    loss_tm, _ = clipped_policy_loss(logps, torch.zeros(2, 3), adv, mask, num_tokens=8)
    assert loss_tm.item() == pytest.approx((-3.0 + 2.0) / 8)


def _garbage_padding(x, mask):
    y = x.detach().clone()
    y[~mask.bool()] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e4])[
        : int((~mask.bool()).sum())
    ]
    return y


@pytest.mark.parametrize("name", ["ppo_clip", "gspo"])
def test_padding_never_contributes(name):
    fn = POLICY_LOSSES.get(name)
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    base = (0.3 * torch.randn(2, 4, generator=g)).requires_grad_(True)
    old = 0.3 * torch.randn(2, 4, generator=g)
    adv = torch.randn(2, 4, generator=g)
    junk = _garbage_padding(base, mask).requires_grad_(True)
    kw = dict(clip_low=0.2, clip_high=0.28)
    la, ma = fn(base, old, adv, mask, **kw)
    lb, mb = fn(junk, _garbage_padding(old, mask), _garbage_padding(adv, mask), mask, **kw)
    assert la.item() == pytest.approx(lb.item(), abs=0, rel=1e-7)
    for k in ma:
        assert ma[k].item() == pytest.approx(mb[k].item(), rel=1e-6, abs=1e-7), k
    la.backward()
    lb.backward()
    assert torch.isfinite(junk.grad).all()
    assert torch.equal(junk.grad[~mask], torch.zeros(3))
    assert torch.allclose(base.grad, junk.grad)


def test_gspo_hand_values():
    # seq 0: log-ratios [0.1, 0.2, 0.3] -> s = exp(0.2) = 1.2214028, A = 1 -> clipped at 1.2: loss -1.2
    # seq 1: log-ratios [-0.1, 0.1, (5)] -> s = exp(0) = 1, A = -1 -> loss 1 per token
    logps = torch.tensor([[0.1, 0.2, 0.3], [-0.1, 0.1, 5.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([1.0, -1.0])
    loss, m = gspo_policy_loss(logps, torch.zeros(2, 3), adv, mask, clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx((-1.2 + 1.0) / 2, rel=1e-6)  # seq-mean-token-mean
    assert m["clipfrac_high"].item() == pytest.approx(3 / 5)
    assert m["clipfrac_low"].item() == 0.0 and m["clipfrac_dual"].item() == 0.0
    assert m["ratio_mean"].item() == pytest.approx((3 * math.exp(0.2) + 2) / 5, rel=1e-6)
    assert m["approx_kl"].item() == pytest.approx(-0.6 / 5, abs=1e-7)
    loss.backward()
    # clipped sequence: 0; seq 1: d(-A s_it)/dl_t = -A s_i = 1, weighted 1/2 (seqs) * 1/2 (tokens)
    assert logps.grad.flatten().tolist() == pytest.approx([0.0, 0.0, 0.0, 0.25, 0.25, 0.0], abs=1e-7)


def test_gspo_value_is_sequence_ratio_and_clamped():
    logps = torch.tensor([[15.0, 15.0], [0.5, -0.5]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    loss, m = gspo_policy_loss(
        logps, torch.zeros(2, 2), adv, torch.ones(2, 2), 0.2, 1e6, agg_mode="token-mean"
    )
    # seq 0: log s = 15 -> clamped to 10; seq 1: log s = 0 -> s = 1 for BOTH tokens (not e^0.5, e^-0.5)
    assert m["ratio_max"].item() == pytest.approx(math.exp(10.0), rel=1e-5)
    assert m["ratio_min"].item() == pytest.approx(1.0)
    assert loss.item() == pytest.approx(-(2 * math.exp(10.0) + 2) / 4, rel=1e-5)
    loss.backward()
    assert logps.grad[0].tolist() == [0.0, 0.0]  # clamp(max=10) saturated
    assert logps.grad[1].tolist() == pytest.approx([-0.25, -0.25])


def test_gspo_equals_ppo_clip_when_sequences_are_on_policy():
    g = torch.Generator().manual_seed(3)
    logps = torch.randn(3, 5, generator=g).requires_grad_(True)
    adv, mask = torch.randn(3, 1, generator=g).expand(3, 5), torch.ones(3, 5)
    lg, _ = gspo_policy_loss(logps, logps.detach(), adv, mask, 0.2, 0.2, agg_mode="token-mean")
    lp, _ = clipped_policy_loss(logps, logps.detach(), adv, mask, 0.2, 0.2)
    (gg,) = torch.autograd.grad(lg, logps)
    (gp,) = torch.autograd.grad(lp, logps)
    assert lg.item() == pytest.approx(lp.item(), rel=1e-6)
    assert torch.allclose(gg, gp)


def test_registry_uniform_call_and_metric_keys():
    assert POLICY_LOSSES.names() == ["gspo", "ppo_clip"]
    keys = None
    for name in POLICY_LOSSES.names():
        loss, m = POLICY_LOSSES.get(name)(
            _logps(), OLD, ADV, MASK, clip_low=0.2, clip_high=0.3, agg_mode="token-mean", num_tokens=6
        )
        assert loss.dim() == 0 and torch.isfinite(loss)
        keys = keys or set(m)
        assert set(m) == keys
    assert keys == {
        "clipfrac",
        "clipfrac_low",
        "clipfrac_high",
        "clipfrac_dual",
        "approx_kl",
        "approx_kl_k3",
        "ratio_mean",
        "ratio_max",
        "ratio_min",
    }


# ---------------------------------------------------------------- the policy-gradient loss component
def _component_inputs(logps, old, adv, mask, agg_mode, num_tokens=None, norm_len=None):
    from papo.losses.base import LossInputs

    return LossInputs(logps, old, adv, mask, agg_mode=agg_mode, num_tokens=num_tokens, norm_len=norm_len)


@pytest.mark.parametrize("policy_loss", ["gspo", "ppo_clip"])
def test_component_token_mean_micro_batches_sum_to_the_full_batch_loss(policy_loss):
    """The module sums token-mean micro-batch losses with scale 1, each normalised by the mini-batch's
    token count: the component must forward ``num_tokens`` to every policy loss (GSPO lost it)."""
    from papo.losses.policy_gradient import PolicyGradientLoss

    g = torch.Generator().manual_seed(0)
    logps = (0.1 * torch.randn(4, 6, generator=g)).requires_grad_(True)
    old = 0.1 * torch.randn(4, 6, generator=g)
    adv = torch.randn(4, 1, generator=g).expand(4, 6)
    mask = torch.ones(4, 6)
    mask[1, 3:] = 0
    mask[3, 1:] = 0  # micro-batches with 9 and 7 tokens
    comp = PolicyGradientLoss(policy_loss, 0.2, 0.28, None)
    full, _ = comp(_component_inputs(logps, old, adv, mask, "token-mean"))
    n = float(mask.sum())
    parts = [
        comp(_component_inputs(logps[s], old[s], adv[s], mask[s], "token-mean", num_tokens=n))[0]
        for s in (slice(0, 2), slice(2, 4))
    ]
    assert (parts[0] + parts[1]).item() == pytest.approx(full.item(), rel=1e-6)
    (g_full,) = torch.autograd.grad(full, logps)
    (g_parts,) = torch.autograd.grad(parts[0] + parts[1], logps)
    assert torch.allclose(g_full, g_parts, atol=1e-7)


def test_component_forwards_dual_clip_to_gspo():
    from papo.losses.policy_gradient import PolicyGradientLoss

    # one sequence, A < 0, sequence ratio e^3 ~ 20 far above the dual-clip bound c = 3
    logps, old = torch.full((1, 2), 3.0), torch.zeros(1, 2)
    adv, mask = torch.full((1, 2), -1.0), torch.ones(1, 2)
    inputs = _component_inputs(logps, old, adv, mask, "token-mean")
    plain, _ = PolicyGradientLoss("gspo", 0.2, 0.2, None)(inputs)
    dual, m = PolicyGradientLoss("gspo", 0.2, 0.2, 3.0)(inputs)
    assert plain.item() == pytest.approx(math.exp(3.0), rel=1e-5)
    assert dual.item() == pytest.approx(3.0) and m["clipfrac_dual"] == 1.0


def test_component_rejects_dual_clip_for_a_policy_loss_without_one(monkeypatch):
    from papo.losses.policy_gradient import PolicyGradientLoss

    def plain_pg(logps, old_logps, advantages, mask, clip_low, clip_high, agg_mode="token-mean"):
        raise AssertionError("not called")

    monkeypatch.setitem(POLICY_LOSSES._entries, "_test_plain", plain_pg)
    PolicyGradientLoss("_test_plain", 0.2, 0.2, None)  # fine without a dual clip
    with pytest.raises(ValueError, match=r"dual_clip=3\.0 .* has no dual clip"):
        PolicyGradientLoss("_test_plain", 0.2, 0.2, 3.0)


@pytest.mark.parametrize("policy_loss", ["gspo", "ppo_clip"])
def test_component_forwards_norm_len(policy_loss):
    """Dr. GRPO's seq-mean-token-sum-norm: the loss of a batch does not depend on its longest response."""
    from papo.losses.policy_gradient import PolicyGradientLoss

    g = torch.Generator().manual_seed(1)
    logps, old = 0.1 * torch.randn(3, 4, generator=g), 0.1 * torch.randn(3, 4, generator=g)
    adv, mask = torch.randn(3, 1, generator=g).expand(3, 4), torch.ones(3, 4)
    mask[0, 2:] = 0

    def pad(x):
        return torch.nn.functional.pad(x, (0, 5))

    comp = PolicyGradientLoss(policy_loss, 0.2, 0.28, None)
    agg = "seq-mean-token-sum-norm"
    short, _ = comp(_component_inputs(logps, old, adv, mask, agg, norm_len=16))
    wide, _ = comp(_component_inputs(pad(logps), pad(old), pad(adv), pad(mask), agg, norm_len=16))
    assert wide.item() == pytest.approx(short.item(), rel=1e-6)
    raw_sum, _ = comp(_component_inputs(logps, old, adv, mask, "seq-mean-token-sum"))
    assert short.item() == pytest.approx(raw_sum.item() / 16, rel=1e-6)
