"""Early, one-line-per-problem validation of the composed config (before any model loads).

Unknown registry names list the valid ones; out-of-range values name the key and the allowed range;
combinations the paper did not use are warnings.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from papo.algos import ADVANTAGE_ESTIMATORS, AGG_MODES, KL_ESTIMATORS, LOSS_NORMALIZERS, POLICY_LOSSES
from papo.algos.perception import TOP_FRACTION_SCOPES
from papo.rollout.hf_generate import DECODERS

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """Invalid config values; the message names each key and the allowed values or range.

    ``problems`` holds one line per problem. With one problem the message is that line; with several it is a
    header and one indented line per problem (``validate_config`` reports every problem at once).
    """

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            lines = "\n".join(f"  {p}" for p in self.problems)
            message = f"{len(self.problems)} config problems:\n{lines}"
        super().__init__(message)

    def report(self) -> str:
        """What an entry point prints (src/train.py, src/eval.py): a header and one line per problem."""
        if len(self.problems) == 1:
            return f"Invalid config: {self.problems[0]}"
        lines = "\n".join(f"  {p}" for p in self.problems)
        return f"Invalid config ({len(self.problems)} problems):\n{lines}"


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


_KEY = re.compile(r"[A-Za-z_][\w.]*")


class _Problems:
    """Collects every problem (one per key: the first, most specific message wins) instead of stopping at
    the first. ``check`` takes the condition lazily: a value of the wrong type (a comparison that raises
    TypeError) is left to the range table, which reports it as a type error."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._keys: set[str] = set()

    def add(self, msg: str) -> None:
        m = _KEY.match(msg)
        key = m.group(0) if m else msg
        if key not in self._keys:
            self._keys.add(key)
            self.items.append(msg)

    def check(self, cond: Callable[[], bool], msg: str) -> None:
        try:
            ok = cond()
        except TypeError:
            return
        if not ok:
            self.add(msg)

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Call ``fn``; record the ConfigError it raises (``fn`` is one independent check)."""
        try:
            fn(*args, **kwargs)
        except ConfigError as err:
            for p in err.problems:
                self.add(p)

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def validate_config(cfg: DictConfig) -> None:
    """Raise one ConfigError listing EVERY invalid value of a training config (one line per key); warn on
    unusual but legal combinations."""
    p = _Problems()
    a = cfg.algo
    for key, reg in (
        ("advantage", ADVANTAGE_ESTIMATORS),
        ("policy_loss", POLICY_LOSSES),
        ("kl_estimator", KL_ESTIMATORS),
    ):
        p.check(
            lambda key=key, reg=reg: a[key] in reg.names(),
            f"algo.{key}={a[key]!r} is unknown; valid: {sorted(reg.names())}",
        )
    p.check(
        lambda: a.agg_mode in AGG_MODES, f"algo.agg_mode={a.agg_mode!r} is unknown; valid: {list(AGG_MODES)}"
    )
    p.check(
        lambda: a.group_size >= 2 or a.advantage not in ("grpo", "rloo", "dr_grpo"),
        f"algo.group_size={a.group_size}: group-normalised advantages need >= 2 responses per prompt",
    )
    p.check(lambda: 0 <= a.clip_low < 1, f"algo.clip_low={a.clip_low} must be in [0, 1)")
    p.check(lambda: a.clip_high >= 0, f"algo.clip_high={a.clip_high} must be >= 0")
    p.check(
        lambda: a.dual_clip is None or a.dual_clip > 1, f"algo.dual_clip={a.dual_clip} must be > 1 or null"
    )
    p.check(lambda: a.kl_coef >= 0, f"algo.kl_coef={a.kl_coef} must be >= 0")
    p.check(lambda: a.kl_in in ("loss", "reward"), f"algo.kl_in={a.kl_in!r}; valid: ['loss', 'reward']")
    for key in ("ppo_epochs", "num_minibatches", "micro_batch_size"):
        p.check(lambda key=key: a[key] >= 1, f"algo.{key}={a[key]} must be >= 1")
    ds = a.dynamic_sampling
    p.check(
        lambda: 0 <= ds.low < ds.high <= 1,
        f"algo.dynamic_sampling low={ds.low}, high={ds.high}: need 0 <= low < high <= 1",
    )
    _validate_rollout(p, cfg)
    p.run(check_token_budget_normalizer, a)
    loss = cfg.loss
    for key in ("gamma", "eta_real", "eta_masked"):
        if key in loss:
            p.check(lambda key=key: loss[key] >= 0, f"loss.{key}={loss[key]} must be >= 0")
    masking_on = _validate_masking_values(p, cfg)
    needs_masked = [
        f"loss.components.{n}" for n, c in (loss.get("components") or {}).items() if _needs_masked(c)
    ]
    p.check(
        lambda: not needs_masked or masking_on,
        f"{', '.join(needs_masked)} (loss={loss.name}) needs masked images but masking is disabled; "
        "choose masking=random_patch (or another view), or loss=none",
    )
    p.check(lambda: cfg.optim.lr > 0, f"optim.lr={cfg.optim.lr} must be > 0")
    p.check(lambda: cfg.optim.grad_clip > 0, f"optim.grad_clip={cfg.optim.grad_clip} must be > 0")
    _validate_ranges(p, cfg)
    _validate_scale(p, cfg)
    p.raise_if_any()  # below: only values of the right types (wrong ones were reported above)
    if a.name == "dapo" and a.kl_coef > 0:
        log.warning("algo=dapo with kl_coef=%s: DAPO as published uses no reference model", a.kl_coef)
    if loss.get("gamma", 0) >= 0.04:
        log.warning("loss.gamma=%s: the paper reports collapse at gamma=0.04", loss.gamma)


def validate_eval_config(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every invalid value of an evaluation config (configs/eval.yaml), before
    anything loads: the ``eval.*`` settings, and the groups the evaluation uses (rollout, masking, reward,
    data, model, warm start). ``algo`` / ``loss`` are composed for experiment presets but not used, so they
    are not checked; neither are ``optim``, ``trainer`` or ``callbacks``."""
    p = _Problems()
    if cfg.get("eval") is None:
        raise ConfigError("eval: missing; this is not an evaluation config (configs/eval.yaml)")
    p.run(check_choice, cfg, "eval.split", ["train", "val", "test"])
    p.run(check_range, cfg, "eval.samples", 0, None, integer=True, allowed="0 = greedy only")
    p.run(check_range, cfg, "eval.temperature", 0, None, lo_open=True)
    p.run(check_range, cfg, "eval.top_p", 0, 1, lo_open=True)
    p.run(check_range, cfg, "eval.top_k", 0, None, integer=True, allowed="0 disables")
    p.run(check_range, cfg, "eval.limit", 1, None, integer=True, nullable=True, allowed="null = all")
    p.run(
        check_range,
        cfg,
        "eval.max_new_tokens",
        1,
        None,
        integer=True,
        nullable=True,
        allowed="null = rollout.max_new_tokens",
    )
    p.run(check_range, cfg, "eval.num_samples_shown", 0, None, integer=True)
    ev = cfg.eval
    p.check(
        lambda: bool(ev.get("greedy", True)) or int(ev.get("samples") or 0) > 0,
        f"eval.greedy={ev.get('greedy')} with eval.samples={ev.get('samples')}: nothing to evaluate; "
        "set eval.greedy=true and/or eval.samples >= 1",
    )
    _validate_rollout(p, cfg)
    _validate_masking_values(p, cfg)
    for key, lo, hi, opts in RANGES:
        if key.split(".")[0] in ("rollout", "reward", "masking", "data"):
            p.run(check_range, cfg, key, lo, hi, **opts)
    _validate_common(p, cfg)
    _validate_scale(p, cfg, strategy=False)
    p.raise_if_any()


