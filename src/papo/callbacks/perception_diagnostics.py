"""Switches for the held-out perception diagnostics of training-time validation.

``PapoModule.validation_step`` (through :func:`papo.evaluation.validation.after_validation_generation`)
computes ``val/kl_prcp`` (and ``val/kl_prcp_by_vd/<v>``) on the greedy real-image responses: two extra
no-grad forwards per val batch. On the embedded task (13-token responses) that is ~+40 % of validation time;
with long responses (real models) generation dominates and it is a few percent. This callback sets whether
and on how many val prompts per validation run it is computed (the first ones, so the set is the same at
every validation).
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback


class PerceptionDiagnosticsCallback(Callback):
    """Configure ``val/kl_prcp``: ``kl_prcp`` on/off, ``kl_max_prompts`` (None = every val prompt)."""

    def __init__(self, kl_prcp: bool = True, kl_max_prompts: int | None = None) -> None:
        super().__init__()
        if kl_max_prompts is not None and int(kl_max_prompts) < 1:
            raise ValueError(
                f"perception_diagnostics.kl_max_prompts must be >= 1 or null, got {kl_max_prompts}"
            )
        self.kl_prcp = bool(kl_prcp)
        self.kl_max_prompts = None if kl_max_prompts is None else int(kl_max_prompts)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pl_module.val_kl_prcp = self.kl_prcp
        pl_module.val_kl_prcp_max_prompts = self.kl_max_prompts
