"""The run's config inside its checkpoints, compared with the config of a resume.

The config is not read from a checkpoint: a resume is composed again from the command line, and a forgotten
override (``algo=dapo``, ``loss.gamma=0.01``) would silently continue the run as another experiment.
:class:`SaveRunConfig` writes the run's flat, resolved config (dotted keys, credentials redacted as in the
logged hyperparameters) into every checkpoint under ``checkpoint["papo_config"]`` (strings, numbers, lists:
it loads with ``weights_only=True``). On resume, :func:`check_resume_config` compares it with the new config
before anything loads:

- a change of the model's architecture (``model.family``, ``model.size``, ``model.stand_in``, ``model.lora.*``)
  is a :class:`~papo.config.ConfigError`: the checkpoint's weights do not fit (or fit a different model);
- any other change of the keys that define what is trained (the model, data, masking, algorithm, loss,
  optimiser, rollout, reward, warm-start and method-block groups, the seeds, ``trainer.max_steps`` /
  ``precision`` / ``devices`` / ``num_nodes``) is one warning listing each key, the checkpoint's value and the
  new one (extending a run with a larger ``trainer.max_steps`` is legitimate, and rescales the gamma and LR
  schedules);
- where outputs go, loggers, callbacks, how the run resumes and cache directories are not compared.

``src/eval.py`` checks only the architecture (:func:`check_same_model`): an evaluation's data and decoding differ
from training by design. Checkpoints written before the config was stored are used without the comparison.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from papo.config.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_KEY",
    "SaveRunConfig",
    "changed_keys",
    "check_resume_config",
    "check_same_model",
    "flatten",
    "saved_config",
]

#: where the run's flat config lives in a checkpoint
CHECKPOINT_KEY = "papo_config"
#: the keys that define what is trained (where outputs go, loggers, callbacks and how to resume are not compared)
_COMPARED_PREFIXES = (
    "model.",
    "data.",
    "masking.",
    "algo.",
    "loss.",
    "optim.",
    "rollout.",
    "reward.",
    "warm_start.",
    "sensitivity.",
    "token_selection.",
    "advantage_shaping.",
    "rollout_view.",
)
_COMPARED_KEYS = (
    "seed",
    "data_seed",
    "trainer.max_steps",
    "trainer.precision",
    "trainer.devices",
    "trainer.num_nodes",
)
#: a difference in these is an error: the checkpoint's weights are those of another model
_ARCHITECTURE_KEYS = ("model.family", "model.size", "model.stand_in")
_ARCHITECTURE_PREFIXES = ("model.lora.",)
_ABSENT = "<absent>"


def _compared(key: str) -> bool:
    return (key in _COMPARED_KEYS or key.startswith(_COMPARED_PREFIXES)) and not key.endswith("cache_dir")


def _architecture(key: str) -> bool:
    return key in _ARCHITECTURE_KEYS or key.startswith(_ARCHITECTURE_PREFIXES)


class SaveRunConfig(L.Callback):
    """Writes ``config`` (the run's flat config) into every checkpoint under :data:`CHECKPOINT_KEY`."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = {k: v for k, v in config.items() if _compared(k)}

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CHECKPOINT_KEY] = dict(self.config)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict with dotted keys (``{"loss": {"gamma": 0.02}}`` -> ``{"loss.gamma": 0.02}``): the form of
    the run config logged as hyperparameters (W&B groups a sweep by ``loss.gamma``) and stored in checkpoints."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_keys(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (checkpoint's value, current value)}`` for every compared key whose value differs."""
    keys = sorted(k for k in set(saved) | set(current) if _compared(k))
    out = {}
    for key in keys:
        old, new = saved.get(key, _ABSENT), current.get(key, _ABSENT)
        if old != new:
            out[key] = (old, new)
    return out


def saved_config(ckpt_path: str) -> dict[str, Any] | None:
    """The run config stored in ``ckpt_path`` (tensors not read), or None for an older checkpoint."""
    saved = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get(CHECKPOINT_KEY)
    return saved if isinstance(saved, dict) else None


def check_same_model(ckpt_path: str, current: dict[str, Any]) -> None:
    """A :class:`ConfigError` when ``current`` (a flat config) names another architecture than the run of
    ``ckpt_path`` (``src/eval.py``: the evaluated model must be the trained one; data and decoding may differ)."""
    saved = saved_config(ckpt_path)
    if saved is not None:
        _refuse_another_model(ckpt_path, changed_keys(saved, current))


def _refuse_another_model(ckpt_path: str, changes: dict[str, tuple[Any, Any]]) -> None:
    architecture = [k for k in changes if _architecture(k)]
    if architecture:
        raise ConfigError(
            [
                f"{k}={changes[k][1]!r} differs from the run of ckpt_path={ckpt_path} ({k}={changes[k][0]!r}): "
                "its weights are that model's; pass the run's overrides (<run dir>/.hydra/overrides.yaml)"
                for k in architecture
            ]
        )


def check_resume_config(ckpt_path: str, current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Compare the config stored in ``ckpt_path`` with ``current`` (the resume's flat config): raise a
    :class:`ConfigError` for an architecture change, warn once listing every other change; returns the changes."""
    saved = saved_config(ckpt_path)
    if saved is None:
        log.info(
            "%s holds no run config (an older checkpoint): the resume's config is not compared", ckpt_path
        )
        return {}
    changes = changed_keys(saved, current)
    _refuse_another_model(ckpt_path, changes)
    if changes:
        lines = "\n".join(
            f"  {k}: {old!r} in the checkpoint's run, now {new!r}" for k, (old, new) in changes.items()
        )
        log.warning(
            "resuming %s with %d config value(s) that differ from its run (the config is not read from the "
            "checkpoint; pass the run's overrides, in <run dir>/.hydra/overrides.yaml, to continue it as it "
            "was):\n%s",
            ckpt_path,
            len(changes),
            lines,
        )
    return changes
