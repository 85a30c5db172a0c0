"""The non-loss blocks of a method, composed: what the training module calls at each stage of a step.

:class:`MethodBlocks` holds one option of each block group (``configs/sensitivity``, ``configs/token_selection``,
``configs/advantage_shaping``, ``configs/rollout_view``) and exposes the four calls the module makes, so the
module never branches on a method:

1. :meth:`MethodBlocks.rollout`: the rollout batch, through the rollout-side view (default: every response from
   the real image; NoisyRollout: part of each group from a noised copy);
2. :meth:`MethodBlocks.score`: once per rollout batch, micro-batch by micro-batch, without gradient, the
   per-token visual sensitivity from the rollout parameters' passes given the real image and given the
   altered view (:class:`papo.blocks.base.ModelPasses`; only when a shaper needs it);
3. :meth:`MethodBlocks.populations`: once per update mini-batch, what each shaper needs from the whole
   mini-batch (VPPO: the min and max of the responses' mean sensitivity);
4. :meth:`MethodBlocks.shape`: once per micro-batch, the advantages after every shaper, trajectory shaping
   first, then token selection (the order of VPPO's released code; both are products, so it does not change
   the values).

With every group at ``none`` it is the identity: a plain rollout, no signal, advantages unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from papo.algos import masked_max, masked_mean
from papo.blocks.base import (
    AdvantageShaper,
    ModelPasses,
    RolloutView,
    SampleFn,
    SensitivitySignal,
    ShapingInputs,
)

__all__ = ["MethodBlocks"]


class MethodBlocks:
    """One option of every non-loss block group (module doc)."""

    def __init__(
        self,
        sensitivity: SensitivitySignal | None = None,
        token_selection: AdvantageShaper | None = None,
        advantage_shaping: AdvantageShaper | None = None,
        rollout_view: RolloutView | None = None,
    ) -> None:
        self.shapers: list[AdvantageShaper] = [
            s for s in (advantage_shaping, token_selection) if s is not None
        ]
        self.rollout_view = rollout_view if rollout_view is not None else RolloutView()
        #: a shaper uses per-token sensitivity scores: the module computes them once per rollout batch
        self.needs_scores = any(s.needs_scores for s in self.shapers)
        if self.needs_scores and sensitivity is None:
            names = [s.name for s in self.shapers if s.needs_scores]
            raise ValueError(
                f"{' and '.join(names)} need a visual-sensitivity signal, but sensitivity=none; choose one of "
                "configs/sensitivity (e.g. sensitivity=k3)"
            )
        # a signal no shaper uses is not computed (a loss term builds its own signal: configs/loss)
        self.sensitivity = sensitivity if self.needs_scores else None

    @property
    def needs_masked(self) -> bool:
        """The signal needs the altered-view log-probs (the datamodule's masked view)."""
        return self.sensitivity is not None and self.sensitivity.needs_masked

    def rollout(
        self, sample: SampleFn, batch: dict[str, Any], group_size: int, step: int, total_steps: int
    ) -> tuple[Any, dict[str, float]]:
        """The rollout batch and the view's metrics (keys ``rollout_view/<metric>``). ``step`` and
        ``total_steps`` count rollout batches (the view's schedule, e.g. NoisyRollout's annealing)."""
        exp, metrics = self.rollout_view.rollout(sample, batch, group_size, step, total_steps)
        return exp, {f"{self.rollout_view.name}/{k}": v for k, v in metrics.items()}

    @torch.no_grad()
    def score(self, passes: ModelPasses, mask: Tensor) -> Tensor:
        """(B, T) per-token sensitivity of one micro-batch from the rollout parameters' passes."""
        if self.sensitivity is None:
            raise ValueError("no shaper needs a sensitivity signal (MethodBlocks.needs_scores is False)")
        return self.sensitivity.score(passes, mask)  # (B, T)

    @torch.no_grad()
    def score_metrics(self, scores: Tensor, mask: Tensor) -> dict[str, float]:
        """Statistics of a rollout batch's signal (keys ``sensitivity/token_mean``, ``token_max``)."""
        name = self.sensitivity.name if self.sensitivity is not None else "sensitivity"
        return {
            f"{name}/token_mean": float(masked_mean(scores, mask)),
            f"{name}/token_max": float(masked_max(scores, mask)),
        }

    def populations(self, scores: Tensor | None, mask: Tensor) -> list[Any]:
        """Each shaper's statistics of an update mini-batch (scores (M, T), mask (M, T))."""
        if scores is None:
            return [None] * len(self.shapers)
        return [s.population(scores, mask) if s.needs_scores else None for s in self.shapers]

    def shape(
        self, advantages: Tensor, mask: Tensor, scores: Tensor | None, populations: list[Any]
    ) -> tuple[Tensor, dict[str, float]]:
        """(B, T) advantages after every shaper, and their metrics (keys ``<shaper name>/<metric>``)."""
        metrics: dict[str, float] = {}
        for shaper, population in zip(self.shapers, populations, strict=True):
            advantages, m = shaper(ShapingInputs(advantages, mask, scores, population))
            metrics.update({f"{shaper.name}/{k}": v for k, v in m.items()})
        return advantages, metrics

    def __repr__(self) -> str:
        return f"MethodBlocks(sensitivity={self.sensitivity!r}, shapers={self.shapers!r}, rollout_view={self.rollout_view!r})"
