"""Token selection rules (papo.algos.token_selection) against hand-picked tokens."""

from __future__ import annotations

import pytest
import torch

from papo.algos.token_selection import TOKEN_SELECTIONS, select_tokens, selection_metrics

# row 0: 4 tokens + padding with a large score; row 1: 3 tied tokens; row 2: no response tokens
SCORES = torch.tensor([[0.1, 0.9, 0.5, 0.3, 5.0], [0.2, 0.2, 0.2, 7.0, 7.0], [9.0, 9.0, 9.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.float)


def _kept(rule: str, value: float) -> list[list[int]]:
    keep = select_tokens(SCORES, MASK, rule, value)
    assert keep.dtype == MASK.dtype
    return [row.nonzero().flatten().tolist() for row in keep]


def test_top_fraction_per_sequence_keeps_ceil_f_n_tokens_of_each_row() -> None:
    # f = 0.4: row 0 keeps ceil(1.6) = 2 (0.9 and 0.5); row 1 ceil(1.2) = 2 of three ties: the first two
    assert _kept("top_fraction_per_sequence", 0.4) == [[1, 2], [0, 1], []]
    assert _kept("top_fraction_per_sequence", 1.0) == [[0, 1, 2, 3], [0, 1, 2], []]
    # f = 0.1: ceil(0.4) = 1 and ceil(0.3) = 1: at least one token per non-empty row
    assert _kept("top_fraction_per_sequence", 0.1) == [[1], [0], []]


def test_top_quantile_per_sequence_keeps_ties_at_the_quantile() -> None:
    # row 0: the 0.5-quantile of (0.1, 0.3, 0.5, 0.9) is 0.4 -> 0.9 and 0.5; row 1: quantile 0.2 -> all three
    assert _kept("top_quantile_per_sequence", 0.5) == [[1, 2], [0, 1, 2], []]
    # f = 0.2: 0.8-quantile of row 0 = 0.5 + 0.4 * (0.9 - 0.5) = 0.66 -> only 0.9
    assert _kept("top_quantile_per_sequence", 0.2) == [[1], [0, 1, 2], []]


def test_top_fraction_per_batch_ranks_all_response_tokens_together() -> None:
    # 7 response tokens, f = 0.4 -> ceil(2.8) = 3: 0.9, 0.5, 0.3 (padding scores never compete)
    assert _kept("top_fraction_per_batch", 0.4) == [[1, 2, 3], [], []]
    assert _kept("top_fraction_per_batch", 0.5) == [[1, 2, 3], [0], []]  # ceil(3.5) = 4: first tie wins


@pytest.mark.parametrize("rule", ["top_fraction_per_sequence", "top_fraction_per_batch"])
def test_padding_ranks_below_degenerate_scores(rule: str) -> None:
    """A response token scored -inf or NaN still outranks padding: top-k never keeps padding."""
    scores = torch.tensor([[3.0, float("-inf"), float("nan")]])
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    assert select_tokens(scores, mask, rule, 1.0).tolist() == [[0.0, 1.0, 1.0]]


def test_threshold_keeps_scores_at_or_above_it() -> None:
    assert _kept("threshold", 0.3) == [[1, 2, 3], [], []]
    assert _kept("threshold", 0.2) == [[1, 2, 3], [0, 1, 2], []]


def test_selection_ignores_score_gradients_and_validates() -> None:
    scores = SCORES.clone().requires_grad_(True)
    assert not select_tokens(scores, MASK, "threshold", 0.0).requires_grad
    with pytest.raises(ValueError, match=r"Valid names: \['threshold', 'top_fraction_per_batch'"):
        select_tokens(SCORES, MASK, "top_k", 0.5)
    for rule in ("top_fraction_per_sequence", "top_quantile_per_sequence", "top_fraction_per_batch"):
        with pytest.raises(ValueError, match=r"in \(0, 1\]"):
            select_tokens(SCORES, MASK, rule, 0.0)
    with pytest.raises(ValueError, match="must match"):
        select_tokens(SCORES[:, :3], MASK, "threshold", 0.0)
    assert set(TOKEN_SELECTIONS.names()) == {
        "threshold",
        "top_fraction_per_batch",
        "top_fraction_per_sequence",
        "top_quantile_per_sequence",
    }


def test_selection_metrics_hand_values() -> None:
    keep = select_tokens(SCORES, MASK, "top_fraction_per_sequence", 0.4)  # kept 0.9, 0.5, 0.2, 0.2
    m = selection_metrics(SCORES, MASK, keep)
    assert m["kept_frac"].item() == pytest.approx(4 / 7)
    assert m["score_kept"].item() == pytest.approx((0.9 + 0.5 + 0.2 + 0.2) / 4)
    assert m["score_dropped"].item() == pytest.approx((0.1 + 0.3 + 0.2) / 3)
