"""Clipped policy-gradient surrogates: PPO/GRPO/DAPO token-level clip (with dual clip) and GSPO.

* ``ppo_clip`` (:func:`clipped_policy_loss`): PPO (Schulman et al. 2017, arXiv 1707.06347) with
  asymmetric "clip-higher" bounds (DAPO, Yu et al. 2025, arXiv 2503.14476) and dual clip for negative
  advantages (Ye et al. 2020, arXiv 1912.09729), as in verl/EasyR1 and PAPO's released code:
  r = exp(clamp(l - l_old, -20, 20)); loss = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)),
  and for A < 0: min(that, -A c) with c = 3.
* ``gspo`` (:func:`gspo_policy_loss`): GSPO-token (Zheng et al. 2025, arXiv 2507.18071), following verl's
  ``compute_policy_loss_gspo``: a sequence-level ratio s_i = exp(masked mean_t (l - l_old)) whose value is
  shared by all tokens of o_i while the gradient flows per token.

Both return ``(loss, metrics)``; ``loss`` is a scalar to minimise, reduced with :func:`aggregate_loss`.
Metrics are 0-dim detached tensors computed under ``torch.no_grad()`` (no host sync); keys:

* ``clipfrac_high``: fraction of response tokens with A > 0 and r > 1 + eps_high (upper bound active).
* ``clipfrac_low``: fraction with A < 0 and r < 1 - eps_low (lower bound active).
* ``clipfrac``: ``clipfrac_low + clipfrac_high`` (verl's ``pg_clipfrac``).
* ``clipfrac_dual``: fraction with A < 0 and the dual-clip bound active (-A c < max(-A r, -A clip(r))).
* ``approx_kl``: masked mean of l_old - l (k1 estimate of KL(pi_old || pi); verl's ``ppo_kl``).
* ``approx_kl_k3``: masked mean of r - 1 - log r (k3 estimate of the same KL, non-negative).
* ``ratio_mean``, ``ratio_max``, ``ratio_min``: of the ratio actually used in the surrogate.

Differences from verl: GSPO honours ``agg_mode`` (verl forces ``seq-mean-token-mean``, our default) and
offers an optional dual clip (off by default, as in verl); advantages may be given per sequence (B,).
"""

from __future__ import annotations

import torch
from torch import Tensor

from papo.algos.aggregation import aggregate_loss, masked_max, masked_mean, masked_min, zero_padding
from papo.algos.kl import kl_estimate
from papo.algos.registry import POLICY_LOSSES

__all__ = ["clipped_policy_loss", "gspo_policy_loss"]


def _prepare(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Broadcast (B,) advantages to (B, T) and zero every input at padding (see ``zero_padding``)."""
    if logps.shape != mask.shape or old_logps.shape != mask.shape:
        raise ValueError(
            f"logps {tuple(logps.shape)}, old_logps {tuple(old_logps.shape)} and mask "
            f"{tuple(mask.shape)} must have the same shape"
        )
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # (B, 1)
    advantages = advantages.expand(mask.shape)  # (B, T)
    return zero_padding(logps, mask), zero_padding(old_logps, mask), zero_padding(advantages, mask)


def _clipped_surrogate(
    ratio: Tensor, advantages: Tensor, clip_low: float, clip_high: float, dual_clip: float | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token clipped surrogate. Returns (loss_mat, clipped (no dual), dual-bound loss or None)."""
    pg1 = -advantages * ratio  # (B, T)
    pg2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)  # (B, T)
    clipped = torch.maximum(pg1, pg2)  # (B, T) pessimistic bound
    if dual_clip is None:
        return clipped, clipped, None
    pg3 = -advantages * dual_clip  # (B, T) caps the loss of A < 0 tokens with huge ratios
    loss_mat = torch.where(advantages < 0, torch.minimum(clipped, pg3), clipped)  # (B, T)
    return loss_mat, clipped, pg3


@torch.no_grad()
def _metrics(
    ratio: Tensor,
    advantages: Tensor,
    mask: Tensor,
    logps: Tensor,
    old_logps: Tensor,
    clip_low: float,
    clip_high: float,
    clipped: Tensor,
    pg3: Tensor | None,
) -> dict[str, Tensor]:
    ratio, advantages, clipped = ratio.detach(), advantages.detach(), clipped.detach()
    high = ((advantages > 0) & (ratio > 1.0 + clip_high)).float()  # (B, T)
    low = ((advantages < 0) & (ratio < 1.0 - clip_low)).float()  # (B, T)
    if pg3 is None:
        dual = torch.zeros_like(high)  # (B, T)
    else:
        dual = ((advantages < 0) & (clipped > pg3.detach())).float()  # (B, T)
    neg_log_ratio = (old_logps - logps).detach().clamp(-20.0, 20.0)  # (B, T)
    k3 = kl_estimate(old_logps.detach(), logps.detach(), "k3")  # (B, T) r - 1 - log r
    clipfrac_low, clipfrac_high = masked_mean(low, mask), masked_mean(high, mask)
    return {
        "clipfrac": clipfrac_low + clipfrac_high,
        "clipfrac_low": clipfrac_low,
        "clipfrac_high": clipfrac_high,
        "clipfrac_dual": masked_mean(dual, mask),
        "approx_kl": masked_mean(neg_log_ratio, mask),
        "approx_kl_k3": masked_mean(k3, mask),
        "ratio_mean": masked_mean(ratio, mask),
        "ratio_max": masked_max(ratio, mask),
        "ratio_min": masked_min(ratio, mask),
    }


