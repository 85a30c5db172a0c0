"""Advantage shaping by visual dependency: per trajectory (VPPO's TAS) and per token (VPPO's TGF).

Trajectory level. A response's dependency is the mean of its per-token signal over its n response tokens,
S_i = (1 / max(n_i, 1)) sum_t s_{i,t} (:func:`trajectory_dependency`). VPPO's Trajectory-level Advantage
Shaping, as its released code computes it (``verl/workers/actor/dp_actor.py``, ``use_advantage_shaping``),
scales the advantage of each response (:func:`vppo_trajectory_scale`):

    S_min, S_max = min and max of S_i over a reference population (VPPO: the update mini-batch)
    u_i   = clamp((S_i - S_min) / (S_max - S_min), 0, 1)
    mu    = mean of u_i over the responses being scaled (VPPO: the micro-batch)
    beta_max = beta_min + (1 - beta_min) / (mu + 1e-8)
    alpha_i  = beta_min + u_i (beta_max - beta_min) = beta_min + (1 - beta_min) u_i / (mu + 1e-8)
    A'_i     = alpha_i A_i

so alpha_i lies in [beta_min, beta_min + (1 - beta_min) / mu] and its mean over the scaled responses is 1
(up to the 1e-8): the shaping moves weight between trajectories without changing the average step size.
alpha_i = 1 for every response when the population has fewer than 2 responses with tokens or
S_max - S_min <= 1e-6, and for responses without tokens. Published beta_min: 0.9.

:func:`fixed_range_trajectory_scale` is this project's simpler alternative (not VPPO's): alpha_i =
beta_min + (beta_max - beta_min) u_i with a constant beta_max, bounded by [beta_min, beta_max].

Token level. :func:`token_level_advantages` gives A_{i,t} = A_i w_{i,t}. With w = a token-selection keep mask
(:mod:`papo.algos.token_selection`) this is VPPO's Token-level Gradient Filtering: the released code
multiplies the per-token clipped loss by the mask and keeps the full response mask as the normaliser, which
for a PPO-clip loss equals zeroing the dropped tokens' advantages (their loss max(-0 r, -0 clip(r)) is 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from papo.algos.aggregation import masked_mean, zero_padding

__all__ = [
    "fixed_range_trajectory_scale",
    "token_level_advantages",
    "trajectory_dependency",
    "vppo_shaped_advantages",
    "vppo_trajectory_scale",
]

_EPS_RANGE = 1e-6  # VPPO: no scaling unless S_max - S_min > 1e-6
_EPS_MEAN = 1e-8  # VPPO: mu + 1e-8


def trajectory_dependency(token_scores: Tensor, mask: Tensor) -> Tensor:
    """S_i = mean of ``token_scores`` over each sequence's response tokens, (B,); 0 for a row without tokens."""
    return masked_mean(zero_padding(token_scores, mask), mask, dim=1)  # (B,)


def _normalised(seq_scores: Tensor, valid: Tensor, population: tuple[Tensor, Tensor] | None) -> Tensor | None:
    """u_i = clamp((S_i - S_min) / (S_max - S_min), 0, 1), (B,); None when the range is degenerate."""
    if population is None:
        ref = seq_scores[valid]  # (n,)
        if ref.numel() == 0:  # one response has a zero range (handled below), as in VPPO's "> 1" check
            return None
        lo, hi = ref.min(), ref.max()
    else:
        lo, hi = (torch.as_tensor(x, dtype=seq_scores.dtype, device=seq_scores.device) for x in population)
    if not bool(hi - lo > _EPS_RANGE):
        return None
    return torch.clamp((seq_scores - lo) / (hi - lo), 0.0, 1.0)  # (B,)


