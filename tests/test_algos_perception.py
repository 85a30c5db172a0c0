"""PAPO perception KL (direction, token_clip, top_fraction per sequence as the released code and per micro-batch,
padding, one SGD step) and entropy."""

import math

import pytest
import torch

from papo.algos import kl_estimate, perception_kl, sampled_entropy

# token 0: l = -1, l_mask = -2;  token 1: l = l_mask = -2;  token 2: padding
LOGPS = torch.tensor([[-1.0, -2.0, -0.5]])
LOGPS_MASKED = torch.tensor([[-2.0, -2.0, -3.0]])
MASK = torch.tensor([[1, 1, 0]], dtype=torch.bool)


def test_default_is_code_form_masked_as_ref():
    # d = l_mask - l = [-1, 0] -> k = [e^-1 + 1 - 1, 0] = [0.36787944, 0]
    kl, m = perception_kl(LOGPS, LOGPS_MASKED, MASK)
    assert kl.item() == pytest.approx(math.exp(-1) / 2, abs=1e-7)  # 0.18393972
    assert m["kl"].item() == pytest.approx(0.18393972, abs=1e-7)
    assert m["kl_token_mean"].item() == pytest.approx(0.18393972, abs=1e-7)
    assert m["kl_token_max"].item() == pytest.approx(0.36787944, abs=1e-7)
    assert m["kl_token_var"].item() == pytest.approx(2 * 0.18393972**2, abs=1e-7)  # unbiased, n = 2
    assert m["kept_frac"].item() == 1.0 and m["token_clip_frac"].item() == 0.0
    assert set(m) == {"kl", "kl_token_mean", "kl_token_max", "kl_token_var", "kept_frac", "token_clip_frac"}


def test_direction_swap_is_paper_form():
    # real_as_ref: d = l - l_mask = [1, 0] -> r - log r - 1 with r = e: [e - 2, 0]
    kl, _ = perception_kl(LOGPS, LOGPS_MASKED, MASK, direction="real_as_ref")
    assert kl.item() == pytest.approx((math.e - 2) / 2, abs=1e-7)  # 0.35914091
    swapped, _ = perception_kl(LOGPS_MASKED, LOGPS, MASK)
    assert kl.item() == swapped.item()
    with pytest.raises(ValueError, match=r"\['masked_as_ref', 'real_as_ref'\]"):
        perception_kl(LOGPS, LOGPS_MASKED, MASK, direction="both")


def test_kind_and_agg_mode_are_forwarded():
    kl, _ = perception_kl(LOGPS, LOGPS_MASKED, MASK, kind="k1")  # l - l_mask = [1, 0]
    assert kl.item() == pytest.approx(0.5)
    kl, _ = perception_kl(LOGPS, LOGPS_MASKED, MASK, kind="k1", agg_mode="seq-mean-token-sum")
    assert kl.item() == pytest.approx(1.0)
    kl, _ = perception_kl(LOGPS, LOGPS_MASKED, MASK, kind="k1", num_tokens=4)
    assert kl.item() == pytest.approx(0.25)


# kind="abs" with l = 0 gives per-token values = -l_mask = [[1, 2, 3], [4, 5, (6)]]
ABS_L = torch.zeros(2, 3)
ABS_LM = -torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
ABS_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


@pytest.mark.parametrize(("fraction", "expected"), [(0.4, 1.8), (0.5, 2.4), (1.0, 3.0), (0.01, 1.0)])
def test_top_fraction_across_the_micro_batch(fraction, expected):
    # 5 response tokens; keep ceil(fraction * 5): 2 -> {5, 4}, 3 -> {5, 4, 3}, 5 -> all, 1 -> {5};
    # dropped tokens count as 0 over all 5 tokens: 9 / 5, 12 / 5, 15 / 5, 5 / 5
    logps = ABS_L.clone().requires_grad_(True)
    kl, m = perception_kl(
        logps, ABS_LM, ABS_MASK, kind="abs", top_fraction=fraction, top_fraction_scope="micro_batch"
    )
    assert kl.item() == pytest.approx(expected)
    assert m["kl_token_max"].item() == 5.0  # metrics use all tokens (padding 6 excluded)
    assert m["kl_token_mean"].item() == pytest.approx(3.0)
    kept = math.ceil(fraction * 5)
    assert m["kept_frac"].item() == pytest.approx(kept / 5)
    kl.backward()
    assert int((logps.grad != 0).sum()) == kept
    assert logps.grad[1, 2].item() == 0.0


