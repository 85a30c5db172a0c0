"""PAPO's Implicit Perception Loss: the KL between the policy given the real image and given a masked copy.

The KL (positive, logged as ``kl``) is MAXIMISED, so this component returns ``-gamma * KL_prcp`` (the
minus sign lives here and nowhere else). Per-token math is :func:`papo.algos.perception_kl`.

Differences from the paper, all configurable (docs/algorithm.md):
- ``direction``: the released code puts the masked log-probs in the role of the reference
  (d = l_mask - l, default); the paper's figure writes r - log r - 1 with r = pi(I)/pi(I_mask).
- ``mask_branch_grad``: the released code computes l_mask once per step with the rollout parameters
  under no_grad (default, detached); the paper writes pi_theta on both sides (True: recomputed with grad).
  Config: the loss-level ``loss.mask_branch_grad``, shared with the double-entropy component.
- ``schedule="linear"``: gamma annealed from ``gamma_start`` (default: gamma) to ``gamma_end`` (default 0) over
  the first ``anneal_fraction`` of training (:class:`papo.losses.base.GammaSchedule`, the released controller).
- ``token_clip`` / ``top_fraction`` (+ ``top_fraction_scope``): the released code's optional per-token clip
  and top-fraction token selection (per sequence by default), not in the paper.
"""

from __future__ import annotations

from torch import Tensor

from papo.algos import KL_ESTIMATORS, perception_kl
from papo.algos.perception import TOP_FRACTION_SCOPES
from papo.losses.base import GammaSchedule, LossComponent, LossInputs, scalar

DIRECTIONS = ("masked_as_ref", "real_as_ref")


class PerceptionKLLoss(LossComponent):
    """-gamma * KL_prcp (to minimise, i.e. KL_prcp is maximised)."""

    name = "perception_kl"
    needs_masked = True

    def __init__(
        self,
        gamma: float = 0.02,
        kind: str = "k3",
        direction: str = "masked_as_ref",
        mask_branch_grad: bool = False,
        schedule: str = "fixed",
        anneal_fraction: float = 0.5,
        token_clip: float | None = None,
        top_fraction: float | None = None,
        top_fraction_scope: str = "sequence",
        gamma_start: float | None = None,
        gamma_end: float = 0.0,
    ) -> None:
        if gamma < 0:
            raise ValueError(f"loss.gamma must be >= 0, got {gamma}")
        KL_ESTIMATORS.get(kind)  # validates the name (error lists valid kinds)
        if direction not in DIRECTIONS:
            raise ValueError(f"loss perception_kl.direction={direction!r}; valid: {list(DIRECTIONS)}")
        self.schedule = GammaSchedule(gamma, schedule, gamma_start, gamma_end, anneal_fraction)  # validates
        if top_fraction is not None and not 0 < top_fraction <= 1:
            raise ValueError(f"perception_kl.top_fraction must be in (0, 1], got {top_fraction}")
        if top_fraction_scope not in TOP_FRACTION_SCOPES:
            raise ValueError(
                f"perception_kl.top_fraction_scope={top_fraction_scope!r}; valid: {list(TOP_FRACTION_SCOPES)}"
            )
        self.gamma = gamma
        self.kind = kind
        self.direction = direction
        self.masked_grad = bool(mask_branch_grad)
        self.token_clip = token_clip
        self.top_fraction = top_fraction
        self.top_fraction_scope = top_fraction_scope

    @property
    def active(self) -> bool:
        return self.gamma > 0

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        assert inputs.logps_masked is not None, "PerceptionKLLoss needs logps_masked"
        # the module recomputes the masked branch with grad when ANY component asks; not asked: detached
        masked = inputs.logps_masked if self.masked_grad else inputs.logps_masked.detach()
        kl, metrics = perception_kl(
            inputs.logps,
            masked,
            inputs.response_mask,
            kind=self.kind,
            agg_mode=inputs.agg_mode,
            direction=self.direction,
            token_clip=self.token_clip,
            top_fraction=self.top_fraction,
            num_tokens=inputs.num_tokens,
            norm_len=inputs.norm_len,
            top_fraction_scope=self.top_fraction_scope,
        )
        coef = self.schedule.gamma_at(inputs.progress)
        out = {k: scalar(v) for k, v in metrics.items()}
        out.update(kl=scalar(kl) * inputs.local_scale, gamma=coef)
        return -coef * kl, out
