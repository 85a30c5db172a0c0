"""aggregate_loss modes, num_tokens / num_seqs overrides, masked helpers, empty masks, padding."""

import math

import pytest
import torch

from papo.algos import (
    AGG_MODES,
    AGGREGATIONS,
    aggregate_loss,
    masked_max,
    masked_mean,
    masked_min,
    masked_var,
)

# rows: [1, 2, (3)], [4, (5), (6)], [(7), (8), (9)]  -- parenthesised values are padding
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", 7 / 3),  # (1 + 2 + 4) / 3
        ("seq-mean-token-mean", 2.75),  # (1.5 + 4) / 2, empty row excluded
        ("seq-mean-token-sum", 3.5),  # (3 + 4) / 2, empty row excluded
        ("seq-mean-token-sum-norm", 7 / 9),  # 7 / (B * T) = 7 / (3 * 3)
    ],
)
def test_modes_hand_computed(mode, expected):
    assert aggregate_loss(LOSS, MASK, mode).item() == pytest.approx(expected, rel=1e-6)
    assert aggregate_loss(LOSS, MASK.float(), mode).item() == pytest.approx(expected, rel=1e-6)


def test_num_tokens_and_num_seqs_overrides():
    assert aggregate_loss(LOSS, MASK, "token-mean", num_tokens=7).item() == pytest.approx(1.0)
    assert aggregate_loss(LOSS, MASK, "token-mean", num_tokens=torch.tensor(14)).item() == pytest.approx(0.5)
    assert aggregate_loss(LOSS, MASK, "seq-mean-token-mean", num_seqs=4).item() == pytest.approx(5.5 / 4)
    assert aggregate_loss(LOSS, MASK, "seq-mean-token-sum", num_seqs=7).item() == pytest.approx(1.0)
    assert aggregate_loss(LOSS, MASK, "seq-mean-token-sum-norm", num_seqs=7).item() == pytest.approx(7 / 21)
    # num_tokens only affects token-mean
    assert aggregate_loss(LOSS, MASK, "seq-mean-token-mean", num_tokens=100).item() == pytest.approx(2.75)


def test_micro_batches_with_global_count_equal_full_batch():
    g = torch.Generator().manual_seed(1)
    loss = torch.randn(6, 5, generator=g)
    mask = torch.rand(6, 5, generator=g) > 0.3
    full = aggregate_loss(loss, mask, "token-mean")
    n = int(mask.sum())
    parts = sum(
        aggregate_loss(loss[i : i + 2], mask[i : i + 2], "token-mean", num_tokens=n) for i in (0, 2, 4)
    )
    assert parts.item() == pytest.approx(full.item(), rel=1e-6)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_empty_mask_gives_zero_and_is_differentiable(mode):
    loss = torch.randn(2, 3, requires_grad=True)
    out = aggregate_loss(loss, torch.zeros(2, 3), mode)
    assert out.item() == 0.0
    assert out.requires_grad
    out.backward()
    assert torch.equal(loss.grad, torch.zeros(2, 3))


@pytest.mark.parametrize("mode", AGG_MODES)
def test_padding_never_contributes(mode):
    base = LOSS.clone().requires_grad_(True)
    junk = LOSS.clone()
    junk[~MASK] = torch.tensor([float("nan"), float("inf"), -1e30, 123.0, float("-inf"), 5.0])
    junk.requires_grad_(True)
    a, b = aggregate_loss(base, MASK, mode), aggregate_loss(junk, MASK, mode)
    assert a.item() == b.item()
    a.backward()
    b.backward()
    assert torch.equal(base.grad, junk.grad)
    assert torch.all(junk.grad[~MASK] == 0)
    assert torch.all(junk.grad[MASK] != 0)