@pytest.mark.parametrize(
    ("fraction", "expected", "kept"),
    [
        # row 0 [1, 2, 3]: its (1 - f) quantile (linear interpolation) is 2.2 -> {3}; row 1 [4, 5]: 4.6 -> {5}
        (0.4, (3 + 5) / 5, 2),
        # 0.5: thresholds 2 and 4.5 -> {2, 3} and {5}
        (0.5, (2 + 3 + 5) / 5, 3),
        (1.0, 3.0, 5),  # thresholds at each row's minimum: every token
        (0.2, (3 + 5) / 5, 2),  # the released default top_p 0.2: thresholds 2.6 and 4.8
    ],
)
def test_top_fraction_per_sequence_is_the_released_form(fraction, expected, kept):
    logps = ABS_L.clone().requires_grad_(True)
    kl, m = perception_kl(logps, ABS_LM, ABS_MASK, kind="abs", top_fraction=fraction)  # scope: sequence
    assert kl.item() == pytest.approx(expected)
    assert m["kept_frac"].item() == pytest.approx(kept / 5)
    kl.backward()
    assert int((logps.grad != 0).sum()) == kept


def _released_token_level_mask(kld, response_mask, top_p):
    """The released dp_actor's use_kl_prcp_token_level_mask, then average_loss(mode="token")."""
    valid_mask = response_mask.bool()
    masked_kld = kld.masked_fill(~valid_mask, float("nan"))
    thresh = torch.nanquantile(masked_kld, 1.0 - top_p, dim=1, keepdim=True)
    kld = kld * (kld >= thresh).to(kld.dtype)
    return (kld * response_mask).sum() / (response_mask.sum() + 1e-8)


def test_top_fraction_per_sequence_matches_the_released_code_on_random_rows():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([1, 7, 13, 20, 4, 9])
    mask = (torch.arange(20)[None, :] < lengths[:, None]).float()
    logps, logps_masked = -torch.rand(6, 20, generator=g) * 3, -torch.rand(6, 20, generator=g) * 3
    for top_p in (0.2, 0.35, 0.9):
        ours, _ = perception_kl(logps, logps_masked, mask, top_fraction=top_p)
        k3 = perception_kl(logps, logps_masked, mask)[0]  # sanity: selection lowers the value
        released = _released_token_level_mask(kl_estimate(logps, logps_masked, "k3"), mask, top_p)
        assert ours.item() == pytest.approx(released.item(), rel=1e-6) and ours < k3


def test_top_fraction_validation():
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="top_fraction"):
            perception_kl(ABS_L, ABS_LM, ABS_MASK, top_fraction=bad)


def test_token_clip():
    logps = ABS_L.clone().requires_grad_(True)
    kl, m = perception_kl(logps, ABS_LM, ABS_MASK, kind="abs", token_clip=2.5)
    assert kl.item() == pytest.approx((1 + 2 + 2.5 + 2.5 + 2.5) / 5)  # 2.1
    assert m["token_clip_frac"].item() == pytest.approx(3 / 5)
    assert m["kl_token_max"].item() == 5.0  # raw value
    kl.backward()
    assert (logps.grad[0, 2:] == 0).all() and (logps.grad[1] == 0).all()  # clipped / padding
    assert (logps.grad[0, :2] != 0).all()
    # the released order: select on the raw values ({3} and {5} per sequence), then clip them to 2.5
    both, _ = perception_kl(ABS_L, ABS_LM, ABS_MASK, kind="abs", token_clip=2.5, top_fraction=0.4)
    assert both.item() == pytest.approx((2.5 + 2.5) / 5)


@pytest.mark.parametrize("direction", ["masked_as_ref", "real_as_ref"])
def test_padding_never_contributes(direction):
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    base = -torch.rand(2, 4, generator=g)
    lm = -torch.rand(2, 4, generator=g)
    junk, junk_m = base.clone(), lm.clone()
    junk[~mask] = torch.tensor([float("nan"), -float("inf"), 3.0])
    junk_m[~mask] = torch.tensor([-float("inf"), float("nan"), -1e9])
    base.requires_grad_(True)
    junk.requires_grad_(True)
    a, ma = perception_kl(base, lm, mask, direction=direction)
    b, mb = perception_kl(junk, junk_m, mask, direction=direction)
    assert a.item() == b.item()
    assert {k: v.item() for k, v in ma.items()} == {k: v.item() for k, v in mb.items()}
    a.backward()
    b.backward()
    assert torch.isfinite(junk.grad).all()
    assert torch.equal(junk.grad[~mask], torch.zeros(3))
    assert torch.equal(base.grad, junk.grad)