def _validate_rollout(p: _Problems, cfg: DictConfig) -> None:
    r = cfg.rollout
    p.check(lambda: r.max_new_tokens > 0, f"rollout.max_new_tokens={r.max_new_tokens} must be > 0")
    p.check(lambda: r.max_prompt_length > 0, f"rollout.max_prompt_length={r.max_prompt_length} must be > 0")
    p.check(lambda: r.temperature >= 0, f"rollout.temperature={r.temperature} must be >= 0")
    p.check(lambda: 0 < r.top_p <= 1, f"rollout.top_p={r.top_p} must be in (0, 1]")
    p.check(lambda: r.val_samples >= 1, f"rollout.val_samples={r.val_samples} must be >= 1")


def _validate_masking_values(p: _Problems, cfg: DictConfig) -> bool:
    """Mask probability / ratio in [0, 1] when masking is on; returns whether it is on."""
    masking = cfg.get("masking")
    target = str(masking.get("_target_") or "") if masking else ""
    masking_on = bool(target) and not target.endswith("no_masking")
    for key in ("mask_prob", "ratio"):
        if masking_on and key in masking:
            p.check(lambda key=key: 0 <= masking[key] <= 1, f"masking.{key}={masking[key]} must be in [0, 1]")
    return masking_on


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


#: ``algo.loss_normalizer`` values under which the update does not depend on how a mini-batch is split into
#: micro-batches (the absent key is the global token count over the mini-batch, which does not). Token-budget
#: micro-batches (``algo.micro_batch_tokens``) are allowed only with these: under a per-micro-batch mean the
#: budget's split would change the update.
SPLIT_INDEPENDENT_NORMALIZERS: tuple[str, ...] = ("global_token_mean",)


