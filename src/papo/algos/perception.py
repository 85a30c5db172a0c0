"""PAPO's implicit perception KL and the sampled-token entropy surrogate (arXiv 2507.06448).

Implicit Perception Loss. l_t = log pi(o_t | q, I, o_<t), l_mask_t = log pi(o_t | q, I_mask, o_<t) for
the same sampled token with the image partly blacked out. Per token (released code, our default,
``direction="masked_as_ref"``, ``kind="k3"``):

    d_t = clamp(l_mask_t - l_t, -20, 20),  k_t = clamp(exp(d_t) - d_t - 1, -10, 10)
    KL_prcp = token-mean over response tokens of k_t

i.e. the k3 estimator with the masked-image log-probs in the role of the reference. The paper's figure
writes the ratio the other way, r - log r - 1 with r = pi(I) / pi(I_mask): ``direction="real_as_ref"``.

:func:`perception_kl` returns the POSITIVE KL; the loss component built on it subtracts gamma * KL (the
KL is maximised). Whether ``logps_masked`` carries gradient is the caller's choice (the released code
computes it once under ``no_grad``); this function differentiates through whatever it is given.

Options of the released code, not in the paper (off by default, as in the released configs), in the released
order: ``top_fraction`` keeps only the highest-KL tokens (released ``use_kl_prcp_token_level_mask``, top 20%:
per sequence, the tokens at or above the sequence's (1 - top_fraction) quantile of k_t over its valid tokens,
``torch.nanquantile`` with linear interpolation; ``top_fraction_scope="micro_batch"`` instead keeps the
ceil(top_fraction * n) largest of the micro-batch's n tokens), then ``token_clip`` caps each token's value
(released ``use_kl_prcp_clipping``, 0.2; limits the payoff of "KL hacking" with junk tokens). Dropped tokens
count as 0 and the aggregation still runs over every response token, as the released ``average_loss`` over
the response mask does.

Double entropy loss. The paper's entropies are the sampled-token surrogate H = token-mean(-l_t)
(:func:`sampled_entropy`), not the full-vocabulary entropy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from papo.algos.aggregation import aggregate_loss, masked_max, masked_mean, masked_var, zero_padding
from papo.algos.kl import kl_estimate

__all__ = ["KL_DIRECTIONS", "TOP_FRACTION_SCOPES", "perception_kl", "sampled_entropy", "top_fraction_mask"]

KL_DIRECTIONS: tuple[str, ...] = ("masked_as_ref", "real_as_ref")
#: where ``top_fraction`` ranks the tokens: within each sequence (released code) or across the micro-batch
TOP_FRACTION_SCOPES: tuple[str, ...] = ("sequence", "micro_batch")


def top_fraction_mask(values: Tensor, mask: Tensor, fraction: float, scope: str = "sequence") -> Tensor:
    """Bool (B, T): the response tokens whose ``values`` are among the highest ``fraction``.

    ``scope="sequence"`` (the released ``use_kl_prcp_token_level_mask``): per row, the valid tokens with
    value >= that row's (1 - fraction) quantile of its valid values (``torch.nanquantile``, linear
    interpolation; ties kept; a row without valid tokens keeps none). ``scope="micro_batch"``: the
    ceil(fraction * n) largest of all n valid tokens of the batch.
    """
    if scope == "sequence":
        valid = mask > 0  # (B, T)
        vals = values.detach().float()
        thresh = torch.nanquantile(
            vals.masked_fill(~valid, float("nan")), 1.0 - fraction, dim=1, keepdim=True
        )
        return valid & (vals >= thresh)  # (B, T); NaN thresholds (empty rows) keep nothing
    if scope != "micro_batch":
        raise ValueError(f"top_fraction_scope={scope!r} is unknown; valid: {list(TOP_FRACTION_SCOPES)}")
    return _top_k_mask(values, mask, fraction)


def _top_k_mask(values: Tensor, mask: Tensor, fraction: float) -> Tensor:
    """Bool (B, T): the ceil(fraction * n) masked tokens with the largest ``values`` (n = #masked)."""
    valid = mask > 0  # (B, T)
    n = int(valid.sum().item())
    keep = torch.zeros(valid.numel(), dtype=torch.bool, device=valid.device)  # (B*T,)
    if n > 0:
        k = max(1, math.ceil(fraction * n))
        scores = torch.where(valid, values.detach(), torch.full_like(values, float("-inf")))  # (B, T)
        keep[torch.topk(scores.flatten(), k).indices] = True
    return keep.view(valid.shape) & valid  # (B, T)


def perception_kl(
    logps: Tensor,
    logps_masked: Tensor,
    mask: Tensor,
    kind: str = "k3",
    agg_mode: str = "token-mean",
    direction: str = "masked_as_ref",
    token_clip: float | None = None,
    top_fraction: float | None = None,
    num_tokens: int | float | Tensor | None = None,
    norm_len: int | float | None = None,
    top_fraction_scope: str = "sequence",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PAPO's implicit perception KL between the real-image and masked-image policies (positive).

    k_t = kl_estimate(l, l_mask, kind)  (``direction="masked_as_ref"``, released code, default)
    k_t = kl_estimate(l_mask, l, kind)  (``direction="real_as_ref"``, the paper's figure)
    k_t = k_t * keep_t                  (if ``top_fraction``: keep_t = :func:`top_fraction_mask` of the raw k)
    k_t = min(k_t, token_clip)          (if ``token_clip`` is given)
    kl  = aggregate_loss(k, mask, agg_mode, num_tokens): dropped tokens count as 0 over ALL response tokens.

    Args:
        logps: (B, T) log-probs of the sampled tokens given the real image (with gradient).
        logps_masked: (B, T) log-probs of the same tokens given the masked image.
        mask: (B, T) response mask.
        kind: KL estimator name (see :func:`kl_estimate`).
        agg_mode: see :func:`aggregate_loss`.
        direction: ``"masked_as_ref"`` or ``"real_as_ref"``.
        token_clip: optional upper bound on each token's value.
        top_fraction: optional fraction in (0, 1] of response tokens to keep (see ``top_fraction_scope``).
        num_tokens: global token count for ``token-mean``.
        norm_len: constant length of ``seq-mean-token-sum-norm`` (see :func:`aggregate_loss`).
        top_fraction_scope: ``"sequence"`` (released, default) or ``"micro_batch"`` (:func:`top_fraction_mask`).

    Returns:
        ``(kl, metrics)``: ``kl`` is a scalar >= 0 for k3 (to be MAXIMISED; subtract it in the loss).
        Metrics (0-dim, detached), over all response tokens and before ``token_clip`` / ``top_fraction``:
        ``kl_token_mean``, ``kl_token_max``, ``kl_token_var`` (unbiased); plus ``kl`` (the returned
        value, detached), ``kept_frac`` (fraction of response tokens kept by ``top_fraction``, 1 without)
        and ``token_clip_frac`` (fraction of response tokens above ``token_clip``, 0 without).

    Raises:
        ValueError: unknown ``direction`` / ``kind`` / ``agg_mode`` / ``top_fraction_scope``, or
            ``top_fraction`` outside (0, 1].
    """
    logps = zero_padding(logps, mask)  # (B, T) inf/NaN at padding cannot reach the gradient
    logps_masked = zero_padding(logps_masked, mask)  # (B, T)
    if direction == "masked_as_ref":
        per_token = kl_estimate(logps, logps_masked, kind)  # (B, T)
    elif direction == "real_as_ref":
        per_token = kl_estimate(logps_masked, logps, kind)  # (B, T)
    else:
        raise ValueError(f"Unknown perception KL direction '{direction}'. Valid: {sorted(KL_DIRECTIONS)}")
    if top_fraction is not None and not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")

    raw = per_token.detach()  # (B, T) for metrics
    keep = mask > 0  # (B, T)
    if top_fraction is not None:  # the released order: select on the raw values, then clip
        keep = top_fraction_mask(raw, mask, top_fraction, top_fraction_scope)  # (B, T)
        per_token = per_token * keep.to(per_token.dtype)  # (B, T) dropped tokens count as 0
    if token_clip is not None:
        per_token = torch.clamp(per_token, max=token_clip)  # (B, T)
    kl = aggregate_loss(per_token, mask, agg_mode, num_tokens=num_tokens, norm_len=norm_len)  # ()

    with torch.no_grad():
        clipped = (raw > token_clip).float() if token_clip is not None else torch.zeros_like(raw)
        metrics = {
            "kl": kl.detach(),
            "kl_token_mean": masked_mean(raw, mask),
            "kl_token_max": masked_max(raw, mask),
            "kl_token_var": masked_var(raw, mask),
            "kept_frac": masked_mean(keep.to(raw.dtype), mask),
            "token_clip_frac": masked_mean(clipped, mask),
        }
    return kl, metrics


def sampled_entropy(
    logps: Tensor,
    mask: Tensor,
    agg_mode: str = "token-mean",
    num_tokens: int | float | Tensor | None = None,
    norm_len: int | float | None = None,
) -> Tensor:
    """Sampled-token entropy surrogate H = aggregate(-l_t) (PAPO's double entropy loss terms).

    -log pi(o_t) of the sampled token is a one-sample estimate of the entropy at step t; PAPO adds
    eta1 * H(real image) + eta2 * H(masked image) to the loss (both kept low).

    Args:
        logps: (B, T) log-probs of the sampled tokens (gradient kept).
        mask: (B, T) response mask.
        agg_mode, num_tokens, norm_len: see :func:`aggregate_loss`.

    Returns:
        A scalar (>= 0 since log-probs are <= 0).
    """
    return aggregate_loss(-logps, mask, agg_mode, num_tokens=num_tokens, norm_len=norm_len)  # ()
