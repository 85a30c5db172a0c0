"""Non-finite optimiser steps: why a step is skipped, how many were in a row, when training must stop.

A mini-batch whose loss terms or gradient norm are not finite is not applied (the caller zeroes the gradient);
:class:`StepGuard` counts such skips (``train/optim/skipped_steps``, ``consecutive_skips``) and says when
``optim.max_consecutive_skips`` skips in a row call for stopping (the caller saves a checkpoint and raises
:class:`NonFiniteTrainingError`). Pure Python: no Lightning, no model. The released code has no such guard.
"""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["NonFiniteTrainingError", "StepGuard"]


class NonFiniteTrainingError(RuntimeError):
    """Too many optimiser steps in a row had a non-finite loss or gradient norm (the state was saved)."""


class StepGuard:
    """Counts skipped optimiser steps (see the module docstring); ``max_consecutive``: None = never stop."""

    def __init__(self, max_consecutive: int | None) -> None:
        self.max_consecutive = max_consecutive
        self.skipped_steps = 0
        self.consecutive_skips = 0  # optimiser steps skipped in a row

    @staticmethod
    def reason(nonfinite: list[str], grad_norm: float | None) -> str | None:
        """Why this step must be skipped (non-finite loss terms first, then the gradient norm), or None."""
        if nonfinite:
            return f"non-finite loss in {sorted(set(nonfinite))}"
        if grad_norm is not None and not math.isfinite(grad_norm):
            return f"non-finite grad norm ({grad_norm})"
        return None

    def stepped(self) -> None:
        """An optimiser step was applied: the run of skips ends."""
        self.consecutive_skips = 0

    def skipped(self, reason: str, step: int) -> bool:
        """Count a skipped step (logged with its reason); True when ``max_consecutive`` skips in a row are reached."""
        self.skipped_steps += 1
        self.consecutive_skips += 1
        log.warning(
            "step %d: optimiser step skipped: %s (%d in a row, %d in total; optim.max_consecutive_skips=%s)",
            step,
            reason,
            self.consecutive_skips,
            self.skipped_steps,
            self.max_consecutive,
        )
        return bool(self.max_consecutive) and self.consecutive_skips >= int(self.max_consecutive)

    def error(self, reason: str, step: int, path: str) -> NonFiniteTrainingError:
        """The error that stops training after the state was saved to ``path``."""
        return NonFiniteTrainingError(
            f"{self.consecutive_skips} optimiser steps in a row skipped at step {step} "
            f"(optim.max_consecutive_skips={self.max_consecutive}; last: {reason}); the run's state is saved in "
            f"{path}. Lower optim.lr or the loss coefficients, or resume from an earlier checkpoint."
        )

    def metrics(self) -> dict[str, float]:
        return {
            "train/optim/skipped_steps": float(self.skipped_steps),
            "train/optim/consecutive_skips": float(self.consecutive_skips),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps, "consecutive_skips": self.consecutive_skips}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped_steps = int(state["skipped_steps"])
        self.consecutive_skips = int(state["consecutive_skips"])
