"""Export the policy as a Hugging Face model folder when training ends (configs/callbacks/export.yaml).

At the end of ``fit`` the newest checkpoint (``ModelCheckpoint``'s last one; without one, a checkpoint this
callback saves through the strategy, so sharded strategies write their own format) is written to ``out`` by
:func:`papo.models.export.export_policy` on global rank 0, exactly as ``python src/export.py`` would
(docs/export.md). The reference model is never exported.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class ExportCallback(Callback):
    """``on_fit_end``: export the last checkpoint's policy to ``out`` (see the module docstring)."""

    def __init__(
        self,
        out: str,
        model_cfg: dict[str, Any],
        lora: str = "merge",
        dtype: str | None = None,
        overwrite: bool = False,
        max_shard_size: str = "5GB",
    ) -> None:
        self.out, self.model_cfg, self.lora, self.dtype = out, dict(model_cfg), lora, dtype
        self.overwrite, self.max_shard_size = overwrite, max_shard_size

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
        if not ckpt or not Path(ckpt).exists():
            ckpt = str(Path(self.out).with_name(Path(self.out).name + "_export.ckpt"))
            trainer.save_checkpoint(ckpt)  # every rank: sharded strategies save their shards
        if not trainer.is_global_zero:
            return
        from papo.models.export import export_policy

        export_policy(
            ckpt, self.out, self.model_cfg, self.lora, self.overwrite, self.dtype, self.max_shard_size
        )
        log.info("exported the policy to %s", self.out)
