"""OmegaConf resolvers used by configs/ (registered once, on import of papo.utils).

- ``${papo_wandb_offline:}``: True unless W&B can log online without prompting (an API key is set or
  WANDB_MODE=online). W&B with no key waits forever at a login prompt on a terminal, so offline is the
  default; offline runs sync later with ``wandb sync``.
- ``${papo_published:KEY,ALGO}``: the published PAPO coefficient for the chosen algorithm
  (PAPO-D for DAPO, PAPO-G 3B otherwise), so ``loss=papo algo=dapo`` is PAPO-D as published.
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf

# Published coefficients (papo.md): PAPO-G 3B gamma 0.02, no entropy; PAPO-D gamma 0.01, eta 0.03/0.03.
PUBLISHED_COEFS: dict[str, dict[str, float]] = {
    "grpo": {"gamma": 0.02, "eta_real": 0.0, "eta_masked": 0.0},
    "dapo": {"gamma": 0.01, "eta_real": 0.03, "eta_masked": 0.03},
}


def wandb_offline() -> bool:
    """Whether W&B must run offline: no API key and not explicitly online."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return True
    if mode == "online":
        return False
    return not os.environ.get("WANDB_API_KEY")


def published_coef(key: str, algo: str) -> float:
    """Published PAPO coefficient ``key`` for algorithm ``algo`` (PAPO-G's for algorithms without one)."""
    table = PUBLISHED_COEFS.get(algo, PUBLISHED_COEFS["grpo"])
    if key not in table:
        raise ValueError(f"papo_published: unknown key {key!r}; valid: {sorted(table)}")
    return table[key]


def register_resolvers() -> None:
    """Register the resolvers (idempotent)."""
    if not OmegaConf.has_resolver("papo_wandb_offline"):
        OmegaConf.register_new_resolver("papo_wandb_offline", wandb_offline)
    if not OmegaConf.has_resolver("papo_published"):
        OmegaConf.register_new_resolver("papo_published", published_coef)


register_resolvers()