def check_token_budget_normalizer(algo: DictConfig) -> None:
    """``algo.micro_batch_tokens`` needs a loss normaliser that does not depend on the micro-batch split."""
    budget = algo.get("micro_batch_tokens")
    normalizer = algo.get("loss_normalizer")
    if budget is None or normalizer is None:
        return
    _check(
        normalizer in SPLIT_INDEPENDENT_NORMALIZERS,
        f"algo.micro_batch_tokens={budget} with algo.loss_normalizer={normalizer!r}: that normaliser averages "
        "each micro-batch on its own, so a token-budget split would change the update; set "
        f"algo.micro_batch_tokens=null, or algo.loss_normalizer to one of {list(SPLIT_INDEPENDENT_NORMALIZERS)}",
    )


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
    (
        "algo.micro_batch_tokens",
        1,
        None,
        {"integer": True, "nullable": True, "allowed": "null = algo.micro_batch_size rows at a time"},
    ),
    (
        "algo.logprob_chunk_tokens",
        1,
        None,
        {"integer": True, "nullable": True, "allowed": "null = the model's full-logits forward"},
    ),
    ("algo.dynamic_sampling.max_tries", 1, None, {"integer": True}),
    (
        "algo.dynamic_sampling.batch_prompts",
        1,
        None,
        {"integer": True, "nullable": True, "allowed": "null = one data batch"},
    ),
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
    ("loss.gamma_start", 0, None, {"nullable": True, "allowed": "null = loss.gamma"}),
    ("loss.gamma_end", 0, None, {}),
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
    ("gamma_start", 0, None, {"nullable": True}),
    ("gamma_end", 0, None, {}),
]


def _import_target(target: str, key: str, what: str, valid: list[str]) -> type | None:
    from hydra.utils import get_object

    try:
        return get_object(target)
    except Exception:
        raise ConfigError(f"{key}={target!r} cannot be imported; valid {what}: {valid}") from None


