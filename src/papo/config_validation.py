"""Early, one-line-per-problem validation of the composed config (before any model loads).

Unknown registry names list the valid ones; out-of-range values name the key and the allowed range;
combinations the paper did not use are warnings.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from papo.algos import ADVANTAGE_ESTIMATORS, AGG_MODES, KL_ESTIMATORS, POLICY_LOSSES
from papo.rollout.hf_generate import DECODERS

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
    needs_masked = [
        f"loss.components.{n}" for n, c in (loss.get("components") or {}).items() if _needs_masked(c)
    ]
    _check(
        not needs_masked or masking_on,
        f"{', '.join(needs_masked)} (loss={loss.name}) needs masked images but masking is disabled; "
        "choose masking=random_patch (or another view), or loss=none",
    )
    _check(cfg.optim.lr > 0, f"optim.lr={cfg.optim.lr} must be > 0")
    _check(cfg.optim.grad_clip > 0, f"optim.grad_clip={cfg.optim.grad_clip} must be > 0")
    _validate_ranges(cfg)
    _validate_scale(cfg)
    if a.name == "dapo" and a.kl_coef > 0:
        log.warning("algo=dapo with kl_coef=%s: DAPO as published uses no reference model", a.kl_coef)
    if loss.get("gamma", 0) >= 0.04:
        log.warning("loss.gamma=%s: the paper reports collapse at gamma=0.04", loss.gamma)


def _needs_masked(comp: DictConfig | None) -> bool:
    """Whether a loss-component config's class declares ``needs_masked`` (by name if not importable)."""
    target = str((comp or {}).get("_target_") or "")
    try:
        from hydra.utils import get_class

        return bool(getattr(get_class(target), "needs_masked", False))
    except Exception:
        return target.endswith(("PerceptionKLLoss", "DoubleEntropyLoss"))


