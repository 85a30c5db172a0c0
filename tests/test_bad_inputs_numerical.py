"""Numerical faults in a real run: a non-finite loss or gradient norm skips that optimiser step with a logged
reason (``train/optim/skipped_steps``), and ``optim.max_consecutive_skips`` skips in a row stop the run with
a checkpoint it can be resumed from. Faults come from ``fault_injection.NonFiniteLoss``, a test-only loss
component added to ``loss.components``."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from papo.models.papo_module import NonFiniteTrainingError
from papo.pipeline import train

RUN = [
    "logger=csv",
    "validate_before=false",
    "validate_after=false",
    "loss=none",
    "masking=none",
    "++num_threads=1",
]


def _with_fault(cfg, **fault):
    with open_dict(cfg):
        cfg.loss.components = {"fault": {"_target_": "fault_injection.NonFiniteLoss", **fault}}
    return cfg


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "csv" / "metrics.csv").open() as f:
        return [r for r in csv.DictReader(f) if r.get("train/optim/skipped_steps")]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "reason"), [("loss", "non-finite loss in ['fault']"), ("grad", "non-finite grad norm (nan)")]
)
def test_one_non_finite_step_is_skipped_and_logged(make_cfg, tmp_path: Path, caplog, mode, reason) -> None:
    caplog.set_level(logging.WARNING)
    cfg = _with_fault(make_cfg([*RUN, "trainer.max_steps=3"]), mode=mode, calls=[2])  # 2nd update
    train(cfg)
    assert f"optimiser step skipped: {reason} (1 in a row, 1 in total" in caplog.text
    rows = _rows(tmp_path)
    assert [float(r["train/optim/skipped_steps"]) for r in rows] == [0.0, 1.0, 1.0, 1.0]  # 4 batches, 3 steps
    assert float(rows[-1]["train/optim/consecutive_skips"]) == 0.0
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 3 and state["papo"]["skipped_steps"] == 1
    weights = state["state_dict"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


@pytest.mark.slow
def test_persistent_nan_stops_with_a_resumable_checkpoint(make_cfg, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    overrides = [*RUN, "trainer.max_steps=4", "optim.max_consecutive_skips=2"]
    # progress = global_step / max_steps: from step 2 on every update is NaN (and skipped: no progress)
    cfg = _with_fault(make_cfg(overrides), mode="loss", from_progress=0.5)
    with pytest.raises(NonFiniteTrainingError, match=r"2 optimiser steps in a row skipped at step 2 "):
        train(cfg)
    assert "(2 in a row, 2 in total; optim.max_consecutive_skips=2)" in caplog.text
    saved = tmp_path / "checkpoints" / "nonfinite-step000002.ckpt"
    assert saved.exists()
    state = torch.load(saved, weights_only=True)
    assert state["global_step"] == 2 and state["papo"]["consecutive_skips"] == 2
    before = torch.load(tmp_path / "checkpoints" / "step000002.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(before[k], v) for k, v in state["state_dict"].items())  # skipped = untouched
    # the fault fixed, the run resumes from the saved state and finishes
    cfg = make_cfg([*overrides, f"ckpt_path={saved}"])
    train(cfg)
    final = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == 4 and final["papo"]["skipped_steps"] == 2
