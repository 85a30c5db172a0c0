"""Visual-sensitivity signals (papo.algos.visual_sensitivity) against hand-computed values; the chunked
full-distribution divergences never hold more than one chunk of vocabulary rows."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from papo.algos.visual_sensitivity import (
    DISTRIBUTION_SIGNALS,
    distribution_sensitivity,
    distribution_sensitivity_from_hidden,
    sampled_token_sensitivity,
)

LOG2 = math.log(2.0)


def _sampled_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # token 0: p(real) 0.5, p(alt) 0.25; token 1: 0.25 vs 0.5; token 2 is padding (garbage values)
    logps = torch.tensor([[math.log(0.5), math.log(0.25), float("-inf")]])
    logps_alt = torch.tensor([[math.log(0.25), math.log(0.5), float("nan")]])
    return logps, logps_alt, torch.tensor([[1.0, 1.0, 0.0]])


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("k1", [LOG2, -LOG2, 0.0]),  # l - l'
        ("abs", [LOG2, LOG2, 0.0]),  # |l - l'|
        # d = l' - l: token 0 d = -log 2 -> 1/2 + log 2 - 1; token 1 d = log 2 -> 2 - log 2 - 1
        ("k3", [LOG2 - 0.5, 1.0 - LOG2, 0.0]),
    ],
)
def test_sampled_token_signals_hand_values(kind: str, expected: list[float]) -> None:
    out = sampled_token_sensitivity(*_sampled_inputs(), kind=kind)
    assert torch.allclose(out, torch.tensor([expected]), atol=1e-6)


def test_sampled_token_signal_rejects_unknown_kind_and_shapes() -> None:
    with pytest.raises(ValueError, match=r"Valid names: \['k1', 'abs', 'k3'\]"):
        sampled_token_sensitivity(*_sampled_inputs(), kind="k2")
    with pytest.raises(ValueError, match="must match"):
        sampled_token_sensitivity(torch.zeros(1, 3), torch.zeros(1, 2), torch.ones(1, 3))


def _two_token_logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # position 0: p = (1/2, 1/2), q = (3/4, 1/4); position 1: identical distributions; position 2: padding
    logits = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [float("nan"), 0.0]]])
    logits_alt = torch.tensor([[[math.log(3.0), 0.0], [1.0, 2.0], [float("inf"), 0.0]]])
    return logits, logits_alt, torch.tensor([[1.0, 1.0, 0.0]])


@pytest.mark.parametrize(
    ("kind", "first"),
    [
        # KL(p||q) = 1/2 log(1/2 / 3/4) + 1/2 log(1/2 / 1/4) = 1/2 log(4/3)
        ("kl", 0.5 * math.log(4 / 3)),
        # KL(q||p) = 3/4 log(3/2) + 1/4 log(1/2)
        ("kl_alt_real", 0.75 * math.log(1.5) + 0.25 * math.log(0.5)),
        # m = (5/8, 3/8): 1/2 [1/2 log(4/5) + 1/2 log(4/3)] + 1/2 [3/4 log(6/5) + 1/4 log(2/3)]
        (
            "jsd",
            0.5 * (0.5 * math.log(0.8) + 0.5 * math.log(4 / 3))
            + 0.5 * (0.75 * math.log(1.2) + 0.25 * math.log(2 / 3)),
        ),
    ],
)
def test_distribution_signals_hand_values(kind: str, first: float) -> None:
    out = distribution_sensitivity(*_two_token_logits(), kind=kind)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([[first, 0.0, 0.0]]), atol=1e-6)


def test_distribution_signal_temperature_divides_both_views() -> None:
    logits = torch.tensor([[[math.log(3.0), 0.0]]])
    logits_alt = torch.tensor([[[0.0, math.log(3.0)]]])
    # at T = 2: p = (a, 1 - a), q = (1 - a, a), a = sqrt 3 / (sqrt 3 + 1); KL = (2a - 1) log(a / (1 - a))
    a = math.sqrt(3.0) / (math.sqrt(3.0) + 1.0)
    expected = (2 * a - 1) * math.log(a / (1 - a))
    out = distribution_sensitivity(logits, logits_alt, torch.ones(1, 1), kind="kl", temperature=2.0)
    assert out[0, 0].item() == pytest.approx(expected, abs=1e-6)


def test_zero_probability_tokens_give_finite_values() -> None:
    """A suppressed token (-inf logit in both views) contributes 0, not NaN."""
    logits = torch.tensor([[[0.0, float("-inf"), 0.0]]])
    logits_alt = torch.tensor([[[math.log(3.0), float("-inf"), 0.0]]])
    for kind in DISTRIBUTION_SIGNALS.names():
        out = distribution_sensitivity(logits, logits_alt, torch.ones(1, 1), kind=kind)
        assert torch.isfinite(out).all()
    kl = distribution_sensitivity(logits, logits_alt, torch.ones(1, 1), kind="kl")
    assert kl.item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)


def _random_case(seed: int = 0, B: int = 3, T: int = 5, V: int = 11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 2
    logits_alt = torch.randn(B, T, V, generator=g) * 2
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.float)
    return logits, logits_alt, mask


@pytest.mark.parametrize("kind", ["kl", "kl_alt_real", "jsd"])
def test_chunking_does_not_change_the_values(kind: str) -> None:
    logits, logits_alt, mask = _random_case()
    logp, logq = F.log_softmax(logits, -1), F.log_softmax(logits_alt, -1)
    logm = torch.log(0.5 * (logp.exp() + logq.exp()))
    direct = {
        "kl": (logp.exp() * (logp - logq)).sum(-1),
        "kl_alt_real": (logq.exp() * (logq - logp)).sum(-1),
        "jsd": 0.5 * ((logp.exp() * (logp - logm)).sum(-1) + (logq.exp() * (logq - logm)).sum(-1)),
    }[kind] * mask
    for chunk in (1, 2, 3, 100):
        out = distribution_sensitivity(logits, logits_alt, mask, kind=kind, chunk_size=chunk)
        assert torch.allclose(out, direct, atol=1e-5), chunk


def test_never_more_than_one_chunk_of_vocabulary_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every log-softmax the signal takes sees at most chunk_size positions: the (tokens x V) fp32 matrix
    of the whole batch is never built."""
    import papo.algos.visual_sensitivity as vs

    rows: list[int] = []
    real = F.log_softmax

    def spy(x: torch.Tensor, dim: int) -> torch.Tensor:
        rows.append(x.shape[0])
        return real(x, dim=dim)

    monkeypatch.setattr(vs.F, "log_softmax", spy)
    logits, logits_alt, mask = _random_case()  # 8 response positions
    distribution_sensitivity(logits, logits_alt, mask, chunk_size=3)
    assert rows and max(rows) <= 3 and sum(rows) == 2 * 8


