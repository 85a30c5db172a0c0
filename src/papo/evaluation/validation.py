"""Pieces of training-time validation kept out of the LightningModule.

* :class:`PromptBudget`: the held-out perception KL (``val/kl_prcp``, two extra no-grad forwards per val batch)
  on the first ``rollout.val_kl_max_prompts`` prompts of each validation run only, the same prompts every time.
* :class:`ValidationOutput`: what ``PapoModule.validation_step`` returns for each batch, read by callbacks in
  ``on_validation_batch_end`` (the sample table takes its samples from it): the main protocol's real- and
  masked-image generations and the batch's held-out KL.
"""

from __future__ import annotations

from dataclasses import dataclass

from papo.rollout.experience import Experience

__all__ = ["PromptBudget", "ValidationOutput"]


@dataclass
class ValidationOutput:
    """One val batch under the main protocol: ``real`` / ``masked`` generations (``masked`` None without a
    masked view), and the token-mean held-out KL of the batch (None when not computed)."""

    real: Experience
    masked: Experience | None = None
    kl_prcp: float | None = None


class PromptBudget:
    """The rows of each val batch that fall in the first ``max_prompts`` prompts of a validation run (None:
    all of them); the count restarts at batch 0."""

    def __init__(self, max_prompts: int | None) -> None:
        self.max_prompts = max_prompts
        self.seen = 0

    def take(self, batch_idx: int, num_prompts: int, exp: Experience) -> Experience | None:
        """The rows of ``exp`` (a batch of ``num_prompts`` prompts, group id = prompt index) within the budget,
        or None when the budget is spent."""
        if batch_idx == 0:
            self.seen = 0
        limit, seen = self.max_prompts, self.seen
        if limit is not None and seen >= limit:
            return None
        if limit is not None and seen + num_prompts > limit:  # rows of the first `limit` prompts only
            exp = exp.select([i for i, g in enumerate(exp.group_ids.tolist()) if g < limit - seen])
        self.seen = seen + num_prompts
        return exp
