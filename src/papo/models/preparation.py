"""From a scored rollout batch to what the update needs, without Lightning: rollout metrics, DAPO's overlong
shaping of the rewards, the no-grad log-prob passes (old policy, reference, masked image) and the advantages.

The log-prob passes are given as functions of the experience (``policy_logps(exp, masked)``,
``ref_logps(exp)``), so the order of the passes and what each one is skipped for is tested on plain tensors.
Differences from the released trainer: no old-log-prob pass when the update is one on-policy step (the first
update's own log-probs are used, identical values); with LoRA the reference is the base model with the adapters
disabled (the caller's ``ref_logps``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from papo.algos import ADVANTAGE_ESTIMATORS, kl_estimate, overlong_penalty
from papo.config.training import AlgoConfig
from papo.rollout.experience import Experience, reward_term_means
from papo.rollout.hf_generate import is_end_token

__all__ = ["prepare_experience", "rollout_metrics", "shape_rewards"]


def rollout_metrics(
    exp: Experience, n_err: int, eos_ids: Sequence[int], max_new_tokens: int
) -> dict[str, float]:
    """Reward, accuracy, format, reward errors and response lengths of a rollout batch (``train/...``)."""
    lengths = exp.response_mask.sum(1)  # (N,) EOS included
    # truncated: cut at rollout.max_new_tokens without an end token (not: as long as the longest response)
    last = exp.response_ids.gather(1, (lengths.long() - 1).clamp(min=0)[:, None])[:, 0]  # (N,)
    ended = is_end_token(last, list(eos_ids))  # (N,) any end token of the generation config
    truncated = (lengths >= max_new_tokens) & ~ended
    return {
        "train/reward/mean": float(exp.rewards.mean()),
        "train/reward/accuracy": float(exp.accuracy.mean()),
        "train/reward/format": float(exp.format.mean()),
        "train/reward/errors": float(n_err),
        **reward_term_means(exp, "train/reward"),  # each named reward component: train/reward/<name>
        "train/response/length_mean": float(lengths.mean()),
        "train/response/length_max": float(lengths.max()),
        "train/response/clip_ratio": float(truncated.float().mean()),
    }


def shape_rewards(exp: Experience, algo: AlgoConfig, max_new_tokens: int) -> None:
    """DAPO's soft overlong penalty (``algo.overlong``) added to ``exp.rewards`` (a new tensor; a no-op when off)."""
    rewards = exp.rewards.clone()
    o = algo.overlong
    if o.enabled:
        rewards += overlong_penalty(
            exp.response_mask.sum(1), max_new_tokens, o.buffer_length, o.penalty_factor
        )
    exp.rewards = rewards


def prepare_experience(
    exp: Experience,
    algo: AlgoConfig,
    *,
    needs_ref: bool,
    needs_masked: bool,
    masked_grad: bool,
    policy_logps: Callable[..., Tensor],
    ref_logps: Callable[[Experience], Tensor],
) -> None:
    """Fill ``exp.old_logps`` / ``ref_logps`` / ``logps_masked`` (only those some term needs) and ``exp.advantages``.

    ``old_logps``: when the batch is updated more than once (``ppo_epochs`` or ``num_minibatches`` > 1).
    ``logps_masked``: once here when the masked branch carries no gradient (else per micro-batch in the update).
    A reference KL in the reward (``algo.kl_in=reward``) is subtracted from the rewards before the advantages.
    """
    if algo.ppo_epochs > 1 or algo.num_minibatches > 1:
        exp.old_logps = policy_logps(exp)
    if needs_ref:
        exp.ref_logps = ref_logps(exp)
    if needs_masked and not masked_grad:
        exp.logps_masked = policy_logps(exp, masked=True)
    rewards = exp.rewards
    if algo.kl_in_reward:
        old = exp.old_logps if exp.old_logps is not None else policy_logps(exp)
        kl = kl_estimate(old, exp.ref_logps, algo.kl_estimator)
        rewards = rewards - algo.kl_coef * (kl * exp.response_mask).sum(1)
    exp.advantages = ADVANTAGE_ESTIMATORS.get(algo.advantage)(rewards, exp.group_ids)  # (N,)
