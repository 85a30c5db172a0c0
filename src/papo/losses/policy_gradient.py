"""Policy-gradient term (GRPO/DAPO/GSPO clipped surrogate) as a loss component.

The surrogate itself lives in :mod:`papo.algos.policy_loss` (pure functions, picked by name from
``papo.algos.POLICY_LOSSES``); this wrapper only binds the algo config's hyperparameters and forwards the
micro-batch's normalisers: ``num_tokens`` (global token count, ``token-mean``) always, ``norm_len``
(``seq-mean-token-sum-norm``) and ``dual_clip`` to every function that accepts them. ``gspo`` accepts a
dual clip (not in the GSPO paper nor verl; ``configs/algo/gspo.yaml`` sets ``dual_clip: null``); a
non-null ``algo.dual_clip`` with a policy loss that has no such argument is a config error.
"""

from __future__ import annotations

from torch import Tensor

from papo.algos import POLICY_LOSSES
from papo.algos.registry import accepts_kwarg
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
        if dual_clip is not None and not accepts_kwarg(self.fn, "dual_clip"):
            raise ValueError(
                f"algo.dual_clip={dual_clip} but policy loss {policy_loss!r} has no dual clip: "
                "set algo.dual_clip=null"
            )
        self._takes_dual_clip = accepts_kwarg(self.fn, "dual_clip")
        self._takes_num_tokens = accepts_kwarg(self.fn, "num_tokens")
        self._takes_norm_len = accepts_kwarg(self.fn, "norm_len")

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        kwargs = {"clip_low": self.clip_low, "clip_high": self.clip_high, "agg_mode": inputs.agg_mode}
        if self._takes_dual_clip:
            kwargs["dual_clip"] = self.dual_clip
        if self._takes_num_tokens:
            kwargs["num_tokens"] = inputs.num_tokens
        if self._takes_norm_len and inputs.norm_len is not None:
            kwargs["norm_len"] = inputs.norm_len
        loss, metrics = self.fn(
            inputs.logps, inputs.old_logps, inputs.advantages, inputs.response_mask, **kwargs
        )
        out = {k: scalar(v) for k, v in metrics.items()}
        out["loss"] = scalar(loss) * inputs.local_scale
        return loss, out
