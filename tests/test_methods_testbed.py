"""The shortcut testbed's ``shortcut`` label travels from the dataset rows through the datamodule, the rollout
and the experience to the validation metrics, which report accuracy and vision gap on shortcut-consistent and
shortcut-breaking rows separately; datasets without the column carry no such key."""

from __future__ import annotations

import csv

import pytest
import torch
from omegaconf import OmegaConf

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


# ---------------------------------------------------------------------------------------------- the comparison


TESTBED_ARMS = ("grpo", "papo_g", "vppo", "noisyrollout", "sft_calibration")


def test_the_comparison_preset_runs_every_arm_on_the_testbed_at_matched_settings() -> None:
    from conftest import compose_cfg
    from papo.config_validation import validate_config

    shared = set()
    for arm in TESTBED_ARMS:
        cfg = compose_cfg(["reproduce=testbed", f"experiment=repro/{arm}", "seed=3"])
        validate_config(cfg)
        assert cfg.data.dataset_name == "shortcut" and cfg.repro.arm == arm
        assert list(cfg.repro.difference_keys) == ["acc_vd_high", "acc", "vision_gap"]
        # matched RL compute and the same validation view for every arm
        shared.add(
            (
                cfg.algo.name,
                cfg.algo.group_size,
                cfg.data.batch_size,
                cfg.trainer.max_steps,
                cfg.masking.mask_prob,
            )
        )
        assert cfg.hydra.sweep.dir.endswith("reproduce_testbed") and cfg.hydra.sweep.subdir == f"{arm}/seed3"
    assert len(shared) == 1
    assert compose_cfg(["reproduce=testbed", "experiment=repro/vppo"]).advantage_shaping.beta_min == 0.9
    seeds = compose_cfg(["reproduce=testbed", "experiment=repro/grpo"]).hydra.sweeper.params.seed
    assert len(str(seeds).split(",")) >= 5


def test_the_report_gives_paired_differences_on_the_three_keys(tmp_path) -> None:
    from test_reproduce import _fake_run, _load_script

    rr = _load_script("repro_report")
    keys = ["acc_vd_high", "acc", "vision_gap"]
    for seed in range(3):
        for arm, acc in (("grpo", 0.5), ("vppo", 0.6 + 0.01 * seed)):
            d = _fake_run(tmp_path, arm, seed, acc, 0.3)
            cfg = OmegaConf.load(d / ".hydra" / "config.yaml")
            cfg.repro.difference_keys = keys  # what configs/reproduce/testbed.yaml sets
            OmegaConf.save(cfg, d / ".hydra" / "config.yaml")
    md = rr.report(tmp_path)
    diffs = {(d["a"], d["b"], d["metric"]): d for d in csv.DictReader((tmp_path / "differences.csv").open())}
    assert {k[2] for k in diffs if k[:2] == ("vppo", "grpo")} == set(keys)
    # _fake_run: acc_vd_high = acc - 0.1 and vision gap = acc - 0.3, so all three differ by 0.11 on average
    for key in keys:
        assert float(diffs[("vppo", "grpo", key)]["mean"]) == pytest.approx(0.11)
    assert "| vppo - grpo | VPPO vs GRPO | vision_gap | 3 |" in md


def test_one_command_runs_the_comparison_without_a_re_evaluation_stage(capsys) -> None:
    from test_reproduce import _load_script

    _load_script("repro_report")
    wrapper = _load_script("reproduce")
    assert wrapper.main(["--preset", "testbed", "--dry-run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and all("reproduce=testbed" in line for line in printed[:2])
    assert "experiment=repro/sft_continued" in printed[1] and printed[2].endswith("logs/reproduce_testbed")
    with pytest.raises(SystemExit, match="valid"):
        wrapper.main(["--preset", "nope", "--dry-run"])
