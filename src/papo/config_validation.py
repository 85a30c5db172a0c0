"""The config checks under their historical import path: a thin adapter over :mod:`papo.config`, where the
typed schemas and the validation live."""

from papo.config import ConfigError, validate_config, validate_eval_config

__all__ = ["ConfigError", "validate_config", "validate_eval_config"]
