"""papo.algos: the pure-tensor algorithm core (torch only; no Lightning, no config objects).

Advantages (GRPO, Dr. GRPO, RLOO), the shared loss aggregation, KL estimators, clipped policy losses
(PPO/DAPO with dual clip, GSPO), PAPO's implicit perception KL and entropy surrogate, DAPO's dynamic
sampling filter and overlong penalty, the name -> function registries that configs select from, and the
blocks of the perception-aware method family: visual-sensitivity signals, token selection, advantage shaping
(VPPO) and NoisyRollout's annealed image distortion.
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
    UnknownNameError,
)
from papo.algos.sampling import dynamic_sampling_keep, overlong_penalty

# isort: split
# perception-aware method blocks (issue 17): visual-sensitivity signals, token selection, advantage
# shaping (VPPO), NoisyRollout's annealed distortion
from papo.algos.advantage_shaping import (
    fixed_range_trajectory_scale,
    token_level_advantages,
    trajectory_dependency,
    vppo_shaped_advantages,
    vppo_trajectory_scale,
)
from papo.algos.image_distortion import (
    DECAY_MODES,
    annealed_noise_step,
    diffusion_alpha_bars,
    diffusion_noise,
    noise_decay,
)
from papo.algos.token_selection import TOKEN_SELECTIONS, select_tokens, selection_metrics
from papo.algos.visual_sensitivity import (
    DISTRIBUTION_SIGNALS,
    SAMPLED_SIGNALS,
    distribution_sensitivity,
    distribution_sensitivity_from_hidden,
    sampled_token_sensitivity,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "AGG_MODES",
    "KL_DIRECTIONS",
    "KL_ESTIMATORS",
    "LOSS_NORMALIZERS",
    "POLICY_LOSSES",
    "Registry",
    "UnknownNameError",
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

# perception-aware method blocks (issue 17)
__all__ += [
    "DECAY_MODES",
    "DISTRIBUTION_SIGNALS",
    "SAMPLED_SIGNALS",
    "TOKEN_SELECTIONS",
    "annealed_noise_step",
    "diffusion_alpha_bars",
    "diffusion_noise",
    "distribution_sensitivity",
    "distribution_sensitivity_from_hidden",
    "fixed_range_trajectory_scale",
    "noise_decay",
    "sampled_token_sensitivity",
    "select_tokens",
    "selection_metrics",
    "token_level_advantages",
    "trajectory_dependency",
    "vppo_shaped_advantages",
    "vppo_trajectory_scale",
]
