"""papo.algos: the pure-tensor algorithm core (torch only; no Lightning, no config objects).

Advantages (GRPO, Dr. GRPO, RLOO), the shared loss aggregation, KL estimators, clipped policy losses
(PPO/DAPO with dual clip, GSPO), PAPO's implicit perception KL and entropy surrogate, DAPO's dynamic
sampling filter and overlong penalty, and the name -> function registries that configs select from.
Shapes: B sequences, T response tokens; masks are (B, T), 1 on response tokens only.
"""

from papo.algos.advantages import group_advantages, group_stats, rloo_advantages
from papo.algos.aggregation import (
    LOSS_NORMALIZERS,
    aggregate_loss,
    masked_max,
    masked_mean,
    masked_min,
    masked_var,
    micro_batch_normalization,
    zero_padding,
)
from papo.algos.kl import kl_estimate
from papo.algos.perception import KL_DIRECTIONS, perception_kl, sampled_entropy
from papo.algos.policy_loss import clipped_policy_loss, gspo_policy_loss
from papo.algos.registry import (
    ADVANTAGE_ESTIMATORS,
    AGG_MODES,
    AGGREGATIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    Registry,
)
from papo.algos.sampling import dynamic_sampling_keep, overlong_penalty

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "AGG_MODES",
    "KL_DIRECTIONS",
    "KL_ESTIMATORS",
    "LOSS_NORMALIZERS",
    "POLICY_LOSSES",
    "Registry",
    "aggregate_loss",
    "clipped_policy_loss",
    "dynamic_sampling_keep",
    "group_advantages",
    "group_stats",
    "gspo_policy_loss",
    "kl_estimate",
    "masked_max",
    "masked_mean",
    "masked_min",
    "masked_var",
    "micro_batch_normalization",
    "overlong_penalty",
    "perception_kl",
    "rloo_advantages",
    "sampled_entropy",
    "zero_padding",
]
