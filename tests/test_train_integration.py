"""Integration: the real pipeline (tiny VLM, warm start, rollouts, update, validation) for a few steps on
CPU. Asserts that the loss moved the parameters (weight decay off, so nothing else can), every active loss term
was logged, no masked forward runs when no term needs it, and outputs were written."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from conftest import spy_module
from papo.pipeline import train


def _metrics_rows(out: Path) -> list[dict[str, str]]:
    path = out / "csv" / "metrics.csv"
    assert path.exists(), f"no CSV log at {path}"
    with path.open() as f:
        return list(csv.DictReader(f))


def _logged_keys(rows: list[dict[str, str]]) -> set[str]:
    return {k for r in rows for k, v in r.items() if v not in ("", None)}


@pytest.mark.slow
def test_papo_trains_and_logs_every_term(make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # weight decay 0: AdamW's decay alone would change every weight, with or without a gradient
    cfg = make_cfg(["loss=papo_d", "algo=grpo", "logger=csv", "optim.weight_decay=0"])
    captured = spy_module(monkeypatch)
    metrics = train(cfg)
    module = captured["module"]
    changed = [
        k for k, v in module.policy.named_parameters() if not torch.equal(v.detach(), captured["before"][k])
    ]
    assert len(changed) > 0.5 * len(captured["before"]), "most parameters should change after 2 RL steps"
    rows = _metrics_rows(tmp_path)
    norms = [float(r["train/grad_norm"]) for r in rows if r.get("train/grad_norm") not in ("", None)]
    assert len(norms) == 2 and all(n > 0 for n in norms), f"the loss must reach the parameters: {norms}"
    keys = _logged_keys(rows)
    for key in [
        "train/pg/loss",
        "train/pg/clipfrac_high",
        "train/ref_kl/kl",
        "train/perception_kl/kl",
        "train/perception_kl/kl_token_max",
        "train/double_entropy/entropy_real",
        "train/double_entropy/entropy_masked",
        "train/reward/mean",
        "train/reward/accuracy",
        "train/grad_norm",
        "time/generate_s",
        "perf/tokens_per_s",
        "val/acc",
        "val/acc_masked",
        "val/sampled/acc",
        "val/sampled/acc_masked",
    ]:
        assert key in keys, f"{key} was not logged; logged: {sorted(keys)}"
    assert "val/acc" in metrics and "before/val/acc" in metrics
    assert (tmp_path / "val_before_after.txt").exists()
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_grpo_baseline_runs_without_masked_forward(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """loss=none with GRPO: the batches carry masked images but no term needs them, so no masked forward runs
    (counted by a spy on the module's log-prob pass) and nothing masked is logged; the reference KL (GRPO) is."""
    from papo.rollout.experience_source import ExperienceSource

    calls: list[bool] = []  # masked view?
    original = ExperienceSource.logps

    def spy(self, model, exp, masked=False):
        calls.append(masked)
        return original(self, model, exp, masked)

    monkeypatch.setattr(ExperienceSource, "logps", spy)
    # masked views are in every batch (masking=random_patch), but no active term needs them
    cfg = make_cfg(["loss=none", "algo=grpo", "logger=csv", "validate_before=false", "validate_after=false"])
    assert cfg.algo.kl_coef > 0 and cfg.masking._target_.endswith("RandomPatchMask")
    train(cfg)
    assert calls and not any(calls), f"{sum(calls)} masked forwards of {len(calls)} log-prob passes"
    keys = _logged_keys(_metrics_rows(tmp_path))
    assert "train/pg/loss" in keys and "train/ref_kl/kl" in keys
    assert "train/response/entropy_masked" not in keys
    assert not any(k.startswith(("train/perception_kl", "train/double_entropy")) for k in keys)


@pytest.mark.slow
def test_final_validation_runs_once_when_the_trainer_validated_the_last_step(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """val_check_interval = max_steps: the fit's validation at the last step is the 'after' one (not twice)."""
    from papo.models import papo_module

    calls: list[tuple[str, int]] = []
    original = papo_module.PapoModule.on_validation_epoch_end

    def spy(self):
        original(self)
        calls.append((self.trainer.state.fn.value, self.global_step))

    monkeypatch.setattr(papo_module.PapoModule, "on_validation_epoch_end", spy)
    cfg = make_cfg(["loss=none", "algo=dapo", "algo.dynamic_sampling.enabled=false", "masking=none"])
    cfg.trainer.val_check_interval = 2  # = max_steps
    cfg.trainer.check_val_every_n_epoch = None
    metrics = train(cfg)
    assert calls == [("validate", 0), ("fit", 2)]  # before RL, then once at the final step
    assert "val/acc" in metrics and "before/val/acc" in metrics


@pytest.mark.slow
def test_default_papo_logs_both_entropies_and_pools_kl_token_stats(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Default config (PAPO-G: gamma 0.02, no double entropy) with 4 micro-batches per step: the masked
    branch's entropy is logged although the double-entropy term is off, and the per-token KL_prcp stats
    are those of ALL the step's tokens (max of maxima, pooled variance), not averages over micro-batches."""
    from papo.algos import kl_estimate
    from papo.losses import perception_kl as pkl_module

    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    original = pkl_module.perception_kl

    def spy(logps, logps_masked, mask, *args, **kwargs):
        seen.append((logps.detach().clone(), logps_masked.detach().clone(), mask.detach().clone()))
        return original(logps, logps_masked, mask, *args, **kwargs)

    monkeypatch.setattr(pkl_module, "perception_kl", spy)
    fast = ["logger=csv", "validate_before=false", "validate_after=false", "trainer.max_steps=1"]
    cfg = make_cfg([*fast, "algo.micro_batch_size=4"])  # 16 responses -> 4 micro-batches
    assert cfg.loss.name == "papo" and cfg.algo.name == "grpo" and cfg.loss.eta_masked == 0
    train(cfg)
    rows = [r for r in _metrics_rows(tmp_path) if r.get("train/perception_kl/kl_token_max")]
    assert len(rows) == 1 and len(seen) == 4
    row = {k: float(v) for k, v in rows[0].items() if v not in ("", None)}
    assert "train/double_entropy/entropy_masked" not in row  # the term is off ...
    # ... but both branches' entropies are logged (sampled-token surrogate over all response tokens)
    real = torch.cat([-lp[m > 0] for lp, _, m in seen])
    masked = torch.cat([-lm[m > 0] for _, lm, m in seen])
    assert row["train/response/entropy"] == pytest.approx(float(real.mean()), rel=1e-4)
    assert row["train/response/entropy_masked"] == pytest.approx(float(masked.mean()), rel=1e-4)
    per_token = torch.cat([kl_estimate(lp, lm, "k3")[m > 0] for lp, lm, m in seen])
    assert row["train/perception_kl/kl_token_mean"] == pytest.approx(float(per_token.mean()), rel=1e-4)
    assert row["train/perception_kl/kl_token_max"] == pytest.approx(float(per_token.max()), rel=1e-4)
    assert row["train/perception_kl/kl_token_var"] == pytest.approx(float(per_token.var()), rel=1e-3)