def _validate_ranges(p: _Problems, cfg: DictConfig) -> None:
    """Every numeric range, choice and ``_target_`` of the composed training config."""
    for key, lo, hi, opts in RANGES:
        p.run(check_range, cfg, key, lo, hi, **opts)
    for beta in range(2):
        p.run(check_range, cfg, f"optim.betas.{beta}", 0, 1, hi_open=True)
    p.run(check_range, cfg, "algo.dual_clip", 1, None, lo_open=True, nullable=True, allowed="null disables")
    p.run(check_choice, cfg, "loss.schedule", ["fixed", "linear"])
    p.run(check_choice, cfg, "algo.loss_normalizer", LOSS_NORMALIZERS)
    _validate_common(p, cfg)
    # loss components: importable LossComponent classes with in-range coefficients and valid names
    for name, comp in (cfg.loss.get("components") or {}).items():
        prefix = f"loss.components.{name}"
        p.run(_check_component_target, prefix, comp)
        # a component key that only copies a checked loss-level key (``gamma: ${loss.gamma}``) is not
        # reported again: the user's key is the loss-level one
        copied = _checked_aliases(comp)
        for key, lo, hi, opts in COMPONENT_RANGES:
            if key not in copied:
                p.run(check_range, cfg, f"{prefix}.{key}", lo, hi, **opts)
        p.run(check_choice, cfg, f"{prefix}.kind", KL_ESTIMATORS.names())
        p.run(check_choice, cfg, f"{prefix}.direction", ["masked_as_ref", "real_as_ref"])
        p.run(check_choice, cfg, f"{prefix}.top_fraction_scope", TOP_FRACTION_SCOPES)
        if "schedule" not in copied:
            p.run(check_choice, cfg, f"{prefix}.schedule", ["fixed", "linear"])
    ovl = OmegaConf.select(cfg, "algo.overlong", default=None)
    if ovl and ovl.get("enabled", False):
        p.check(
            lambda: ovl.buffer_length < cfg.rollout.max_new_tokens,
            f"algo.overlong.buffer_length={ovl.buffer_length} must be < rollout.max_new_tokens="
            f"{cfg.rollout.max_new_tokens}",
        )


_ALIAS = re.compile(r"^\$\{([\w.]+)\}$")


def _checked_aliases(comp: DictConfig | None) -> set[str]:
    """Keys of ``comp`` that are plain ``${<key>}`` copies of a key the loss-level checks cover."""
    if not isinstance(comp, DictConfig):
        return set()
    checked = {k for k, *_ in RANGES} | {"loss.schedule"}
    out = set()
    for key in comp:
        node = comp._get_node(key)
        m = _ALIAS.match(str(node._value())) if node is not None and node._is_interpolation() else None
        if m and m.group(1) in checked:
            out.add(str(key))
    return out


_BUILTIN_COMPONENTS = [
    "papo.losses.perception_kl.PerceptionKLLoss",
    "papo.losses.double_entropy.DoubleEntropyLoss",
]


def _check_component_target(prefix: str, comp: DictConfig | None) -> None:
    from papo.losses.base import LossComponent

    builtin = _BUILTIN_COMPONENTS
    _check(comp is not None and "_target_" in comp, f"{prefix} has no _target_; e.g. {builtin}")
    obj = _import_target(str(comp._target_), f"{prefix}._target_", "loss components", builtin)
    _check(
        isinstance(obj, type) and issubclass(obj, LossComponent),
        f"{prefix}._target_={comp._target_!r} is not a LossComponent subclass; e.g. {builtin}",
    )


def _check_masking_target(target: str) -> None:
    """An importable ImageView (or no_masking); the error lists the built-in views."""
    from papo.data.masking import VIEWS, ImageView, no_masking

    valid = [*sorted(VIEWS), "none"]
    obj = _import_target(target, "masking._target_", "masking views (masking=...)", valid)
    _check(
        obj is no_masking or (isinstance(obj, type) and issubclass(obj, ImageView)),
        f"masking._target_={target!r} is not an ImageView; valid masking views: {valid}",
    )


def local_data_source_problems(cfg: DictConfig) -> list[str]:
    """One line per ``data.<split>_dataset.source`` that names a local file, glob or folder that does not
    exist (or holds no data files), checked before anything loads; hub ids are left to the loader."""
    from omegaconf.errors import MissingMandatoryValue

    from papo.data.hub import resolve_source

    problems, seen = [], set()
    for split in ("train_dataset", "val_dataset", "test_dataset"):
        conf = (cfg.get("data") or {}).get(split)
        if not isinstance(conf, DictConfig) or "source" not in conf:
            continue
        key = f"data.{split}.source"
        try:
            source = conf.source
        except MissingMandatoryValue:
            problems.append(f"{key} is required: a local file, glob or folder (or a hub dataset id)")
            continue
        if (
            source is None
            and split == "train_dataset"
            and str(conf.get("_target_", "")).endswith("load_split")
        ):
            problems.append(f"{key} is required: a local file, glob or folder (or a hub dataset id)")
            continue
        if source is None or str(source) in seen:  # a split copying another split's source: reported once
            continue
        seen.add(str(source))
        try:
            resolve_source(source if isinstance(source, str) else list(source))
        except (FileNotFoundError, ValueError) as err:
            problems.append(f"{key}={source!r}: {err}")
    return problems