def _fmt_range(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if lo is None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def check_range(
    cfg: DictConfig,
    key: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
    nullable: bool = False,
    allowed: str = "",
) -> None:
    """``cfg.<key>`` (dotted; skipped when absent) must be a number in the range; one-line ConfigError."""
    if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
        return
    value = OmegaConf.select(cfg, key)
    kind = "an integer" if integer else "a number"
    rng = _fmt_range(lo, hi, lo_open, hi_open)
    need = f"must be {kind} {rng}" + (" or null" if nullable else "") + (f" ({allowed})" if allowed else "")
    if value is None:
        _check(nullable, f"{key}=null {need}")
        return
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    _check(ok_type and not isinstance(value, bool), f"{key}={value!r} {need}")
    ok = (lo is None or (value > lo if lo_open else value >= lo)) and (
        hi is None or (value < hi if hi_open else value <= hi)
    )
    _check(ok, f"{key}={value!r} {need}")


def check_choice(cfg: DictConfig, key: str, choices: list[str] | tuple[str, ...]) -> None:
    """``cfg.<key>`` (dotted; skipped when absent) must be one of ``choices``; the error lists them."""
    value = OmegaConf.select(cfg, key, default=_ABSENT)
    if value is not _ABSENT:
        _check(value in choices, f"{key}={value!r} is unknown; valid: {list(choices)}")


_ABSENT = object()

#: (key, lo, hi, options) -- every numeric setting with a bounded range; absent keys are skipped.
RANGES: list[tuple[str, float | None, float | None, dict]] = [
    ("algo.group_size", 1, None, {"integer": True}),
    ("algo.clip_low", 0, 1, {"hi_open": True}),
    ("algo.clip_high", 0, None, {}),
    ("algo.kl_coef", 0, None, {}),
    ("algo.ppo_epochs", 1, None, {"integer": True}),
    ("algo.num_minibatches", 1, None, {"integer": True}),
    ("algo.micro_batch_size", 1, None, {"integer": True}),
    ("algo.dynamic_sampling.max_tries", 1, None, {"integer": True}),
    ("algo.overlong.buffer_length", 1, None, {"integer": True}),
    ("algo.overlong.penalty_factor", 0, None, {}),
    ("rollout.max_new_tokens", 1, None, {"integer": True}),
    ("rollout.max_prompt_length", 1, None, {"integer": True}),
    ("rollout.temperature", 0, None, {}),
    ("rollout.val_temperature", 0, None, {}),
    ("rollout.top_p", 0, 1, {"lo_open": True}),
    ("rollout.top_k", 0, None, {"integer": True, "allowed": "0 disables"}),
    ("rollout.val_samples", 1, None, {"integer": True}),
    ("rollout.generation_batch_size", 1, None, {"integer": True}),
    ("reward.format_weight", 0, 1, {}),
    ("reward.timeout_s", 0, None, {"lo_open": True}),
    ("loss.gamma", 0, None, {}),
    ("loss.eta_real", 0, None, {}),
    ("loss.eta_masked", 0, None, {}),
    ("loss.anneal_fraction", 0, 1, {"lo_open": True}),
    ("masking.mask_prob", 0, 1, {}),
    ("masking.ratio", 0, 1, {}),
    ("masking.patch_size", 1, None, {"integer": True}),
    ("masking.std", 0, None, {}),
    ("optim.lr", 0, None, {"lo_open": True}),
    ("optim.weight_decay", 0, None, {}),
    ("optim.grad_clip", 0, None, {"lo_open": True}),
    ("optim.warmup_steps", 0, None, {"integer": True}),
    (
        "optim.max_consecutive_skips",
        1,
        None,
        {"integer": True, "nullable": True, "allowed": "null = never stop"},
    ),
    ("data.batch_size", 1, None, {"integer": True}),
    ("data.val_batch_size", 1, None, {"integer": True}),
    ("data.num_workers", 0, None, {"integer": True}),
    ("data.max_pixels", 1, None, {"integer": True}),
    ("data.max_aspect_ratio", 1, None, {"lo_open": True, "nullable": True}),
    ("trainer.max_steps", 1, None, {"integer": True}),
    ("callbacks.model_checkpoint.every_n_train_steps", 0, None, {"integer": True, "allowed": "0 = off"}),
    ("callbacks.model_checkpoint.save_top_k", -1, None, {"integer": True, "allowed": "-1 = keep all"}),
]
#: per-component numeric settings (under loss.components.<name>.)
COMPONENT_RANGES: list[tuple[str, float | None, float | None, dict]] = [
    ("gamma", 0, None, {}),
    ("eta_real", 0, None, {}),
    ("eta_masked", 0, None, {}),
    ("anneal_fraction", 0, 1, {"lo_open": True}),
    ("token_clip", 0, None, {"lo_open": True, "nullable": True}),
    ("top_fraction", 0, 1, {"lo_open": True, "nullable": True}),
]


def _import_target(target: str, key: str, what: str, valid: list[str]) -> type | None:
    from hydra.utils import get_object

    try:
        return get_object(target)
    except Exception:
        raise ConfigError(f"{key}={target!r} cannot be imported; valid {what}: {valid}") from None


def _validate_ranges(cfg: DictConfig) -> None:
    """Every numeric range, choice and ``_target_`` of the composed config (one-line errors)."""
    for key, lo, hi, opts in RANGES:
        check_range(cfg, key, lo, hi, **opts)
    for beta in range(2):
        check_range(cfg, f"optim.betas.{beta}", 0, 1, hi_open=True)
    check_range(cfg, "algo.dual_clip", 1, None, lo_open=True, nullable=True, allowed="null disables")
    check_choice(cfg, "reward.on_error", ["raise", "zero"])
    check_choice(cfg, "data.on_bad_row", ["error", "skip"])
    check_choice(cfg, "loss.schedule", ["fixed", "linear"])
    from papo.rewards import REWARD_FUNCTIONS

    check_choice(cfg, "reward.name", REWARD_FUNCTIONS.names())
    if cfg.get("warm_start") and cfg.warm_start.get("enabled", False):
        for key, lo, hi, opts in [
            ("warm_start.max_steps", 1, None, {"integer": True}),
            ("warm_start.batch_size", 1, None, {"integer": True}),
            ("warm_start.lr", 0, None, {"lo_open": True}),
            ("warm_start.data_fraction", 0, 1, {"lo_open": True}),
        ]:
            check_range(cfg, key, lo, hi, **opts)
    # masking: an importable ImageView (or no_masking); the error lists the built-in views
    from papo.data.masking import VIEWS, ImageView, no_masking

    masking = cfg.get("masking")
    target = masking.get("_target_") if masking else None
    if target:
        valid = [*sorted(VIEWS), "none"]
        obj = _import_target(str(target), "masking._target_", "masking views (masking=...)", valid)
        _check(
            obj is no_masking or (isinstance(obj, type) and issubclass(obj, ImageView)),
            f"masking._target_={target!r} is not an ImageView; valid masking views: {valid}",
        )
    # loss components: importable LossComponent classes with in-range coefficients and valid names
    from papo.losses.base import LossComponent

    builtin = [
        "papo.losses.perception_kl.PerceptionKLLoss",
        "papo.losses.double_entropy.DoubleEntropyLoss",
    ]
    for name, comp in (cfg.loss.get("components") or {}).items():
        prefix = f"loss.components.{name}"
        _check(comp is not None and "_target_" in comp, f"{prefix} has no _target_; e.g. {builtin}")
        obj = _import_target(str(comp._target_), f"{prefix}._target_", "loss components", builtin)
        _check(
            isinstance(obj, type) and issubclass(obj, LossComponent),
            f"{prefix}._target_={comp._target_!r} is not a LossComponent subclass; e.g. {builtin}",
        )
        for key, lo, hi, opts in COMPONENT_RANGES:
            check_range(cfg, f"{prefix}.{key}", lo, hi, **opts)
        check_choice(cfg, f"{prefix}.kind", KL_ESTIMATORS.names())
        check_choice(cfg, f"{prefix}.direction", ["masked_as_ref", "real_as_ref"])
        check_choice(cfg, f"{prefix}.schedule", ["fixed", "linear"])
    ovl = OmegaConf.select(cfg, "algo.overlong", default=None)
    if ovl and ovl.get("enabled", False):
        _check(
            ovl.buffer_length < cfg.rollout.max_new_tokens,
            f"algo.overlong.buffer_length={ovl.buffer_length} must be < rollout.max_new_tokens="
            f"{cfg.rollout.max_new_tokens}",
        )


def _validate_scale(cfg: DictConfig) -> None:
    """Model family / LoRA / strategy / rollout backend: unknown names and missing packages, before loading."""
    from papo.models.stand_in import FAMILIES

    m = cfg.model
    family = m.get("family") or "qwen2_5_vl"
    _check(family in FAMILIES, f"model.family={family!r} is unknown; valid: {list(FAMILIES)}")
    stand_in = m.get("stand_in")
    _check(stand_in in (None, "tiny", "small"), f"model.stand_in={stand_in!r}; valid: null, tiny, small")
    lora = m.get("lora") or {}
    rank = int(lora.get("rank") or 0)
    _check(rank >= 0, f"model.lora.rank={rank} must be >= 0 (0 = full fine-tune)")
    if rank > 0:
        import importlib.util

        _check(
            importlib.util.find_spec("peft") is not None,
            "model.lora.rank > 0 needs peft, which is not installed: pip install 'papo[peft]'",
        )
        if m.get("freeze_vision_tower"):
            log.warning("model.freeze_vision_tower has no effect with LoRA (base weights are frozen anyway)")
    strategy = (cfg.get("trainer") or {}).get("strategy")
    if strategy is not None:
        from papo.utils.distributed import check_strategy_available

        try:
            check_strategy_available(strategy)
        except ImportError as e:
            raise ConfigError(str(e)) from None
    backend = cfg.rollout.get("backend", "hf")
    _check(backend in ("hf", "vllm"), f"rollout.backend={backend!r} is unknown; valid: ['hf', 'vllm']")
    decoder = cfg.rollout.get("decoder", "lean")
    _check(decoder in DECODERS, f"rollout.decoder={decoder!r} is unknown; valid: {list(DECODERS)}")
    if backend == "vllm":
        from papo.rollout.vllm_backend import require_vllm

        try:
            require_vllm()
        except ImportError as e:
            raise ConfigError(str(e)) from None
