"""VPPO's Trajectory-level Advantage Shaping (``configs/advantage_shaping/vppo.yaml``).

A'_i = alpha_i A_i with alpha_i from the response's mean visual sensitivity S_i, min-max normalised over the
update mini-batch (:meth:`VppoTrajectoryShaping.population`) and rescaled so that alpha averages 1 over the
micro-batch; formula and the released-code line references: :mod:`papo.algos.advantage_shaping`
(:func:`~papo.algos.advantage_shaping.vppo_shaped_advantages`). Published beta_min: 0.9.
"""

from __future__ import annotations

import torch
from torch import Tensor

from papo.algos.advantage_shaping import trajectory_dependency, vppo_shaped_advantages
from papo.blocks.base import AdvantageShaper, ShapingInputs


def min_max_dependency(scores: Tensor, mask: Tensor) -> tuple[float, float]:
    """(S_min, S_max) over the responses with tokens; (0, 0) (no shaping) with fewer than two of them, as the
    released code, which shapes only when the mini-batch holds at least two responses."""
    valid = (mask > 0).any(1)  # (B,)
    seq = trajectory_dependency(scores, mask)[valid]  # (n,)
    if seq.numel() < 2:
        return 0.0, 0.0
    return float(seq.min()), float(seq.max())


class MinMaxTrajectoryShaper(AdvantageShaper):
    """A trajectory-level shaper of the responses' mean sensitivity, min-max normalised over the update
    mini-batch (:func:`min_max_dependency`); subclasses turn it into a scale."""

    #: the option's name in configs/advantage_shaping (for errors)
    option = ""

    def population(self, scores: Tensor, mask: Tensor) -> tuple[float, float]:
        return min_max_dependency(scores, mask)

    def scores(self, inputs: ShapingInputs) -> Tensor:
        """The micro-batch's (B, T) per-token sensitivity; an error naming the option without one."""
        if inputs.scores is None:
            raise ValueError(
                f"advantage_shaping={self.option} needs per-token sensitivity scores (configs/sensitivity)"
            )
        return inputs.scores


class VppoTrajectoryShaping(MinMaxTrajectoryShaper):
    """alpha_i in [beta_min, beta_min + (1 - beta_min) / mu], mean 1 over the micro-batch (module doc)."""

    option = "vppo"

    def __init__(self, beta_min: float = 0.9) -> None:
        if not 0.0 <= float(beta_min) <= 1.0:
            raise ValueError(f"advantage_shaping.beta_min={beta_min} must be in [0, 1]")
        self.beta_min = float(beta_min)

    @torch.no_grad()
    def __call__(self, inputs: ShapingInputs) -> tuple[Tensor, dict[str, float]]:
        # population None (no mini-batch range given): the range of these responses themselves
        shaped, metrics = vppo_shaped_advantages(
            inputs.advantages, self.scores(inputs), inputs.response_mask, self.beta_min, inputs.population
        )
        return shaped, {k: float(v) for k, v in metrics.items()}

    def __repr__(self) -> str:
        return f"VppoTrajectoryShaping(beta_min={self.beta_min})"
