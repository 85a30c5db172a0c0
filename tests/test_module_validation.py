"""Training-time validation without Lightning (papo.evaluation.validation.ValidationRun): which protocol and view
each generation uses, the held-out KL on the budget's rows only, what validation_step returns, and the val/*
keys (the sampled protocol's headline and per-vision-dependency keys only)."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_cfg
from papo.config import RolloutConfig, parse_group
from papo.evaluation import validation
from papo.evaluation.validation import ValidationRun
from test_eval_metrics import _batch, make_exp


def _run(overrides: list[str]) -> ValidationRun:
    cfg = compose_cfg(overrides)
    return ValidationRun(parse_group(RolloutConfig, cfg.rollout, "rollout"))


def test_protocols_views_kl_budget_and_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "attach_masked_view", lambda processor, batch, rows: True)
    run = _run(
        [
            "rollout.val_temperature=0",
            "rollout.val_samples=1",
            "rollout.val_sampled_k=4",
            "rollout.val_sampled_temperature=0.7",
            "rollout.val_kl_max_prompts=4",
        ]
    )
    calls: list[tuple[float, int, bool]] = []
    kl_rows: list[int] = []

    def generate(cfg, masked: bool):
        calls.append((cfg.temperature, cfg.num_samples, masked))
        acc = [0.0, 0.0, 0.0] if masked else [1.0, 0.0, 1.0]
        return make_exp(acc, ["count"] * 3, ["high"] * 3, texts=[f"{masked}{i}" for i in range(3)])

    def heldout_kl(rows):
        kl_rows.append(len(rows))
        return torch.full((len(rows),), 3.0), torch.ones(len(rows))

    run.reset()
    outs = [run.step(_batch(3), i, generate, heldout_kl, processor=None) for i in range(2)]
    # per batch: main protocol real then masked, then avg@4 at T 0.7 on both views
    assert calls == [(0.0, 1, False), (0.0, 1, True), (0.7, 4, False), (0.7, 4, True)] * 2
    assert kl_rows == [3, 1]  # the first 4 prompts: 3 of batch 0, 1 of batch 1
    assert [o.kl_prcp for o in outs] == [pytest.approx(3.0)] * 2
    assert outs[0].real.texts == ["False0", "False1", "False2"] and outs[0].masked.texts[0] == "True0"
    metrics = run.compute()
    assert metrics["val/acc"] == pytest.approx(2 / 3) and metrics["val/acc_masked"] == 0.0
    assert metrics["val/kl_prcp"] == pytest.approx(3.0)
    assert metrics["val/sampled/acc"] == pytest.approx(2 / 3)
    assert "val/sampled/acc_by_vd/high" in metrics
    assert not any(k.startswith("val/sampled/acc_by_task") for k in metrics)


def test_no_masked_view_no_sampled_protocol_no_kl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "attach_masked_view", lambda processor, batch, rows: True)
    run = _run(["rollout.val_sampled_k=0", "rollout.val_kl_prcp=false"])
    calls: list[bool] = []

    def generate(cfg, masked: bool):
        calls.append(masked)
        return make_exp([1.0, 0.0], ["count"] * 2, ["high"] * 2)

    def heldout_kl(rows):
        raise AssertionError("rollout.val_kl_prcp=false computes no held-out KL")

    batch = {k: v for k, v in _batch(2).items() if k != "images_masked"}
    out = run.step(batch, 0, generate, heldout_kl, processor=None)
    assert calls == [False] and out.masked is None and out.kl_prcp is None
    assert "val/kl_prcp" not in run.compute() and not any("sampled" in k for k in run.compute())