def test_from_hidden_states_equals_from_logits_and_keeps_gradients() -> None:
    g = torch.Generator().manual_seed(1)
    B, T, H, V = 2, 4, 6, 9
    hidden = torch.randn(B, T, H, generator=g, requires_grad=True)
    hidden_alt = torch.randn(B, T, H, generator=g)
    weight, bias = torch.randn(V, H, generator=g), torch.randn(V, generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float)
    for kind in ("kl", "jsd"):
        from_logits = distribution_sensitivity(
            F.linear(hidden, weight, bias), F.linear(hidden_alt, weight, bias), mask, kind=kind
        )
        out = distribution_sensitivity_from_hidden(
            hidden, hidden_alt, weight, mask, kind=kind, lm_head_bias=bias, chunk_size=2
        )
        assert torch.allclose(out, from_logits, atol=1e-5)
    out.sum().backward()
    assert hidden.grad is not None and hidden.grad[0, 2:].abs().sum() == 0  # padding: no gradient
    assert hidden.grad[1].abs().sum() > 0


def test_bfloat16_head_is_upcast_per_chunk() -> None:
    g = torch.Generator().manual_seed(2)
    hidden, hidden_alt = torch.randn(1, 3, 8, generator=g), torch.randn(1, 3, 8, generator=g)
    weight = torch.randn(10, 8, generator=g)
    mask = torch.ones(1, 3)
    ref = distribution_sensitivity_from_hidden(hidden, hidden_alt, weight, mask)
    low = distribution_sensitivity_from_hidden(hidden, hidden_alt, weight.bfloat16(), mask)
    assert low.dtype == torch.float32 and torch.allclose(low, ref, rtol=0.1, atol=0.02)


def test_distribution_signal_validation() -> None:
    logits, logits_alt, mask = _random_case()
    with pytest.raises(ValueError, match=r"Valid names: \['jsd', 'kl', 'kl_alt_real'\]"):
        distribution_sensitivity(logits, logits_alt, mask, kind="tv")
    with pytest.raises(ValueError, match="must agree"):
        distribution_sensitivity(logits, logits_alt[:, :2], mask)
    with pytest.raises(ValueError, match="temperature"):
        distribution_sensitivity(logits, logits_alt, mask, temperature=0.0)
    with pytest.raises(ValueError, match=r"\(V, H=6\)"):
        distribution_sensitivity_from_hidden(
            torch.zeros(1, 2, 6), torch.zeros(1, 2, 6), torch.zeros(4, 5), torch.ones(1, 2)
        )
