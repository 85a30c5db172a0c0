"""Policy-gradient term (GRPO/DAPO/GSPO clipped surrogate) as a loss component.

The surrogate itself lives in :mod:`papo.algos.policy_loss` (pure functions, picked by name from
``papo.algos.POLICY_LOSSES``); this wrapper only binds the algo config's hyperparameters.
"""

from __future__ import annotations

from torch import Tensor

from papo.algos import POLICY_LOSSES
from papo.losses.base import LossComponent, LossInputs, scalar


class PolicyGradientLoss(LossComponent):
    """Clipped policy-gradient loss L_pg (to minimise)."""

    name = "pg"

    def __init__(
        self,
        policy_loss: str = "ppo_clip",
        clip_low: float = 0.2,
        clip_high: float = 0.28,
        dual_clip: float | None = 3.0,
    ) -> None:
        self.fn = POLICY_LOSSES.get(policy_loss)
        self.policy_loss = policy_loss
        self.clip_low = clip_low
        self.clip_high = clip_high
        self.dual_clip = dual_clip

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        kwargs = {"clip_low": self.clip_low, "clip_high": self.clip_high, "agg_mode": inputs.agg_mode}
        if self.policy_loss == "ppo_clip":
            kwargs["dual_clip"] = self.dual_clip
            kwargs["num_tokens"] = inputs.num_tokens
        loss, metrics = self.fn(
            inputs.logps, inputs.old_logps, inputs.advantages, inputs.response_mask, **kwargs
        )
        out = {k: scalar(v) for k, v in metrics.items()}
        out["loss"] = scalar(loss) * inputs.local_scale
        return loss, out
