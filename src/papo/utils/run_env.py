"""Process-level set-up done before heavy imports: W&B offline by default, quiet tokenizers, threads.

W&B with no credentials hangs at a login prompt on a terminal and errors in CI, so unless it has some (an
API key in the environment, or the ``.netrc`` entry ``wandb login`` writes; or WANDB_MODE=online) we set
WANDB_MODE=offline. Hub access is disabled unless the user opts in
(PAPO_ALLOW_HUB=1): the embedded default never downloads anything.
"""

from __future__ import annotations

import os

from papo.utils.resolvers import wandb_offline


def setup_process_env() -> None:
    """Set environment defaults (never overriding what the user set explicitly)."""
    if wandb_offline():
        os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get("PAPO_ALLOW_HUB", "0") != "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
