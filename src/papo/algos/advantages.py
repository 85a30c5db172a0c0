"""Outcome advantages for group-sampled responses: GRPO, Dr. GRPO, RLOO.

Each prompt is sampled G times; the G responses share a ``group_id``. A response's advantage compares
its scalar reward with the other rewards of its group and is later broadcast to all of its tokens.

* GRPO (Shao et al. 2024, arXiv 2402.03300), also used by DAPO and PAPO:
  A_i = (r_i - mean_g r) / (std_g r + eps), torch's unbiased std, eps = 1e-6.
* Dr. GRPO (Liu et al. 2025, arXiv 2503.20783): A_i = r_i - mean_g r (no std division).
* RLOO (Ahmadian et al. 2024, arXiv 2402.14740): A_i = r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean_g r).

Degenerate groups (our choice, documented): a group of size 1 has no baseline and gets advantage 0
(verl/EasyR1 instead use mean 0, std 1 there, i.e. A = r); a group whose rewards are all identical gets
exactly 0 (not 1e-11-sized rounding noise), in every estimator.

Group ids are arbitrary integers (not necessarily contiguous or sorted); everything is vectorised with
``torch.unique(return_inverse=True)`` + ``index_add`` (no Python loop over groups).
"""

from __future__ import annotations

import torch
from torch import Tensor

from papo.algos.registry import ADVANTAGE_ESTIMATORS

__all__ = ["group_advantages", "group_stats", "rloo_advantages"]


def _check(rewards: Tensor, group_ids: Tensor) -> Tensor:
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must be 1-D of the same length, got {tuple(rewards.shape)} "
            f"and {tuple(group_ids.shape)}"
        )
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    return rewards


def group_stats(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-element statistics of each element's group.

    Args:
        rewards: (N,) float scores.
        group_ids: (N,) integer group ids, any values, any order.

    Returns:
        ``(mean, std, count, constant)``, each (N,): the group mean, the group's unbiased std (0 for a
        group of size 1), the group size (float), and True where all rewards of the group are equal.
    """
    rewards = _check(rewards, group_ids)
    uniq, inv = torch.unique(group_ids, return_inverse=True)  # (G,), (N,) group index in [0, G)
    num_groups = uniq.numel()
    zeros = rewards.new_zeros(num_groups)  # (G,)
    count = zeros.index_add(0, inv, torch.ones_like(rewards))  # (G,)
    mean = zeros.index_add(0, inv, rewards) / count  # (G,)
    centered = rewards - mean[inv]  # (N,)
    sq = zeros.index_add(0, inv, centered**2)  # (G,)
    std = (sq / (count - 1).clamp(min=1)).sqrt()  # (G,) unbiased; 0 for size-1 groups
    gmax = zeros.scatter_reduce(0, inv, rewards, reduce="amax", include_self=False)  # (G,)
    gmin = zeros.scatter_reduce(0, inv, rewards, reduce="amin", include_self=False)  # (G,)
    constant = gmax == gmin  # (G,) also True for size-1 groups
    return mean[inv], std[inv], count[inv], constant[inv]


def group_advantages(
    rewards: Tensor, group_ids: Tensor, norm_by_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO / Dr. GRPO outcome advantage, one value per response.

    A_i = (r_i - mean_g) / (std_g + eps) with torch's unbiased std (``norm_by_std=True``, GRPO/DAPO/PAPO),
    or A_i = r_i - mean_g (``norm_by_std=False``, Dr. GRPO). Groups of size 1 and groups of identical
    rewards give exactly 0.

    Args:
        rewards: (N,) float rewards.
        group_ids: (N,) long; responses to the same prompt share an id (arbitrary values and order).
        norm_by_std: divide by the group std.
        eps: added to the std.

    Returns:
        (N,) advantages, same dtype as ``rewards`` (float for integer rewards).
    """
    rewards = _check(rewards, group_ids)
    mean, std, _, constant = group_stats(rewards, group_ids)  # (N,) each
    adv = rewards - mean  # (N,)
    if norm_by_std:
        adv = adv / (std + eps)  # (N,)
    return torch.where(constant, torch.zeros_like(adv), adv)  # (N,)


def rloo_advantages(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """REINFORCE leave-one-out advantage (Ahmadian et al. 2024, arXiv 2402.14740).

    A_i = r_i - 1/(G-1) sum_{j != i} r_j = G/(G-1) (r_i - mean_g); groups of size 1 (no other sample)
    and groups of identical rewards give exactly 0.

    Args:
        rewards: (N,) float rewards.
        group_ids: (N,) long group ids.

    Returns:
        (N,) advantages.
    """
    rewards = _check(rewards, group_ids)
    mean, _, count, constant = group_stats(rewards, group_ids)  # (N,) each
    adv = (rewards - mean) * count / (count - 1).clamp(min=1)  # (N,)
    return torch.where(constant, torch.zeros_like(adv), adv)  # (N,)


@ADVANTAGE_ESTIMATORS.register("grpo")
def _grpo(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """GRPO: group_advantages(norm_by_std=True)."""
    return group_advantages(rewards, group_ids, norm_by_std=True)


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def _dr_grpo(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """Dr. GRPO: group_advantages(norm_by_std=False)."""
    return group_advantages(rewards, group_ids, norm_by_std=False)


ADVANTAGE_ESTIMATORS.register("rloo")(rloo_advantages)
