"""Checks a run passes before anything loads, beyond the config's own validation (:mod:`papo.config`): what
depends on the machine or on other libraries. Each failure is a one-line :class:`~papo.config.ConfigError`
naming the key, raised before the data, the model and the validation before RL instead of a traceback after
them.

* :func:`check_trainer` -- Lightning's own checks of the ``trainer`` group (it builds the Trainer once);
* :func:`check_model_path` -- ``model.path`` names a folder that exists or a hub id that can be read;
* :func:`create_cache_dirs` -- the cache locations can be created;
* :func:`check_val_rows` -- with validation on, the val split is not empty (after the data setup).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from papo.config import ConfigError

__all__ = ["check_model_path", "check_trainer", "check_val_rows", "create_cache_dirs"]


def check_trainer(trainer_cfg: DictConfig) -> None:
    """Lightning's own checks of the ``trainer`` keys (accelerator and its availability, devices, precision,
    ``limit_*_batches``, ``val_check_interval``, strategy), run by building the Trainer once without callbacks
    or loggers: a value Lightning refuses is a :class:`ConfigError` naming the group, before the data, the
    model and the validation before RL, instead of a traceback after them."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # "GPU available: ..." once, not twice
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        hydra.utils.instantiate(
            trainer_cfg,
            callbacks=[],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (MisconfigurationException, ValueError, TypeError)):
            raise ConfigError(
                f"trainer: Lightning's Trainer refuses the trainer group (configs/trainer): {cause}"
            ) from None
        raise
    finally:
        quiet.setLevel(level)


def check_val_rows(datamodule: Any, named_sets: bool) -> None:
    """With ``validate_before`` / ``validate_after`` on, an empty val split (or named val set) would validate
    nothing and report no metrics, silently: a :class:`ConfigError` after the data setup instead."""
    if not hasattr(datamodule, "val_set_sizes"):
        return
    if named_sets:
        sizes = {f"val_sets.{name}": n for name, n in datamodule.val_set_sizes().items()}
    else:
        sizes = {"data.val_dataset": len(datamodule.val_set)}
    empty = [key for key, n in sizes.items() if n == 0]
    if empty:
        raise ConfigError(
            [
                f"{key} has no rows, but validate_before / validate_after are on: give it rows, or set "
                "validate_before=false validate_after=false"
                for key in empty
            ]
        )


def check_model_path(path: str) -> None:
    """``model.path`` names a local model folder that exists, or a hub id (``namespace/name``) that can be read:
    cached, or with the hub on (``PAPO_ALLOW_HUB=1``). Otherwise a :class:`ConfigError` before anything loads,
    instead of transformers' ``HFValidationError`` / "couldn't connect" traceback from the first processor load."""
    from papo.data.hub import HUB_OFFLINE_HINT, hub_offline

    text = str(path)
    if Path(text).expanduser().is_dir():
        return
    # a hub id is 'namespace/name', or a bare 'name' for the hub's oldest models
    if text.startswith(("/", ".", "~")) or text.count("/") > 1 or Path(text).expanduser().exists():
        raise ConfigError(
            f"model.path={text}: no such model folder (a local folder, or a hub id 'namespace/name')"
        )
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(text, "config.json"), str):
            raise ConfigError(
                f"model.path={text}: not in the local Hugging Face cache, and {HUB_OFFLINE_HINT}"
            )


def create_cache_dirs(cfg: DictConfig) -> None:
    """Create ``paths.cache_dir`` and ``model.cache_dir`` (where the embedded model and the warm start are built)
    before anything loads: a location that cannot be created (a ``PAPO_CACHE_DIR`` under a read-only or missing
    mount) is a :class:`ConfigError` naming the key, not an ``OSError`` traceback from deep inside the model
    build. An existing read-only cache passes (a prebuilt cache is only read)."""
    problems = []
    for key in ("paths.cache_dir", "model.cache_dir"):
        group, name = key.split(".")
        value = (cfg.get(group) or {}).get(name)
        if not value or Path(str(value)).is_dir():
            continue
        try:
            Path(str(value)).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            hint = " (PAPO_CACHE_DIR)" if key == "paths.cache_dir" else ""
            problems.append(f"{key}={value}{hint}: cannot create it ({err.strerror or err})")
    if problems:
        raise ConfigError(problems)
