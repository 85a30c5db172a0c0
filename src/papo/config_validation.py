"""Early, one-line-per-problem validation of the composed config (before any model loads).

Unknown registry names list the valid ones; out-of-range values name the key and the allowed range;
combinations the paper did not use are warnings.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from papo.algos import ADVANTAGE_ESTIMATORS, AGG_MODES, KL_ESTIMATORS, POLICY_LOSSES

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config value is invalid; the message names the key and the allowed values."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError on the first invalid value; warn on unusual but legal combinations."""
    a = cfg.algo
    for key, reg in (
        ("advantage", ADVANTAGE_ESTIMATORS),
        ("policy_loss", POLICY_LOSSES),
        ("kl_estimator", KL_ESTIMATORS),
    ):
        _check(a[key] in reg.names(), f"algo.{key}={a[key]!r} is unknown; valid: {sorted(reg.names())}")
    _check(a.agg_mode in AGG_MODES, f"algo.agg_mode={a.agg_mode!r} is unknown; valid: {list(AGG_MODES)}")
    _check(
        a.group_size >= 2 or a.advantage not in ("grpo", "rloo", "dr_grpo"),
        f"algo.group_size={a.group_size}: group-normalised advantages need >= 2 responses per prompt",
    )
    _check(0 <= a.clip_low < 1, f"algo.clip_low={a.clip_low} must be in [0, 1)")
    _check(a.clip_high >= 0, f"algo.clip_high={a.clip_high} must be >= 0")
    _check(a.dual_clip is None or a.dual_clip > 1, f"algo.dual_clip={a.dual_clip} must be > 1 or null")
    _check(a.kl_coef >= 0, f"algo.kl_coef={a.kl_coef} must be >= 0")
    _check(a.kl_in in ("loss", "reward"), f"algo.kl_in={a.kl_in!r}; valid: ['loss', 'reward']")
    _check(
        a.ppo_epochs >= 1 and a.num_minibatches >= 1 and a.micro_batch_size >= 1,
        "algo.ppo_epochs, algo.num_minibatches and algo.micro_batch_size must be >= 1",
    )
    ds = a.dynamic_sampling
    _check(
        0 <= ds.low < ds.high <= 1,
        f"algo.dynamic_sampling low={ds.low}, high={ds.high}: need 0 <= low < high <= 1",
    )
    r = cfg.rollout
    _check(r.max_new_tokens > 0, f"rollout.max_new_tokens={r.max_new_tokens} must be > 0")
    _check(r.max_prompt_length > 0, f"rollout.max_prompt_length={r.max_prompt_length} must be > 0")
    _check(r.temperature >= 0, f"rollout.temperature={r.temperature} must be >= 0")
    _check(0 < r.top_p <= 1, f"rollout.top_p={r.top_p} must be in (0, 1]")
    _check(r.val_samples >= 1, f"rollout.val_samples={r.val_samples} must be >= 1")
    loss = cfg.loss
    for key in ("gamma", "eta_real", "eta_masked"):
        if key in loss:
            _check(loss[key] >= 0, f"loss.{key}={loss[key]} must be >= 0")
    masking = cfg.get("masking")
    target = str(masking.get("_target_") or "") if masking else ""
    masking_on = bool(target) and not target.endswith("no_masking")
    for key in ("mask_prob", "ratio"):
        if masking_on and key in masking:
            _check(0 <= masking[key] <= 1, f"masking.{key}={masking[key]} must be in [0, 1]")
    needs_masked = any(
        str(c.get("_target_", "")).endswith(("PerceptionKLLoss", "DoubleEntropyLoss"))
        for c in (loss.get("components") or {}).values()
    )
    _check(
        not needs_masked or masking_on,
        f"loss={loss.name} needs masked images but masking is disabled; choose masking=random_patch (or another view)",
    )
    _check(cfg.optim.lr > 0, f"optim.lr={cfg.optim.lr} must be > 0")
    _check(cfg.optim.grad_clip > 0, f"optim.grad_clip={cfg.optim.grad_clip} must be > 0")
    if a.name == "dapo" and a.kl_coef > 0:
        log.warning("algo=dapo with kl_coef=%s: DAPO as published uses no reference model", a.kl_coef)
    if loss.get("gamma", 0) >= 0.04:
        log.warning("loss.gamma=%s: the paper reports collapse at gamma=0.04", loss.gamma)
