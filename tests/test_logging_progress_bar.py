"""The RL progress bar's postfix: reward, accuracy and step time, not the logger's version (v_num)."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from papo.callbacks.progress_bar import POSTFIX, RLStepProgressBar


class _LogsRLMetrics(L.LightningModule):
    """Logs the RL module's keys (train/reward/mean, train/reward/accuracy, time/step_s) every step."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx: int) -> None:
        step = float(self.global_step)  # before the optimiser step increments it
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(self.layer(batch).pow(2).mean())
        opt.step()
        metrics = {"train/reward/mean": 0.5 + step, "train/reward/accuracy": 0.25, "time/step_s": 1.23456}
        self.log_dict(metrics, on_step=True)
        self.log("reward", 0.5 + step, prog_bar=True, on_step=True, logger=False)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(16, 2), batch_size=4)


def test_postfix_shows_reward_accuracy_and_step_time_not_v_num(tmp_path) -> None:
    bar = RLStepProgressBar()
    trainer = L.Trainer(
        max_steps=2,
        max_epochs=-1,
        callbacks=[bar],
        logger=CSVLogger(tmp_path),  # a logger with a version: Lightning's bar would show v_num=0
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    module = _LogsRLMetrics()
    trainer.fit(module)
    assert trainer.loggers and trainer.logger.version == 0
    metrics = bar.get_metrics(trainer, module)
    assert metrics == {"reward": 1.5, "acc": 0.25, "step_s": 1.235}
    postfix = bar.train_progress_bar.postfix
    assert "v_num" not in postfix and "acc=0.25" in postfix and "step_s=1.2" in postfix
    assert set(POSTFIX) == {"reward", "acc", "step_s"}


def test_postfix_is_configurable_and_skips_metrics_not_logged(tmp_path) -> None:
    from conftest import compose_cfg

    assert dict(compose_cfg([]).callbacks.progress_bar.postfix) == POSTFIX
    bar = RLStepProgressBar(postfix={"kl": "train/perception_kl/kl"})
    trainer = L.Trainer(
        max_steps=1,
        max_epochs=-1,
        callbacks=[bar],
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    module = _LogsRLMetrics()
    trainer.fit(module)
    assert bar.get_metrics(trainer, module) == {"reward": 0.5}  # the module's prog_bar metric only