def test_empty_mask_is_zero_not_nan():
    logps = torch.randn(2, 3, requires_grad=True)
    kl, m = perception_kl(logps, torch.randn(2, 3), torch.zeros(2, 3))
    assert kl.item() == 0.0 and all(v.item() == 0.0 for v in m.values())
    kl.backward()
    assert torch.equal(logps.grad, torch.zeros(2, 3))


@pytest.mark.parametrize("direction", ["masked_as_ref", "real_as_ref"])
def test_one_sgd_step_on_minus_kl_increases_kl(direction):
    g = torch.Generator().manual_seed(0)
    B, T, V = 3, 5, 7
    logits = torch.nn.Parameter(torch.randn(B, T, V, generator=g))
    other_logits = torch.randn(B, T, V, generator=g)  # fixed "masked-image" distribution
    tokens = torch.randint(0, V, (B, T, 1), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    logps_masked = torch.log_softmax(other_logits, -1).gather(-1, tokens).squeeze(-1).detach()  # (B, T)

    def kl_now():
        logps = torch.log_softmax(logits, -1).gather(-1, tokens).squeeze(-1)  # (B, T)
        return perception_kl(logps, logps_masked, mask, direction=direction)[0]

    opt = torch.optim.SGD([logits], lr=0.5)
    before = kl_now()
    (-before).backward()
    assert logits.grad.abs().sum() > 0
    assert (logits.grad[1, 3:] == 0).all()  # padding positions get no gradient
    opt.step()
    with torch.no_grad():
        after = kl_now()
    assert after.item() > before.item() + 1e-4


def test_sampled_entropy():
    logps = torch.tensor([[-1.0, -2.0, -9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    h = sampled_entropy(logps, mask)
    assert h.item() == pytest.approx(1.5)
    assert sampled_entropy(logps, mask, agg_mode="seq-mean-token-sum").item() == pytest.approx(3.0)
    assert sampled_entropy(logps, mask, num_tokens=6).item() == pytest.approx(0.5)
    h.backward()
    assert logps.grad.tolist() == [[-0.5, -0.5, 0.0]]


# ---------------------------------------------------------------- components and the masked-branch gradient
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("component", ["double_entropy", "perception_kl"])
def test_component_masked_branch_gradient_flag(component, grad):
    """Each masked-branch component has its own ``mask_branch_grad`` (config: the shared loss-level
    ``loss.mask_branch_grad``): the module recomputes the masked branch with grad when any active
    component asks; a component that did not ask detaches it. Default: detached (released code)."""
    from papo.losses.base import LossInputs
    from papo.losses.double_entropy import DoubleEntropyLoss
    from papo.losses.perception_kl import PerceptionKLLoss

    if component == "double_entropy":
        comp = DoubleEntropyLoss(eta_real=0.0, eta_masked=0.03, mask_branch_grad=grad)
        assert DoubleEntropyLoss().masked_grad is False
    else:
        comp = PerceptionKLLoss(gamma=0.02, mask_branch_grad=grad)
        assert PerceptionKLLoss().masked_grad is False
    assert comp.masked_grad is grad and comp.active
    logps = LOGPS.clone().requires_grad_(True)
    masked = LOGPS_MASKED.clone().requires_grad_(True)  # as recomputed with grad for another component
    loss, _ = comp(LossInputs(logps, logps.detach(), torch.zeros(1, 3), MASK, logps_masked=masked))
    loss.backward()
    assert (masked.grad is not None and bool(masked.grad.abs().sum() > 0)) is grad


def test_loss_level_mask_branch_grad_reaches_both_components():
    from hydra.utils import instantiate

    from conftest import compose_cfg

    for overrides, expected in (([], False), (["loss.mask_branch_grad=true"], True)):
        cfg = compose_cfg(["loss=double_entropy", *overrides])
        comps = {n: instantiate(c) for n, c in cfg.loss.components.items()}
        assert not comps["perception_kl"].active and comps["double_entropy"].active  # gamma 0
        assert comps["double_entropy"].masked_grad is expected
        assert comps["perception_kl"].masked_grad is expected