def _validate_common(p: _Problems, cfg: DictConfig) -> None:
    """Choices and targets shared by training and evaluation: reward, data, warm start, masking view."""
    for problem in local_data_source_problems(cfg):
        p.add(problem)
    p.run(check_choice, cfg, "reward.on_error", ["raise", "zero"])
    p.run(check_choice, cfg, "data.on_bad_row", ["error", "skip"])
    from papo.rewards import reward_config_problems

    # the reward group's name, fn, components (papo.rewards.components)
    for problem in reward_config_problems(cfg.get("reward")):
        p.add(problem)
    if cfg.get("warm_start") and cfg.warm_start.get("enabled", False):
        for key, lo, hi, opts in [
            ("warm_start.max_steps", 1, None, {"integer": True}),
            ("warm_start.batch_size", 1, None, {"integer": True}),
            ("warm_start.lr", 0, None, {"lo_open": True}),
            ("warm_start.data_fraction", 0, 1, {"lo_open": True}),
        ]:
            p.run(check_range, cfg, key, lo, hi, **opts)
    masking = cfg.get("masking")
    target = masking.get("_target_") if masking else None
    if target:
        p.run(_check_masking_target, str(target))


def _validate_scale(p: _Problems, cfg: DictConfig, *, strategy: bool = True) -> None:
    """Model family / LoRA / strategy / rollout backend: unknown names and missing packages, before loading."""
    from papo.models.stand_in import FAMILIES

    m = cfg.model
    family = m.get("family") or "qwen2_5_vl"
    p.check(lambda: family in FAMILIES, f"model.family={family!r} is unknown; valid: {list(FAMILIES)}")
    stand_in = m.get("stand_in")
    p.check(
        lambda: stand_in in (None, "tiny", "small"), f"model.stand_in={stand_in!r}; valid: null, tiny, small"
    )
    lora = m.get("lora") or {}
    rank = lora.get("rank") or 0
    p.check(lambda: rank >= 0, f"model.lora.rank={rank} must be >= 0 (0 = full fine-tune)")
    p.run(
        check_range,
        cfg,
        "model.lora.rank",
        0,
        None,
        integer=True,
        nullable=True,
        allowed="0 = full fine-tune",
    )
    if isinstance(rank, int) and rank > 0:
        import importlib.util

        p.check(
            lambda: importlib.util.find_spec("peft") is not None,
            "model.lora.rank > 0 needs peft, which is not installed: pip install 'papo[peft]'",
        )
        if m.get("freeze_vision_tower"):
            log.warning("model.freeze_vision_tower has no effect with LoRA (base weights are frozen anyway)")
    trainer_strategy = (cfg.get("trainer") or {}).get("strategy")
    if strategy and trainer_strategy is not None:
        from papo.utils.distributed import check_strategy_available

        try:
            check_strategy_available(trainer_strategy)
        except ImportError as e:
            p.add(str(e))
    backend = cfg.rollout.get("backend", "hf")
    p.check(
        lambda: backend in ("hf", "vllm"), f"rollout.backend={backend!r} is unknown; valid: ['hf', 'vllm']"
    )
    decoder = cfg.rollout.get("decoder", "lean")
    p.check(lambda: decoder in DECODERS, f"rollout.decoder={decoder!r} is unknown; valid: {list(DECODERS)}")
    if backend == "vllm":
        from papo.rollout.vllm_backend import require_vllm

        try:
            require_vllm()
        except ImportError as e:
            p.add(str(e))
