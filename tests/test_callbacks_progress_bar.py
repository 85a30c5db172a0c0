"""The RL progress bar counts optimiser steps out of max_steps, not the batches of an epoch."""

from __future__ import annotations

import lightning as L
import torch

from papo.callbacks.progress_bar import RLStepProgressBar


class _EveryOtherBatchSteps(L.LightningModule):
    """Manual optimisation that steps only on odd batches (like DAPO batches that only fill its buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx: int) -> None:
        if batch_idx % 2 == 0:
            return
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(self.layer(batch).pow(2).mean())
        opt.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(64, 2), batch_size=4)


class _Spy(RLStepProgressBar):
    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        super().on_train_batch_end(trainer, pl_module, *args)
        self.seen.append((trainer.global_step, self.train_progress_bar.n, self.train_progress_bar.total))


def test_bar_counts_optimiser_steps_out_of_max_steps(tmp_path) -> None:
    bar = _Spy()
    bar.seen = []
    trainer = L.Trainer(
        max_steps=3,
        max_epochs=-1,
        callbacks=[bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(_EveryOtherBatchSteps())
    assert trainer.global_step == 3
    # 6 batches for 3 steps: the bar follows global_step (0, 1, 1, 2, 2, 3 would be batch counts 1..6)
    assert [n for _, n, _ in bar.seen] == [step for step, _, _ in bar.seen] == [0, 1, 1, 2, 2, 3]
    assert {total for _, _, total in bar.seen} == {3}
    assert bar.train_progress_bar.desc.startswith("RL step")
