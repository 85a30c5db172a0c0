"""Token selection: which response tokens a loss term (or the policy update) keeps, from per-token scores.

Scores are any per-token signal, e.g. a visual-sensitivity signal (:mod:`papo.algos.visual_sensitivity`).
Every rule returns a keep mask of the response mask's shape and dtype, contained in the response mask
(padding is never kept), computed without gradient (selection is a hard decision):

* ``top_fraction_per_sequence`` (value f in (0, 1]): in each sequence with n response tokens, the
  k = ceil(f n) tokens with the largest scores (VPPO's Token-level Gradient Filtering, released code: a
  descending sort per row, the first k ranks kept; here the sort is stable, so ties go to the earlier token).
* ``top_quantile_per_sequence`` (f in (0, 1]): in each sequence, the tokens whose score is >= the row's
  (1 - f) quantile over its response tokens (``torch.nanquantile``, linear interpolation; ties at the
  quantile are all kept, so a row may keep more than ceil(f n)): PAPO's released optional token mask for
  KL_prcp (``verl/workers/actor/dp_actor.py``, ``nanquantile(kl, 1 - top_p)`` then ``kl >= thresh``, the
  masked values averaged over all response tokens).
* ``top_fraction_per_batch`` (f in (0, 1]): the ceil(f N) tokens with the largest scores among all N
  response tokens of the batch (one host sync for N).
* ``threshold`` (value s): the tokens whose score is >= s.

VPPO applies its mask to the per-token policy-gradient loss and keeps the full response mask as the
normaliser (the loss of a dropped token is 0 but the token still counts in the token mean); for a PPO-clip
loss that is the same as multiplying the token's advantage by the mask
(:func:`papo.algos.advantage_shaping.token_level_advantages`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from papo.algos.aggregation import masked_mean
from papo.algos.registry import Registry

__all__ = ["TOKEN_SELECTIONS", "select_tokens", "selection_metrics"]

#: name -> fn(scores (B, T), mask (B, T), value) -> bool keep (B, T)
TOKEN_SELECTIONS: Registry = Registry("token selection rule")


def _ranked(scores: Tensor, valid: Tensor) -> Tensor:
    """Scores to sort by: response tokens ranked by score (NaN and -inf as the lowest finite value), padding
    strictly below every response token."""
    lowest = torch.finfo(scores.dtype).min
    finite = torch.nan_to_num(scores, nan=lowest, neginf=lowest)  # (B, T)
    return finite.masked_fill(~valid, float("-inf"))  # (B, T)


def _fraction(value: float) -> float:
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f"the fraction of tokens to keep must be in (0, 1], got {value}")
    return float(value)


@TOKEN_SELECTIONS.register("top_fraction_per_sequence")
def _top_fraction_per_sequence(scores: Tensor, mask: Tensor, value: float) -> Tensor:
    valid = mask > 0  # (B, T)
    k = torch.ceil(valid.sum(1) * _fraction(value))  # (B,) tokens kept per row
    order = torch.sort(_ranked(scores, valid), dim=1, descending=True, stable=True).indices  # (B, T)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    return rank < k.unsqueeze(1)  # (B, T); padding ranks after every response token


@TOKEN_SELECTIONS.register("top_quantile_per_sequence")
def _top_quantile_per_sequence(scores: Tensor, mask: Tensor, value: float) -> Tensor:
    valid = mask > 0  # (B, T)
    nan = torch.full_like(scores, float("nan"), dtype=torch.float32)
    q = torch.nanquantile(
        torch.where(valid, scores.float(), nan), 1.0 - _fraction(value), dim=1, keepdim=True
    )
    return (scores.float() >= q) & valid  # (B, T); a row without tokens has q = NaN and keeps nothing


@TOKEN_SELECTIONS.register("top_fraction_per_batch")
def _top_fraction_per_batch(scores: Tensor, mask: Tensor, value: float) -> Tensor:
    valid = mask > 0  # (B, T)
    n = int(valid.sum().item())
    keep = torch.zeros(valid.numel(), dtype=torch.bool, device=valid.device)  # (B*T,)
    if n > 0:
        k = math.ceil(_fraction(value) * n)
        ranked = _ranked(scores, valid).flatten()  # (B*T,)
        keep[torch.sort(ranked, descending=True, stable=True).indices[:k]] = True
    return keep.view(valid.shape)  # (B, T)


@TOKEN_SELECTIONS.register("threshold")
def _threshold(scores: Tensor, mask: Tensor, value: float) -> Tensor:
    return (scores >= float(value)) & (mask > 0)  # (B, T)


@torch.no_grad()
def select_tokens(scores: Tensor, mask: Tensor, rule: str, value: float) -> Tensor:
    """Keep mask of the response tokens chosen by ``rule`` (see the module doc).

    Args:
        scores: (B, T) per-token scores (their gradient is ignored).
        mask: (B, T) response mask.
        rule: ``top_fraction_per_sequence``, ``top_quantile_per_sequence``, ``top_fraction_per_batch`` or
            ``threshold``.
        value: the fraction in (0, 1] for the ``top_*`` rules, the score threshold for ``threshold``.

    Returns:
        (B, T) keep mask in ``mask``'s dtype, 0 wherever ``mask`` is 0.

    Raises:
        ValueError: unknown ``rule`` (names the valid ones), a fraction outside (0, 1], mismatched shapes.
    """
    if scores.shape != mask.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and mask {tuple(mask.shape)} must match")
    keep = TOKEN_SELECTIONS.get(rule)(scores.detach(), mask, value)  # (B, T) bool
    return keep.to(mask.dtype)


@torch.no_grad()
def selection_metrics(scores: Tensor, mask: Tensor, keep: Tensor) -> dict[str, Tensor]:
    """Diagnostics of a selection (0-dim, detached): ``kept_frac`` (kept / response tokens),
    ``score_kept`` and ``score_dropped`` (mean score of the kept and of the dropped response tokens; 0 when
    there are none). VPPO logs the same three as ``perception_token_fraction``,
    ``low_var_kl_mean_selected`` / ``_rejected``."""
    valid = (mask > 0).to(scores.dtype)  # (B, T)
    kept = (keep > 0).to(scores.dtype) * valid  # (B, T)
    return {
        "kept_frac": masked_mean(kept, valid),
        "score_kept": masked_mean(scores, kept),
        "score_dropped": masked_mean(scores, valid - kept),
    }
