"""Validate a composed Hydra config against the typed schemas, before anything loads.

:func:`validate_config` (training) and :func:`validate_eval_config` (evaluation) resolve the config, validate
it with pydantic and return the typed run config; otherwise they raise ONE :class:`ConfigError` listing every
problem, one line per key, naming the key and the allowed range or names. A value left at ``???`` is reported
as a value that must be given. A loss-component key that only copies a loss-level key (``gamma:
${loss.gamma}``) is not reported a second time: the user's key is the loss-level one. Combinations the paper
did not use are warnings.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ValidationError

from papo.config.errors import ConfigError
from papo.config.messages import error_lines, leading_key
from papo.config.runs import EvalRunConfig, TrainRunConfig

log = logging.getLogger(__name__)

__all__ = ["parse_group", "validate_config", "validate_eval_config"]

M = TypeVar("M", bound=BaseModel)
_ALIAS = re.compile(r"^\$\{([\w.]+)\}$")


def _missing(cfg: DictConfig) -> list[str]:
    """Dotted keys whose value is ``???``, outside Hydra's own node (which holds job-time-only values)."""
    out = []
    for key in cfg:
        if key == "hydra":
            continue
        if OmegaConf.is_missing(cfg, key):
            out.append(str(key))
        elif OmegaConf.is_config(cfg[key]):
            out += [f"{key}.{k}" for k in OmegaConf.missing_keys(cfg[key])]
    return sorted(out)


def _containers(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config without Hydra's node: resolved (``???`` kept as the string) and as written."""
    keys = [k for k in cfg if k != "hydra"]
    written = OmegaConf.to_container(cfg, resolve=False)
    raw = {k: written[k] for k in keys}
    try:
        resolved = {
            k: OmegaConf.to_container(cfg[k], resolve=True, throw_on_missing=False)
            if OmegaConf.is_config(cfg[k])
            else cfg[k]
            for k in keys
        }
    except Exception as err:  # an interpolation that cannot resolve
        raise ConfigError(f"the config does not resolve: {err}") from None
    return resolved, raw


def _raw_value(raw: Mapping[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _problems(
    err: ValidationError, model: type[BaseModel], raw: Mapping[str, Any], missing: list[str]
) -> list[str]:
    """One line per key (the first, most specific wins); ``???`` keys and copies of reported keys dropped."""
    lines = error_lines(err, model)
    keys = {k for k, _ in lines}
    out, seen = [], set()
    for key, line in lines:
        if any(key == m or key.startswith(m + ".") for m in missing):
            continue
        alias = _ALIAS.match(str(_raw_value(raw, key) or ""))
        if alias and alias.group(1) in keys:
            continue
        head = leading_key(line)
        if head not in seen:
            seen.add(head)
            out.append(line)
    return out


def _validate(cfg: DictConfig, model: type[M]) -> M:
    resolved, raw = _containers(cfg)
    missing = _missing(cfg)
    problems: list[str] = []
    typed = None
    try:
        typed = model.model_validate(resolved, context={"sources": set()})
    except ValidationError as err:
        problems = _problems(err, model, raw, missing)
    problems += [f"{k}=??? must be given (e.g. {k}=<value> on the command line)" for k in missing]
    if problems or typed is None:
        raise ConfigError(problems or ["the config is invalid"])
    return typed


def validate_config(cfg: DictConfig) -> TrainRunConfig:
    """The typed training config of ``cfg``; raises one :class:`ConfigError` listing EVERY invalid value (one
    line per key). Warns on unusual but legal combinations."""
    run = _validate(cfg, TrainRunConfig)
    if run.algo.name == "dapo" and run.algo.kl_coef > 0:
        log.warning("algo=dapo with kl_coef=%s: DAPO as published uses no reference model", run.algo.kl_coef)
    if (run.loss.gamma or 0) >= 0.04:
        log.warning("loss.gamma=%s: the paper reports collapse at gamma=0.04", run.loss.gamma)
    unmasked = [
        k for k in ("mask_prob", "ratio", "std") if run.masking is not None and getattr(run.masking, k) == 0
    ]
    uses_view = [n for n, c in (run.loss.components or {}).items() if c.needs_masked]
    if unmasked and uses_view and run.masking_enabled:
        log.warning(
            "masking.%s=0: the masked view is the real image, so loss.components.%s (loss=%s) see the same image "
            "twice: the perception KL is 0 and the masked-image entropy is the real one",
            unmasked[0],
            ", loss.components.".join(uses_view),
            run.loss.name,
        )
    lora = run.model.lora
    if lora is not None and (lora.rank or 0) > 0 and run.model.freeze_vision_tower:
        log.warning("model.freeze_vision_tower has no effect with LoRA (base weights are frozen anyway)")
    return run


def validate_eval_config(cfg: DictConfig) -> EvalRunConfig:
    """The typed evaluation config of ``cfg`` (configs/eval.yaml): every invalid value of the groups the
    evaluation uses in one :class:`ConfigError`."""
    if cfg.get("eval") is None:
        raise ConfigError("eval: missing; this is not an evaluation config (configs/eval.yaml)")
    return _validate(cfg, EvalRunConfig)


def parse_group(model: type[M], value: M | Mapping[str, Any] | DictConfig, key: str) -> M:
    """``value`` (the config group ``key``) as ``model``: a typed config is returned as it is, a dict or a
    DictConfig is validated (a :class:`ConfigError` naming each invalid key under ``key``)."""
    if isinstance(value, model):
        return value
    data = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else dict(value)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError([line for _, line in error_lines(err, model, prefix=key)]) from None
