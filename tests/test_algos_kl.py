"""KL estimators: hand values, clamps at extreme inputs, registry errors."""

import math

import pytest
import torch

from papo.algos import KL_ESTIMATORS, kl_estimate

LOGPS = torch.tensor([[0.0, -1.0, -2.0]])
REF = torch.tensor([[-1.0, -1.0, 0.0]])  # x = l - l_ref = [1, 0, -2], d = l_ref - l = [-1, 0, 2]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("k1", [1.0, 0.0, -2.0]),
        ("abs", [1.0, 0.0, 2.0]),
        ("k2", [0.5, 0.0, 2.0]),
        ("k3", [math.exp(-1.0), 0.0, math.exp(2.0) - 3.0]),  # [0.36787944, 0, 4.38905610]
        ("low_var_kl", [0.36787944, 0.0, 4.38905610]),
    ],
)
def test_hand_values(kind, expected):
    assert kl_estimate(LOGPS, REF, kind)[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_k3_clamps_at_extreme_values():
    logps = torch.tensor([[0.0, -1000.0, 0.0, -1e30, 0.0]], requires_grad=True)
    ref = torch.tensor([[-1000.0, 0.0, -15.0, 0.0, -5.0]])
    k = kl_estimate(logps, ref, "k3")
    # d = -1000 -> clamp -20 -> 19 -> 10;  d = 1000 -> 20 -> e^20 - 21 -> 10;  d = -15 -> 14 -> 10
    # d = 1e30 -> 20 -> 10;  d = -5 -> e^-5 + 4 = 4.0067379 (not clamped)
    assert k[0].tolist() == pytest.approx([10.0, 10.0, 10.0, 10.0, 4.0067379], abs=1e-6)
    k.sum().backward()
    assert torch.isfinite(logps.grad).all()
    # saturated tokens get no gradient; the unclamped one gets dk/dl = 1 - exp(d) = 1 - e^-5
    assert logps.grad[0].tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0, 1 - math.exp(-5)], abs=1e-6)


def test_k3_non_negative_and_zero_at_equality():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    assert (kl_estimate(a, b, "k3") >= 0).all()
    assert torch.equal(kl_estimate(a, a, "k3"), torch.zeros(4, 7))
    assert torch.equal(kl_estimate(a, b, "k3"), kl_estimate(a, b, "low_var_kl"))


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(ValueError) as err:
        kl_estimate(LOGPS, REF, "k4")
    assert "['abs', 'k1', 'k2', 'k3', 'low_var_kl']" in str(err.value)
    assert KL_ESTIMATORS.names() == ["abs", "k1", "k2", "k3", "low_var_kl"]


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="must match"):
        kl_estimate(torch.zeros(2, 3), torch.zeros(3, 2), "k1")
