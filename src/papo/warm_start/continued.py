"""Continued-SFT control: spend the RL stage's compute on more supervised fine-tuning instead.

``+warm_start.continue_steps=N`` (with ``+trainer.limit_train_batches=0``, which skips the RL stage)
fine-tunes the cached warm-start checkpoint for N more SFT steps, with the RL seed (``seed``) as the SFT
seed so RL seeds give different continuations, and validates the result like an RL run.
The reproduction picks N so the SFT wall time matches the measured RL wall time (scripts/repro_report.py
--sft-steps; configs/experiment/repro/sft_continued.yaml).

It reuses :func:`papo.warm_start.sft.ensure_warm_start` with the warm-start checkpoint as the base model,
so the continuation is cached too (``cache_dir/warm_start/<warm start dir>-<hash>``; its
``warm_start.json`` records the SFT seconds). The optimiser state starts fresh (AdamW moments reset) at the
warm start's constant learning rate. Not in the paper: the reviewers' "is RL needed at all?" control.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from papo.warm_start.sft import ensure_warm_start


def continue_warm_start(cfg: DictConfig, policy_dir: Path | str, train_dataset: Any) -> Path:
    """``warm_start.continue_steps`` more SFT steps from ``policy_dir``; returns the new policy dir.

    ``warm_start.continue_seed`` (default: the RL seed ``seed``) seeds the continuation's data order.
    """
    steps = int(cfg.warm_start.get("continue_steps") or 0)
    if steps <= 0:
        return Path(policy_dir)
    cont = copy.deepcopy(cfg)
    with open_dict(cont):
        cont.warm_start.max_steps = steps
        cont.warm_start.seed = int(cfg.warm_start.get("continue_seed", cfg.seed))
        cont.warm_start.pop("continue_steps", None)
        cont.warm_start.pop("continue_seed", None)
        # its SFT log goes to <run>/continued_sft/warm_start/ (the warm start's own log, if built, stays)
        cont.paths.output_dir = str(Path(cfg.paths.output_dir) / "continued_sft")
    return ensure_warm_start(cont, Path(policy_dir), train_dataset)