@POLICY_LOSSES.register("ppo_clip")
def clipped_policy_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
    agg_mode: str = "token-mean",
    num_tokens: int | float | Tensor | None = None,
    norm_len: int | float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-level clipped surrogate with clip-higher and dual clip (PPO / GRPO / DAPO / PAPO).

    r_t = exp(clamp(l_t - l_old_t, -20, 20))
    L_t = max(-A_t r_t, -A_t clip(r_t, 1 - clip_low, 1 + clip_high))
    L_t = min(L_t, -A_t dual_clip)  where A_t < 0  (skipped if ``dual_clip`` is None)
    loss = aggregate_loss(L, mask, agg_mode, num_tokens, norm_len=norm_len)

    Args:
        logps: (B, T) current log-probs of the sampled tokens (with gradient).
        old_logps: (B, T) rollout-policy log-probs (no gradient needed).
        advantages: (B, T) per-token advantages, or (B,) per sequence (broadcast over T).
        mask: (B, T) response mask.
        clip_low, clip_high: eps_low / eps_high (GRPO 0.2/0.3 in EasyR1, DAPO 0.2/0.28).
        dual_clip: c > 1 of dual-clip PPO, or None to disable.
        agg_mode: see :func:`aggregate_loss`.
        num_tokens: global token count for ``token-mean`` (see :func:`aggregate_loss`).
        norm_len: constant length of ``seq-mean-token-sum-norm`` (see :func:`aggregate_loss`).

    Returns:
        ``(loss, metrics)``: scalar loss to minimise; metrics as in the module docstring.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    logps, old_logps, advantages = _prepare(logps, old_logps, advantages, mask)  # (B, T) each
    log_ratio = torch.clamp(logps - old_logps, min=-20.0, max=20.0)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    loss_mat, clipped, pg3 = _clipped_surrogate(ratio, advantages, clip_low, clip_high, dual_clip)  # (B, T)
    loss = aggregate_loss(loss_mat, mask, agg_mode, num_tokens=num_tokens, norm_len=norm_len)  # ()
    metrics = _metrics(ratio, advantages, mask, logps, old_logps, clip_low, clip_high, clipped, pg3)
    return loss, metrics


@POLICY_LOSSES.register("gspo")
def gspo_policy_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    agg_mode: str = "seq-mean-token-mean",
    num_tokens: int | float | Tensor | None = None,
    dual_clip: float | None = None,
    norm_len: int | float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO-token policy loss (Zheng et al. 2025, arXiv 2507.18071; verl ``compute_policy_loss_gspo``).

    log s_i = sum_t m (l - l_old) / max(sum_t m, 1)                     (sequence log-ratio)
    log s_it = min(l_t - sg[l_t] + sg[log s_i], 10);  s_it = exp(log s_it)
    L_t = max(-A_t s_it, -A_t clip(s_it, 1 - clip_low, 1 + clip_high))  (+ optional dual clip)
    loss = aggregate_loss(L, mask, agg_mode, num_tokens, norm_len=norm_len)

    The value of s_it is the sequence ratio s_i for every token, so clipping acts per sequence; the
    gradient of s_it is s_i * grad l_t. The paper's ranges are tiny (clip_low 3e-4, clip_high 4e-4).

    Args:
        logps, old_logps: (B, T) current / rollout log-probs of the sampled tokens.
        advantages: (B, T) or (B,).
        mask: (B, T) response mask.
        clip_low, clip_high: clip range of the sequence ratio.
        agg_mode: default ``seq-mean-token-mean`` (the paper's 1/G sum_i form).
        num_tokens: forwarded to :func:`aggregate_loss` (``token-mean`` only).
        dual_clip: optional dual clip for A < 0 (verl and the GSPO paper have none; default None).
        norm_len: constant length of ``seq-mean-token-sum-norm`` (see :func:`aggregate_loss`).

    Returns:
        ``(loss, metrics)`` with the same metric keys as :func:`clipped_policy_loss`.
    """
    logps, old_logps, advantages = _prepare(logps, old_logps, advantages, mask)  # (B, T) each
    seq_len = (mask > 0).to(logps.dtype).sum(-1)  # (B,)
    seq_log_ratio = (logps - old_logps).sum(-1) / seq_len.clamp(min=1.0)  # (B,) padding is 0 here
    log_ratio = logps - logps.detach() + seq_log_ratio.detach().unsqueeze(-1)  # (B, T)
    ratio = torch.exp(torch.clamp(log_ratio, max=10.0))  # (B, T)
    loss_mat, clipped, pg3 = _clipped_surrogate(ratio, advantages, clip_low, clip_high, dual_clip)  # (B, T)
    loss = aggregate_loss(loss_mat, mask, agg_mode, num_tokens=num_tokens, norm_len=norm_len)  # ()
    metrics = _metrics(ratio, advantages, mask, logps, old_logps, clip_low, clip_high, clipped, pg3)
    return loss, metrics
