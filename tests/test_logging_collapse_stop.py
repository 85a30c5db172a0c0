"""After the collapse detector stops a run, no validation runs when the run says validate_after=false
(Lightning's fit loop validates whenever trainer.should_stop ends training early)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from papo.callbacks.collapse_detector import CollapseDetectorCallback, CollapseReport


class _CountsValidation(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.layer = torch.nn.Linear(2, 1)
        self.val_batches = 0

    def training_step(self, batch, batch_idx: int) -> None:
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(self.layer(batch).pow(2).mean())
        opt.step()

    def validation_step(self, batch, batch_idx: int) -> None:
        self.val_batches += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(256, 2), batch_size=4)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(12, 2), batch_size=4)


def _triggers_at(step: int):
    def update(log_step: int, metrics) -> CollapseReport:
        hit = log_step == step
        return CollapseReport(log_step, 4 if hit else 0, hit, hit, reason="forced" if hit else "")

    return update


@pytest.mark.parametrize(("validate_on_stop", "val_batches"), [(True, 3), (False, 0)])
def test_stop_validation_follows_validate_after(tmp_path, validate_on_stop: bool, val_batches: int) -> None:
    callback = CollapseDetectorCallback(
        dirpath=str(tmp_path), stop_on_collapse=True, log_metrics=False, validate_on_stop=validate_on_stop
    )
    callback.detector.update = _triggers_at(3)
    trainer = L.Trainer(
        max_steps=50,
        max_epochs=-1,
        val_check_interval=40,  # no scheduled validation before the stop
        num_sanity_val_steps=0,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    module = _CountsValidation()
    trainer.fit(module)
    assert trainer.global_step == 4 and (tmp_path / "collapse.txt").read_text() == "forced\n"
    assert module.val_batches == val_batches  # True: Lightning's full validation (3 batches) after the stop


def test_config_passes_validate_after() -> None:
    from conftest import compose_cfg

    assert compose_cfg([]).callbacks.collapse_detector.validate_on_stop is True
    assert compose_cfg(["validate_after=false"]).callbacks.collapse_detector.validate_on_stop is False
