"""``RLStepProgressBar``: Lightning's tqdm bar counting RL (optimiser) steps out of ``trainer.max_steps``.

Lightning's bar counts the batches of an epoch, which says little here: the RL loop runs one long epoch
(``max_epochs=-1``), and under DAPO's dynamic sampling a batch that only fills the buffer is not a step (the
stock bar then read "Epoch 0" and "3/2"). This one shows ``RL step <global_step>/<max_steps>`` and moves only
when an optimiser step happened. Its postfix shows what a user watches during RL, the step's mean reward,
accuracy and wall time (``reward``, ``acc``, ``step_s``: the logged ``train/reward/mean``,
``train/reward/accuracy``, ``time/step_s``; :data:`POSTFIX`), instead of Lightning's logger version
(``v_num``, the W&B run id). Validation bars are Lightning's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

__all__ = ["POSTFIX", "RLStepProgressBar"]

#: progress-bar label -> logged metric shown after each RL step
POSTFIX: dict[str, str] = {
    "reward": "train/reward/mean",
    "acc": "train/reward/accuracy",
    "step_s": "time/step_s",
}


class RLStepProgressBar(TQDMProgressBar):
    """A :class:`~lightning.pytorch.callbacks.TQDMProgressBar` over optimiser steps (see module docstring).

    Args:
        postfix: label -> logged metric to show (default :data:`POSTFIX`); a metric not logged yet is left out.
        **kwargs: ``TQDMProgressBar``'s (``refresh_rate``, ...).
    """

    def __init__(self, postfix: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.postfix = dict(POSTFIX if postfix is None else postfix)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Lightning's progress-bar metrics without ``v_num``, plus the :attr:`postfix` metrics (rounded)."""
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        for label, key in self.postfix.items():
            value = trainer.callback_metrics.get(key)
            if value is not None:
                items[label] = round(float(value), 3)
        return items

    def _max_steps(self, trainer: L.Trainer) -> int | None:
        return trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        super().on_train_epoch_start(trainer)
        bar = self.train_progress_bar
        bar.reset(total=self._max_steps(trainer))
        bar.initial = 0
        bar.n = trainer.global_step  # a resumed run starts where it stopped
        bar.set_description("RL step")
        bar.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        bar = self.train_progress_bar
        if bar is None or bar.disable:
            return
        if trainer.global_step != bar.n:  # an optimiser step happened (DAPO: not on buffer-only batches)
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()
