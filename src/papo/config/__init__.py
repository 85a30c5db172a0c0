"""Typed configs: one pydantic schema per config group (:mod:`papo.config.training`, :mod:`papo.config.groups`),
the run configs that hold them (:mod:`papo.config.runs`), and the validation that turns a composed Hydra config
into a typed one or into one :class:`ConfigError` listing every problem (:mod:`papo.config.validate`)."""

from papo.config.errors import ConfigError
from papo.config.groups import (
    DataConfig,
    EvalConfig,
    MaskingConfig,
    ModelConfig,
    RewardConfig,
    RolloutConfig,
    WarmStartConfig,
)
from papo.config.runs import EvalRunConfig, TrainRunConfig
from papo.config.training import AlgoConfig, LossConfig, OptimConfig
from papo.config.validate import parse_group, validate_config, validate_eval_config

__all__ = [
    "AlgoConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "EvalRunConfig",
    "LossConfig",
    "MaskingConfig",
    "ModelConfig",
    "OptimConfig",
    "RewardConfig",
    "RolloutConfig",
    "TrainRunConfig",
    "WarmStartConfig",
    "parse_group",
    "validate_config",
    "validate_eval_config",
]
