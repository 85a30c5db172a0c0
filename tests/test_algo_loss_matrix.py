"""Every algo and every loss config composes and trains 2 RL steps (issue 3 acceptance), and the
masked branch carries gradient only when ``mask_branch_grad=true``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from papo.pipeline import train

ALGOS = sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "algo").glob("*.yaml"))
LOSSES = sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "loss").glob("*.yaml"))
FAST = ["logger=csv", "validate_before=false", "validate_after=false"]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ALGOS)
def test_every_algo_trains_two_steps(make_cfg, algo: str) -> None:
    # DAPO's dynamic sampling may legitimately need several rollout batches; give it room.
    cfg = make_cfg([f"algo={algo}", "loss=papo", *FAST, "algo.dynamic_sampling.max_tries=50"])
    train(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_two_steps(make_cfg, loss: str) -> None:
    extra = ["masking=none"] if loss == "none" else []
    train(make_cfg(["algo=grpo", f"loss={loss}", *FAST, *extra]))


@pytest.mark.slow
@pytest.mark.parametrize("grad", [False, True])
def test_masked_branch_gradient_only_when_asked(
    make_cfg, monkeypatch: pytest.MonkeyPatch, grad: bool
) -> None:
    from papo.models import papo_module

    calls: list[tuple[bool, bool]] = []  # (masked view?, grad enabled?)
    original = papo_module.PapoModule._logps

    def spy(self, model, exp, masked=False):
        out = original(self, model, exp, masked)
        calls.append((masked, torch.is_grad_enabled() and out.requires_grad))
        return out

    monkeypatch.setattr(papo_module.PapoModule, "_logps", spy)
    cfg = make_cfg(
        ["loss=papo_d", f"loss.components.perception_kl.mask_branch_grad={str(grad).lower()}", *FAST]
    )
    train(cfg)
    masked_calls = [g for m, g in calls if m]
    assert masked_calls, "the masked forward never ran"
    if grad:
        assert any(masked_calls), "mask_branch_grad=true must recompute the masked branch with gradient"
    else:
        assert not any(masked_calls), "detached masked branch (released code) must never carry gradient"
