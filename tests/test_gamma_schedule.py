"""The gamma schedule (papo.losses.base.GammaSchedule, the released kl_prcp_schedule): from gamma_start to
gamma_end over a fraction of training, both entropy coefficients scaled by the released ratio gamma(t) / gamma,
one progress value per rollout batch (the released controller steps once per rollout step)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from papo.losses.base import GammaSchedule, LossInputs
from papo.losses.double_entropy import DoubleEntropyLoss
from papo.losses.perception_kl import PerceptionKLLoss


def test_fixed_schedule_keeps_gamma() -> None:
    s = GammaSchedule(0.02)
    assert [s.gamma_at(p) for p in (0.0, 0.5, 1.0)] == [0.02] * 3
    assert [s.entropy_factor(p) for p in (0.0, 1.0)] == [1.0, 1.0]


def test_linear_default_anneals_gamma_to_zero_over_the_fraction() -> None:
    s = GammaSchedule(0.02, "linear", anneal_fraction=0.5)
    assert [s.gamma_at(p) for p in (0.0, 0.25, 0.5, 0.9)] == pytest.approx([0.02, 0.01, 0.0, 0.0])
    assert [s.entropy_factor(p) for p in (0.0, 0.25, 0.5)] == pytest.approx([1.0, 0.5, 0.0])


def test_start_and_end_values_and_the_released_entropy_ratio() -> None:
    # a PAPO-G run (gamma 0.02) with the released config's start value 1e-2 and an end value 0.002:
    # gamma(t) = 0.01 + (0.002 - 0.01) * min(t / 0.5, 1); the entropy ratio is gamma(t) / 0.02
    s = GammaSchedule(0.02, "linear", start=0.01, end=0.002, anneal_fraction=0.5)
    assert [s.gamma_at(p) for p in (0.0, 0.25, 0.5, 1.0)] == pytest.approx([0.01, 0.006, 0.002, 0.002])
    assert [s.entropy_factor(p) for p in (0.0, 0.25, 0.5)] == pytest.approx([0.5, 0.3, 0.1])
    # rising schedules work too
    up = GammaSchedule(0.01, "linear", start=0.0, end=0.02, anneal_fraction=1.0)
    assert up.gamma_at(0.5) == pytest.approx(0.01) and up.entropy_factor(0.5) == pytest.approx(1.0)


def test_without_the_perception_kl_the_entropy_coefficients_are_not_scaled() -> None:
    assert GammaSchedule(0.0, "linear", start=0.01).entropy_factor(0.25) == 1.0


def test_bad_schedules_are_refused() -> None:
    with pytest.raises(ValueError, match=r"valid: \['fixed', 'linear'\]"):
        GammaSchedule(0.02, "cosine")
    with pytest.raises(ValueError, match="anneal_fraction"):
        GammaSchedule(0.02, "linear", anneal_fraction=0.0)


def test_components_apply_the_schedule() -> None:
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    inputs = LossInputs(
        logps=logps,
        old_logps=logps.detach(),
        advantages=torch.zeros(1, 2),
        response_mask=torch.ones(1, 2),
        logps_masked=torch.tensor([[-2.0, -2.0]]),
        progress=0.25,
    )
    kw = {"schedule": "linear", "gamma_start": 0.01, "gamma_end": 0.002, "anneal_fraction": 0.5}
    pkl = PerceptionKLLoss(gamma=0.02, **kw)
    loss, m = pkl(inputs)
    assert m["gamma"] == pytest.approx(0.006) and loss.item() == pytest.approx(-0.006 * m["kl"])
    ent = DoubleEntropyLoss(eta_real=0.05, eta_masked=0.03, gamma=0.02, **kw)
    loss, m = ent(inputs)
    assert (m["eta_real"], m["eta_masked"]) == (pytest.approx(0.015), pytest.approx(0.009))  # x 0.3
    assert loss.item() == pytest.approx(0.015 * 1.5 + 0.009 * 2.0)  # H_real 1.5, H_masked 2.0


def test_config_wires_start_and_end_into_both_components() -> None:
    from hydra.utils import instantiate

    from conftest import compose_cfg

    cfg = compose_cfg(
        ["loss=papo_d", "loss.schedule=linear", "loss.gamma_start=0.03", "loss.gamma_end=0.005"]
    )
    comps = {name: instantiate(c) for name, c in cfg.loss.components.items()}
    for comp in comps.values():
        assert (comp.schedule.gamma, comp.schedule.start, comp.schedule.end) == (0.01, 0.03, 0.005)
    assert compose_cfg([]).loss.components.perception_kl.gamma_start is None  # null = start at gamma


@pytest.mark.slow
def test_gamma_is_constant_within_a_rollout_batch(make_cfg, tmp_path: Path) -> None:
    """2 rollout batches of 2 optimiser steps each: gamma follows the rollout batch (progress 0, then 1/2),
    as the released controller; a per-optimiser-step progress would log 0.0175 and 0.0075."""
    from papo.pipeline import train

    schedule = ["loss.schedule=linear", "loss.anneal_fraction=1.0", "loss.gamma=0.02"]
    fast = ["logger=csv", "validate_before=false", "validate_after=false", "trainer.max_steps=4"]
    train(make_cfg(["loss=papo", "algo=grpo", "algo.kl_coef=0", "algo.num_minibatches=2", *schedule, *fast]))
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        gammas = [
            float(r["train/perception_kl/gamma"])
            for r in csv.DictReader(f)
            if r.get("train/perception_kl/gamma")
        ]
    assert gammas == pytest.approx([0.02, 0.01])


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("loss.gamma_start=-0.01", r"loss\.gamma_start=-0\.01 must be"),
        ("loss.gamma_end=-1", r"loss\.gamma_end=-1 must be"),
        ("loss.components.perception_kl.top_fraction_scope=row", r"top_fraction_scope='row' is unknown"),
        ("algo.dynamic_sampling.batch_prompts=0", r"algo\.dynamic_sampling\.batch_prompts=0 must be"),
    ],
)
def test_new_keys_are_validated_with_their_name(override: str, needle: str) -> None:
    from conftest import compose_cfg
    from papo.config_validation import ConfigError, validate_config

    with pytest.raises(ConfigError, match=needle):
        validate_config(compose_cfg(["loss=papo_d", override]))
