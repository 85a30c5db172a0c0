"""Every algo and every loss config trains 2 RL steps with finite losses, a non-zero gradient reaching the
parameters and the metric keys its terms must log; the masked branch carries gradient only when
``mask_branch_grad=true`` (also with the double entropy alone)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from conftest import compose_cfg
from papo.pipeline import train

ALGOS = sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "algo").glob("*.yaml"))
LOSSES = sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "loss").glob("*.yaml"))
FAST = ["logger=csv", "validate_before=false", "validate_after=false"]


#: reward.name=coin: the fair-coin test reward of conftest.py
pytestmark = pytest.mark.usefixtures("coin_reward")


def _step_rows(out: Path) -> list[dict[str, float]]:
    """The CSV rows of the RL updates (those with a total loss), as floats. A dynamic-sampling round without an
    update logs its rollout metrics in a row of its own, where Lightning repeats the last update's values:
    such repeats (same loss, grad norm and step time) are dropped."""
    with (out / "csv" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss/total") not in ("", None)]
    rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in rows]
    same = ("train/loss/total", "train/grad_norm", "time/step_s")
    return [r for i, r in enumerate(rows) if i == 0 or any(r[k] != rows[i - 1][k] for k in same)]


def _expected_keys(overrides: list[str]) -> tuple[set[str], set[str]]:
    """(keys every step must log, keys it must not log) for the composed config's active terms."""
    cfg = compose_cfg(overrides)
    present = {
        "train/pg/loss",
        "train/pg/clipfrac",
        "train/pg/approx_kl",
        "train/grad_norm",
        "train/loss/total",
    }
    absent = set()
    (present if cfg.algo.kl_coef > 0 else absent).add("train/ref_kl/kl")
    if cfg.algo.dynamic_sampling.enabled:
        present |= {"train/dynamic_sampling/kept_fraction", "train/dynamic_sampling/tries"}
    comps = cfg.loss.get("components") or {}
    gamma, etas = (
        float(cfg.loss.get("gamma", 0)),
        float(cfg.loss.get("eta_real", 0)) + float(cfg.loss.get("eta_masked", 0)),
    )
    pkl = {"train/perception_kl/kl", "train/perception_kl/gamma", "train/perception_kl/kl_token_max"}
    ent = {"train/double_entropy/entropy_real", "train/double_entropy/entropy_masked"}
    (present if "perception_kl" in comps and gamma > 0 else absent).update(pkl)
    (present if "double_entropy" in comps and etas > 0 else absent).update(ent)
    # PAPO's perception term built from the method blocks (loss=papo_blocks), and a plain entropy term
    signal = {"train/perception_signal/signal", "train/perception_signal/gamma"}
    (present if "perception_signal" in comps and gamma > 0 else absent).update(signal)
    entropy_coef = float(cfg.loss.get("entropy_coef", 0))
    (present if "entropy" in comps and entropy_coef != 0 else absent).add("train/entropy/entropy")
    masked = ("perception_kl" in comps and gamma > 0) or ("double_entropy" in comps and etas > 0)
    masked = masked or ("perception_signal" in comps and gamma > 0)
    (present if masked else absent).add("train/response/entropy_masked")
    return present, absent


def _check_steps(out: Path, overrides: list[str]) -> None:
    rows = _step_rows(out)
    assert len(rows) == 2, "two RL steps"
    present, absent = _expected_keys(overrides)
    for row in rows:
        assert present <= set(row), f"not logged: {sorted(present - set(row))}"
        assert not absent & set(row), f"logged for an inactive term: {sorted(absent & set(row))}"
        assert all(math.isfinite(v) for k, v in row.items() if k.startswith("train/")), row
        assert row["train/grad_norm"] > 0, "no gradient reached the parameters"


@pytest.mark.slow
@pytest.mark.parametrize("algo", ALGOS)
def test_every_algo_trains_two_steps(make_cfg, tmp_path: Path, algo: str) -> None:
    # a barely warm-started tiny model almost never solves a group, which DAPO's dynamic sampling would
    # (rightly) reject batch after batch: the coin reward gives every group mixed outcomes
    overrides = [f"algo={algo}", "loss=papo", "reward.name=coin"]
    train(make_cfg([*overrides, *FAST]))
    _check_steps(tmp_path, overrides)


@pytest.mark.slow
@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_two_steps(make_cfg, tmp_path: Path, loss: str) -> None:
    extra = ["masking=none"] if loss == "none" else []
    overrides = ["algo=grpo", f"loss={loss}", "reward.name=coin", *extra]
    train(make_cfg([*overrides, *FAST]))
    _check_steps(tmp_path, overrides)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("loss", "key", "grad"),
    [
        ("papo_d", "loss.components.perception_kl.mask_branch_grad", False),
        ("papo_d", "loss.components.perception_kl.mask_branch_grad", True),
        # the double entropy alone (gamma 0): eta_masked * H_masked trains only through its own flag
        ("double_entropy", "loss.mask_branch_grad", True),
    ],
)
def test_masked_branch_gradient_only_when_asked(
    make_cfg, monkeypatch: pytest.MonkeyPatch, loss: str, key: str, grad: bool
) -> None:
    from papo.rollout.experience_source import ExperienceSource

    calls: list[tuple[bool, bool]] = []  # (masked view?, grad enabled?)
    original = ExperienceSource.logps

    def spy(self, model, exp, masked=False):
        out = original(self, model, exp, masked)
        calls.append((masked, torch.is_grad_enabled() and out.requires_grad))
        return out

    monkeypatch.setattr(ExperienceSource, "logps", spy)
    cfg = make_cfg([f"loss={loss}", f"{key}={str(grad).lower()}", *FAST])
    train(cfg)
    masked_calls = [g for m, g in calls if m]
    assert masked_calls, "the masked forward never ran"
    if grad:
        assert any(masked_calls), "mask_branch_grad=true must recompute the masked branch with gradient"
    else:
        assert not any(masked_calls), "detached masked branch (released code) must never carry gradient"
