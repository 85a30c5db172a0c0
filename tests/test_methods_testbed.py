"""The shortcut testbed's ``shortcut`` label travels from the dataset rows through the datamodule, the rollout
and the experience to the validation metrics, which report accuracy and vision gap on shortcut-consistent and
shortcut-breaking rows separately; datasets without the column carry no such key."""

from __future__ import annotations

import torch

from papo.data.datamodule import BATCH_KEYS, PapoDataModule
from papo.data.masking import RandomPatchMask
from papo.data.shortcut import build_shortcut_split
from papo.data.synthetic import build_synthetic_split
from papo.evaluation.metrics import ValidationMetrics
from papo.pipeline import train
from papo.rollout.experience import Experience


def test_the_batch_carries_the_label_only_when_the_dataset_declares_it() -> None:
    ds = build_shortcut_split("val", 8, seed=0, shortcut_rate=0.5)
    dm = PapoDataModule(val_dataset=ds, masking=RandomPatchMask(), val_batch_size=8)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["shortcut"] == ds["shortcut"]
    plain = PapoDataModule(
        val_dataset=build_synthetic_split("val", 4, seed=0), masking=None, val_batch_size=4
    )
    plain.setup("validate")
    assert tuple(next(iter(plain.val_dataloader()))) == BATCH_KEYS


def _exp(labels: list[str] | None, acc: list[float]) -> Experience:
    n = len(acc)
    return Experience(
        prompt_ids=torch.zeros(n, 2, dtype=torch.long),
        prompt_mask=torch.ones(n, 2),
        response_ids=torch.zeros(n, 1, dtype=torch.long),
        response_mask=torch.ones(n, 1),
        group_ids=torch.arange(n),
        rewards=torch.tensor(acc),
        accuracy=torch.tensor(acc),
        format=torch.ones(n),
        visual=[None] * n,
        task_type=["count"] * n,
        vision_dependency=["low"] * n,
        texts=[""] * n,
        shortcut=labels,
    )


def test_experience_keeps_the_label_through_select_and_cat() -> None:
    a, b = _exp(["consistent", "breaking"], [1.0, 0.0]), _exp(["breaking"], [1.0])
    assert Experience.cat([a, b]).shortcut == ["consistent", "breaking", "breaking"]
    assert a.select([1]).shortcut == ["breaking"]
    assert Experience.cat([a, _exp(None, [1.0])]).shortcut is None  # a batch without labels: none
    metrics = ValidationMetrics()
    metrics.update(Experience.cat([a, b]), masked=False)
    metrics.update(_exp(["consistent", "breaking", "breaking"], [1.0, 0.0, 0.0]), masked=True)
    out = metrics.compute()
    assert out["val/acc_by_shortcut/breaking"] == 0.5 and out["val/acc_by_shortcut/consistent"] == 1.0
    assert out["val/vision_gap_by_shortcut/breaking"] == 0.5


def test_validation_reports_shortcut_consistent_and_breaking_rows(make_cfg) -> None:
    cfg = make_cfg(
        [
            "data=shortcut",
            "data.val_dataset.size=8",
            "trainer.max_steps=1",
            "logger=csv",
            "validate_after=false",
            "rollout.val_sampled_k=0",
        ]
    )
    metrics = train(cfg)
    for label in ("consistent", "breaking"):
        for key in ("acc_by_shortcut", "acc_masked_by_shortcut", "vision_gap_by_shortcut"):
            assert f"before/val/{key}/{label}" in metrics