def test_gradient_weights_per_mode():
    loss = torch.zeros(2, 3, requires_grad=True)
    aggregate_loss(loss, MASK[:2], "seq-mean-token-mean").backward()
    # seq 0 has 2 tokens, seq 1 has 1 token, 2 sequences -> 1/4, 1/4 and 1/2
    assert loss.grad.tolist() == [[0.25, 0.25, 0.0], [0.5, 0.0, 0.0]]


def test_unknown_mode_lists_valid_modes():
    with pytest.raises(ValueError) as err:
        aggregate_loss(LOSS, MASK, "token-sum")
    msg = str(err.value)
    assert "token-sum" in msg
    assert str(sorted(AGG_MODES)) in msg


def test_agg_modes_match_registry():
    assert sorted(AGG_MODES) == AGGREGATIONS.names()
    assert AGG_MODES[0] == "token-mean"


def test_masked_helpers():
    x = torch.tensor([[1.0, 2.0, 100.0], [4.0, -50.0, 6.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert masked_mean(x, m).item() == pytest.approx(13 / 4)
    assert masked_mean(x, m, dim=-1).tolist() == pytest.approx([1.5, 5.0])
    # values 1, 2, 4, 6: mean 3.25, squared deviations 5.0625 + 1.5625 + 0.5625 + 7.5625 = 14.75
    assert masked_var(x, m).item() == pytest.approx(14.75 / 3)
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(14.75 / 4)
    assert masked_var(x, m).item() == pytest.approx(torch.tensor([1.0, 2.0, 4.0, 6.0]).var().item())
    assert masked_max(x, m).item() == 6.0
    assert masked_min(x, m).item() == 1.0
    empty = torch.zeros(2, 3)
    for fn in (masked_mean, masked_var, masked_max, masked_min):
        v = fn(x, empty)
        assert v.item() == 0.0 and math.isfinite(v.item())
    assert masked_var(x, torch.tensor([[1, 0, 0], [0, 0, 0]])).item() == 0.0  # one element, unbiased
    assert masked_mean(x, m, dim=-1).shape == (2,)
    assert masked_mean(x, torch.tensor([[0, 0, 0], [1, 1, 0]]), dim=-1).tolist() == [0.0, -23.0]


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="must match"):
        aggregate_loss(torch.zeros(2, 3), torch.zeros(2, 4), "token-mean")


def _pad_columns(x: torch.Tensor, n: int, value: float = 0.0) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, n), value=value)


def test_seq_mean_token_sum_norm_uses_the_constant_norm_len():
    """Dr. GRPO divides by a constant length (the max response length), not by the padded width T, which
    in training is the longest response of the rollout batch and changes from step to step."""
    short = aggregate_loss(LOSS, MASK, "seq-mean-token-sum-norm", norm_len=8)
    assert short.item() == pytest.approx(7 / (3 * 8))
    # the same responses in a batch whose longest response is longer (wider padding): same loss
    wide = aggregate_loss(
        _pad_columns(LOSS, 4, 99.0), _pad_columns(MASK, 4), "seq-mean-token-sum-norm", norm_len=8
    )
    assert wide.item() == pytest.approx(short.item())
    # without norm_len the normaliser is the padded width (documented fallback), which does change
    assert aggregate_loss(_pad_columns(LOSS, 4), _pad_columns(MASK, 4), "seq-mean-token-sum-norm").item() == (
        pytest.approx(7 / (3 * 7))
    )
    # the other modes ignore norm_len
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        assert aggregate_loss(LOSS, MASK, mode, norm_len=8).item() == pytest.approx(
            aggregate_loss(LOSS, MASK, mode).item()
        )


def test_norm_len_is_not_passed_to_aggregations_that_do_not_take_it(monkeypatch):
    def _old_style(loss_mat, mask, num_tokens=None, num_seqs=None):
        return (loss_mat * mask).sum()

    monkeypatch.setitem(AGGREGATIONS._entries, "_test_old_style", _old_style)
    assert aggregate_loss(LOSS, MASK.float(), "_test_old_style", norm_len=8).item() == pytest.approx(7.0)
