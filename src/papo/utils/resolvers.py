"""OmegaConf resolvers used by configs/ (registered once, on import of papo.utils).

- ``${papo_wandb_offline:}``: True unless W&B can log online without prompting (WANDB_MODE=online, or
  credentials W&B finds by itself: an API key in the environment, or the ``.netrc`` entry of ``wandb login``;
  ``papo.utils.wandb_setup.stored_credentials``). W&B with no credentials waits forever at a login prompt
  on a terminal, so offline is the default then; offline runs sync later with ``wandb sync``.
- ``${papo_published:KEY,ALGO}``: the published PAPO coefficient for the chosen algorithm
  (PAPO-D for DAPO, PAPO-G 3B otherwise), so ``loss=papo algo=dapo`` is PAPO-D as published.
- ``${papo_per_rank:TOTAL,DEVICES[,NODES]}``: a global batch split over the ranks (DDP/FSDP batches are per
  rank), e.g. ``data.batch_size: ${papo_per_rank:384,${trainer.devices}}`` -> 192 on 2 GPUs.
- ``${papo_mul:A,B}``: A * B (e.g. the data-parallel size devices * nodes of trainer=fsdp).
- ``${papo_job_suffix:}``: ``-job<N>`` inside a Hydra multirun (N = the job number), else ``""``: the jobs of
  a sweep get distinct W&B run names.
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf

# Published coefficients (docs/algorithm.md): PAPO-G 3B gamma 0.02, no entropy; PAPO-D gamma 0.01, eta 0.03/0.03.
PUBLISHED_COEFS: dict[str, dict[str, float]] = {
    "grpo": {"gamma": 0.02, "eta_real": 0.0, "eta_masked": 0.0},
    "dapo": {"gamma": 0.01, "eta_real": 0.03, "eta_masked": 0.03},
}


def wandb_offline() -> bool:
    """Whether W&B must run offline: not explicitly online and no credentials W&B would find by itself."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return True
    if mode == "online":
        return False
    from papo.utils.wandb_setup import stored_credentials

    return stored_credentials() is None


def published_coef(key: str, algo: str) -> float:
    """Published PAPO coefficient ``key`` for algorithm ``algo`` (PAPO-G's for algorithms without one)."""
    table = PUBLISHED_COEFS.get(algo, PUBLISHED_COEFS["grpo"])
    if key not in table:
        raise ValueError(f"papo_published: unknown key {key!r}; valid: {sorted(table)}")
    return table[key]


def per_rank(total: int, devices: int | str, num_nodes: int = 1) -> int:
    """``total`` (a global batch) divided over ``devices * num_nodes`` ranks; an error unless it divides."""
    ranks = int(devices) * int(num_nodes) if str(devices).isdigit() else 1
    if ranks < 1 or int(total) % ranks:
        raise ValueError(f"papo_per_rank: a global batch of {total} does not split over {ranks} ranks")
    return int(total) // ranks


def job_suffix() -> str:
    """``-job<N>`` for job N of a Hydra multirun, ``""`` in a single run."""
    from papo.utils.sweep import multirun_job_num

    num = multirun_job_num()
    return "" if num is None else f"-job{num}"


def register_resolvers() -> None:
    """Register the resolvers (idempotent)."""
    if not OmegaConf.has_resolver("papo_per_rank"):
        OmegaConf.register_new_resolver("papo_per_rank", per_rank)
    if not OmegaConf.has_resolver("papo_mul"):
        OmegaConf.register_new_resolver("papo_mul", lambda a, b: int(a) * int(b))
    if not OmegaConf.has_resolver("papo_wandb_offline"):
        OmegaConf.register_new_resolver("papo_wandb_offline", wandb_offline)
    if not OmegaConf.has_resolver("papo_job_suffix"):
        OmegaConf.register_new_resolver("papo_job_suffix", job_suffix)
    if not OmegaConf.has_resolver("papo_published"):
        OmegaConf.register_new_resolver("papo_published", published_coef)


register_resolvers()
