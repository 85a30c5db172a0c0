"""A visual-sensitivity signal maximised as a loss term: PAPO's Implicit Perception Loss built from blocks.

    loss = -gamma(p) * aggregate(min(w_t s_t, token_clip))

with s_t the sensitivity block's per-token signal between the policy given the real image and given the
altered view (``configs/sensitivity``; PAPO: ``k3``, the masked view as reference), w_t an optional token
selection's keep mask (``configs/token_selection``; PAPO's released option: ``top_quantile_per_sequence``
0.2), ``token_clip`` the released optional per-token cap, and gamma(p) PAPO's coefficient schedule
(:class:`papo.losses.base.GammaSchedule`). The minus sign lives here: the signal is MAXIMISED.

This is the same computation as :class:`papo.losses.perception_kl.PerceptionKLLoss` (``loss=papo``) with
``direction="masked_as_ref"``, composed of the blocks instead of written out; ``method=papo`` uses it and
``tests/test_methods_papo_blocks.py`` checks that both give the same loss. The signal runs with gradient
through the real-image log-probs (and through the masked ones with ``mask_branch_grad``); selection has none.
"""

from __future__ import annotations

import torch
from torch import Tensor

from papo.algos import masked_max, masked_mean, masked_var
from papo.blocks.base import SensitivitySignal, TokenSelector
from papo.losses.base import GammaSchedule, LossComponent, LossInputs, scalar


class PerceptionSignalLoss(LossComponent):
    """-gamma * aggregate(selected, clipped sensitivity signal) (to minimise: the signal is maximised)."""

    name = "perception_signal"
    needs_masked = True

    def __init__(
        self,
        signal: SensitivitySignal,
        gamma: float = 0.02,
        selection: TokenSelector | None = None,
        token_clip: float | None = None,
        mask_branch_grad: bool = False,
        schedule: str = "fixed",
        gamma_start: float | None = None,
        gamma_end: float = 0.0,
        anneal_fraction: float = 0.5,
    ) -> None:
        if gamma < 0:
            raise ValueError(f"loss.gamma must be >= 0, got {gamma}")
        if not isinstance(signal, SensitivitySignal):
            raise ValueError(f"perception_signal.signal must be a configs/sensitivity block, got {signal!r}")
        self.signal, self.selection, self.token_clip = signal, selection, token_clip
        self.schedule = GammaSchedule(gamma, schedule, gamma_start, gamma_end, anneal_fraction)
        self.gamma = float(gamma)
        self.masked_grad = bool(mask_branch_grad)

    @property
    def active(self) -> bool:
        return self.gamma > 0

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        if inputs.logps_masked is None:
            raise ValueError(
                "PerceptionSignalLoss needs the altered-view log-probs (LossInputs.logps_masked)"
            )
        mask = inputs.response_mask
        masked = inputs.logps_masked if self.masked_grad else inputs.logps_masked.detach()
        per_token = self.signal(inputs.logps, masked, mask)  # (B, T)
        raw = per_token.detach()
        keep = mask > 0  # (B, T)
        if self.selection is not None:  # select on the raw signal, then clip (the released order)
            keep = self.selection.select(raw, mask) > 0  # (B, T)
            per_token = per_token * keep.to(per_token.dtype)
        if self.token_clip is not None:
            per_token = torch.clamp(per_token, max=self.token_clip)
        value = inputs.aggregate(per_token)
        coef = self.schedule.gamma_at(inputs.progress)
        with torch.no_grad():
            metrics = {
                "signal": scalar(value) * inputs.local_scale,
                "signal_token_mean": scalar(masked_mean(raw, mask)),
                "signal_token_max": scalar(masked_max(raw, mask)),
                "kept_frac": scalar(masked_mean(keep.to(raw.dtype), mask)),
                "gamma": coef,
            }
            metrics["signal_token_var"] = scalar(masked_var(raw, mask))
        return -coef * value, metrics