@torch.no_grad()
def vppo_trajectory_scale(
    seq_scores: Tensor,
    valid: Tensor,
    beta_min: float = 0.9,
    population: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """VPPO's trajectory scale alpha_i (released code; formula in the module doc).

    Args:
        seq_scores: (B,) trajectory dependency S_i of the responses to scale.
        valid: (B,) bool, responses with at least one response token (others get alpha = 1).
        beta_min: the lower end of the range (VPPO ``advantage_scaling_min``; published 0.9).
        population: ``(S_min, S_max)`` of the reference population (VPPO: the mini-batch, when these
            responses are one of its micro-batches); ``None`` = min and max over the valid ``seq_scores``
            (then at least 2 valid responses are needed, as in VPPO).

    Returns:
        (B,) scale alpha_i.
    """
    valid = valid.bool()
    scale = torch.ones_like(seq_scores)  # (B,)
    u = _normalised(seq_scores, valid, population)
    if u is None or not bool(valid.any()):
        return scale
    mu = u[valid].mean()  # ()
    beta_max = beta_min + (1.0 - beta_min) / (mu + _EPS_MEAN)  # ()
    mapped = beta_min + u * (beta_max - beta_min)  # (B,)
    return torch.where(valid, mapped, scale)  # (B,)


@torch.no_grad()
def fixed_range_trajectory_scale(
    seq_scores: Tensor,
    valid: Tensor,
    beta_min: float = 0.9,
    beta_max: float = 1.1,
    population: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """alpha_i = beta_min + (beta_max - beta_min) u_i, u_i as in :func:`vppo_trajectory_scale` (this
    project's constant-range alternative, not VPPO's). Degenerate ranges and rows without tokens get 1."""
    if beta_max < beta_min:
        raise ValueError(f"beta_max ({beta_max}) must be >= beta_min ({beta_min})")
    valid = valid.bool()
    scale = torch.ones_like(seq_scores)  # (B,)
    u = _normalised(seq_scores, valid, population)
    if u is None:
        return scale
    return torch.where(valid, beta_min + (beta_max - beta_min) * u, scale)  # (B,)


def token_level_advantages(advantages: Tensor, token_weights: Tensor, mask: Tensor) -> Tensor:
    """A_{i,t} = A_i w_{i,t} on response tokens, 0 at padding.

    Args:
        advantages: (B,) per-response or (B, T) per-token advantages.
        token_weights: (B, T) weights (a keep mask for VPPO's gradient filtering).
        mask: (B, T) response mask.

    Returns:
        (B, T) token advantages.
    """
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages  # (B, 1) or (B, T)
    return zero_padding(adv * token_weights.to(adv.dtype), mask)  # (B, T)


@torch.no_grad()
def vppo_shaped_advantages(
    advantages: Tensor,
    token_scores: Tensor,
    mask: Tensor,
    beta_min: float = 0.9,
    population: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """VPPO's trajectory-level shaping end to end: A'_i = alpha_i A_i with S_i from the token signal.

    Args:
        advantages: (B,) or (B, T) advantages (a (B, T) tensor is scaled row-wise).
        token_scores: (B, T) per-token visual dependency (VPPO: k3 of the rollout-policy log-probs given
            the real and the masked image).
        mask: (B, T) response mask.
        beta_min, population: see :func:`vppo_trajectory_scale`.

    Returns:
        ``(shaped, metrics)``: shaped advantages of ``advantages``' shape; metrics (0-dim):
        ``dependency_mean`` (mean S_i over responses with tokens), ``scale_mean``, ``scale_min``,
        ``scale_max`` (over all responses).
    """
    seq = trajectory_dependency(token_scores, mask)  # (B,)
    valid = (mask > 0).any(1)  # (B,)
    scale = vppo_trajectory_scale(seq, valid, beta_min, population)  # (B,)
    shaped = advantages * (scale.unsqueeze(1) if advantages.dim() == 2 else scale)
    metrics = {
        "dependency_mean": masked_mean(seq, valid.to(seq.dtype)),
        "scale_mean": scale.mean(),
        "scale_min": scale.min(),
        "scale_max": scale.max(),
    }
    return shaped, metrics
