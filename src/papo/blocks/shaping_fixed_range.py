"""A constant-range trajectory shaping (``configs/advantage_shaping/fixed_range.yaml``), this project's
alternative to VPPO's (not in any paper): alpha_i = beta_min + (beta_max - beta_min) u_i, u_i the response's
mean visual sensitivity min-max normalised over the update mini-batch, so alpha stays in [beta_min, beta_max]
(VPPO's upper end grows as 1 / mean u). Maths: :func:`papo.algos.advantage_shaping.fixed_range_trajectory_scale`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from papo.algos.advantage_shaping import fixed_range_trajectory_scale, trajectory_dependency
from papo.blocks.base import ShapingInputs
from papo.blocks.shaping_vppo import MinMaxTrajectoryShaper


class FixedRangeTrajectoryShaping(MinMaxTrajectoryShaper):
    """alpha_i = beta_min + (beta_max - beta_min) u_i (module doc)."""

    option = "fixed_range"

    def __init__(self, beta_min: float = 0.9, beta_max: float = 1.1) -> None:
        if not 0.0 <= float(beta_min) <= float(beta_max):
            raise ValueError(
                f"advantage_shaping.beta_min={beta_min} and beta_max={beta_max} need 0 <= beta_min <= beta_max"
            )
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    @torch.no_grad()
    def __call__(self, inputs: ShapingInputs) -> tuple[Tensor, dict[str, float]]:
        mask = inputs.response_mask
        seq = trajectory_dependency(self.scores(inputs), mask)  # (B,)
        valid = (mask > 0).any(1)  # (B,)
        scale = fixed_range_trajectory_scale(
            seq, valid, self.beta_min, self.beta_max, inputs.population
        )  # (B,)
        shaped = inputs.advantages * scale.unsqueeze(1)  # (B, T)
        metrics = {
            "dependency_mean": float(seq[valid].mean()) if bool(valid.any()) else 0.0,
            "scale_mean": float(scale.mean()),
            "scale_min": float(scale.min()),
            "scale_max": float(scale.max()),
        }
        return shaped, metrics

    def __repr__(self) -> str:
        return f"FixedRangeTrajectoryShaping(beta_min={self.beta_min}, beta_max={self.beta_max})"
