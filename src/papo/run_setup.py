"""What training (:mod:`papo.pipeline`) and evaluation (:mod:`papo.evaluation.evaluator`) both build from the
config: the model directory, the masked-view generator, the prompt-length filter of the datamodule, the named
validation sets (``val_sets``), and the Hydra-instantiated lists of callbacks / loggers (a value a constructor
refuses is a :class:`ConfigError` naming its key: :func:`instantiate_group`). Evaluation imports this module, never the training pipeline.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from papo.config import ConfigError, ModelConfig, RolloutConfig, parse_group

log = logging.getLogger(__name__)

__all__ = [
    "attach_prompt_filter",
    "attach_val_sets",
    "instantiate_group",
    "instantiate_list",
    "instantiate_masking",
    "resolve_model_dir",
]


def resolve_model_dir(model_cfg: ModelConfig | DictConfig, corpus_fn: Any = None) -> Path | str:
    """``model.path`` if set (local dir or hub id), else the embedded tiny VLM (built on first use).

    ``model.stand_in`` (tiny | small) replaces ``model.path`` by the embedded stand-in of ``model.family``
    (qwen2_5_vl | qwen3_vl; papo.models.stand_in): same classes as the hub model, tiny and built offline.
    """
    m = parse_group(ModelConfig, model_cfg, "model")
    if m.path and not m.stand_in:
        from papo.preflight import check_model_path

        check_model_path(m.path)
        return m.path
    from papo.models.stand_in import ensure_stand_in

    return ensure_stand_in(
        m.family,
        m.cache_dir,
        size=m.stand_in or m.size,
        corpus_fn=corpus_fn,
        seed=m.seed,
        min_pixels=m.min_pixels,
        max_pixels=m.max_pixels,
    )


def attach_prompt_filter(
    datamodule: Any,
    model_dir: Path | str,
    model_cfg: ModelConfig | DictConfig,
    rollout: RolloutConfig | DictConfig,
) -> None:
    """Let the datamodule drop prompts longer than ``rollout.max_prompt_length`` (exact token counts from the
    model's processor, papo.rollout.prompt_length.PromptLength); ``+rollout.filter_overlong_prompts=false`` turns it off."""
    r = parse_group(RolloutConfig, rollout, "rollout")
    if not hasattr(datamodule, "prompt_length_fn") or not r.filter_overlong_prompts:
        return
    from papo.rollout.prompt_length import PromptLength

    m = parse_group(ModelConfig, model_cfg, "model")
    datamodule.prompt_length_fn = PromptLength.from_pretrained(
        str(model_dir), m.min_pixels, m.max_pixels, trust_remote_code=m.trust_remote_code
    )
    datamodule.max_prompt_length = r.max_prompt_length


def instantiate_group(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(cfg, **kwargs)`` for the config node ``key``. A plain ``ValueError`` /
    ``TypeError`` (or Lightning's ``MisconfigurationException``) of the target's constructor is a value or
    keyword it refuses (``+data.batchsize=4``, a masking ``fill`` out of range); that, and a ``_target_`` that
    cannot be imported, is a :class:`ConfigError` naming ``key`` and the target, not Hydra's traceback.
    Subclasses (errors of the data, of a library) pass through as they are."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return hydra.utils.instantiate(cfg, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        target = cfg.get("_target_") if isinstance(cfg, DictConfig) else None
        if isinstance(cause, ImportError) and "Error locating target" in str(err):
            raise ConfigError(
                f"{key}._target_={target!r} cannot be imported ({cause.__cause__ or cause})"
            ) from None
        if type(cause) in (ValueError, TypeError, MisconfigurationException):
            raise ConfigError(f"{key} ({target}): {' '.join(str(cause).split())}") from None
        raise


def instantiate_list(cfg: DictConfig | None, group: str = "callbacks") -> list[Any]:
    """Instantiate every entry of a dict config that has a ``_target_`` (callbacks, loggers)."""
    out = []
    for name, conf in (cfg or {}).items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.info("Instantiating %s <%s>", name, conf._target_)
            out.append(instantiate_group(conf, f"{group}.{name}"))
    return out


def instantiate_masking(cfg: DictConfig | None) -> Any:
    """The masked-view generator of ``configs/masking`` (None when masking is disabled)."""
    if cfg is None or not cfg.get("_target_"):
        return None
    return instantiate_group(cfg, "masking")


def attach_val_sets(datamodule: Any, val_sets: DictConfig | None) -> list[Any]:
    """The config's ``val_sets`` as :class:`papo.evaluation.val_sets.ValSet` specs (their ``dataset`` built from
    its Hydra target, a zero-argument loader), given to the datamodule as its named val sets; [] when there are
    none (the datamodule validates ``data.val_dataset``)."""
    from omegaconf import OmegaConf

    from papo.evaluation.val_sets import parse_val_sets

    if not val_sets:
        return []
    raw = OmegaConf.to_container(val_sets, resolve=True)
    for name, entry in raw.items():
        node = val_sets[name].get("dataset") if isinstance(entry, dict) else None
        if isinstance(node, DictConfig) and "_target_" in node:
            log.info("val set %s <%s>", name, node._target_)
            entry["dataset"] = hydra.utils.instantiate(node)
    specs = parse_val_sets(raw)
    datamodule.val_sets = {s.name: s.dataset for s in specs}
    datamodule.val_set_limits = {s.name: s.limit for s in specs}
    return specs
