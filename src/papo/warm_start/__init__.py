"""Supervised warm start (SFT on reference responses) that the RL stage starts from."""

from papo.warm_start.sft import ensure_warm_start

__all__ = ["ensure_warm_start"]
