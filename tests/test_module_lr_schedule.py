"""Learning-rate schedules from config (``optim.scheduler``: a ``_partial_`` target of ``transformers.get_scheduler``):
the LR of each optimiser step for constant, constant with warm-up (the published schedule, warm-up 0), linear
and cosine decay after a warm-up; a scheduler rebuilt from config and loaded from a checkpoint's state continues
with the LRs of an uninterrupted one; an unknown name is a config error naming the valid ones. The SIGKILL
resume test (tests/test_resume.py, DAPO variant) runs the cosine schedule through a resume."""

from __future__ import annotations

import math

import hydra
import pytest
import torch

from conftest import compose_cfg
from papo.config import ConfigError, validate_config

LR, WARMUP, STEPS = 1e-3, 2, 6


def _scheduler(name: str, warmup: int = WARMUP):
    cfg = compose_cfg(
        [
            f"optim.scheduler.name={name}",
            f"optim.warmup_steps={warmup}",
            f"optim.lr={LR}",
            f"trainer.max_steps={STEPS}",
        ]
    )
    param = torch.nn.Parameter(torch.zeros(2))
    opt = hydra.utils.instantiate(cfg.optim.optimizer)([param])
    return opt, hydra.utils.instantiate(cfg.optim.scheduler)(optimizer=opt)


def _lrs(opt, sched, steps: int) -> list[float]:
    """The LR each of ``steps`` optimiser steps runs with (the module steps the scheduler after each one)."""
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def _cosine(step: int) -> float:
    if step < WARMUP:
        return LR * step / WARMUP
    progress = (step - WARMUP) / (STEPS - WARMUP)
    return LR * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("constant", [LR] * STEPS),
        ("constant_with_warmup", [0.0, LR / 2] + [LR] * (STEPS - 2)),
        ("linear", [0.0, LR / 2] + [LR * (STEPS - s) / (STEPS - WARMUP) for s in range(WARMUP, STEPS)]),
        ("cosine", [_cosine(s) for s in range(STEPS)]),
    ],
)
def test_schedule_lrs_per_step(name: str, expected: list[float]) -> None:
    opt, sched = _scheduler(name)
    assert _lrs(opt, sched, STEPS) == pytest.approx(expected, abs=1e-12)


def test_published_schedule_is_constant_without_warmup() -> None:
    opt, sched = _scheduler("constant_with_warmup", warmup=0)  # configs/train.yaml's defaults
    assert _lrs(opt, sched, 3) == [LR] * 3


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedule_resumes_from_its_state(name: str) -> None:
    opt, sched = _scheduler(name)
    full = _lrs(opt, sched, STEPS)
    opt, sched = _scheduler(name)
    _lrs(opt, sched, 3)
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    opt2, sched2 = _scheduler(name)  # a new process: rebuilt from config, then loaded
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert _lrs(opt2, sched2, STEPS - 3) == full[3:]


def test_unknown_schedule_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(compose_cfg(["optim.scheduler.name=warmup_stable_decay"]))
    line = str(err.value)
    assert "optim.scheduler.name='warmup_stable_decay'" in line
    assert all(n in line for n in ("constant", "constant_with_warmup", "linear", "cosine"))
