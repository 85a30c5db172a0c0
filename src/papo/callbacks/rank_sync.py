"""``RankSyncCheck``: verify that data-parallel ranks hold identical policy weights.

Under DDP every rank applies the same all-reduced gradient, so the replicas must stay bit-identical; a
divergence (a rank that skipped an update, non-deterministic reductions, a bug in a custom collective) is
silent otherwise. At the end of training (and every ``every_n_steps`` optimiser steps if set) each rank hashes
its trainable parameters, the hashes are all-gathered and compared: a mismatch raises (``on_mismatch:
raise``) or warns. With ``output_dir`` each rank also writes ``rank<r>.json`` (hash at start and end, global
step, the uids of the prompts it trained on), which is how tests/test_ddp.py checks both the weights and that
the train sampler gave the ranks disjoint prompts. Not in the released code (verl does not check).

Use: ``callbacks=[default,rank_sync]`` (configs/callbacks/rank_sync.yaml).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)

__all__ = ["RankSyncCheck", "parameter_digest"]


def parameter_digest(module: torch.nn.Module, trainable_only: bool = True) -> str:
    """sha256 over the names and bytes of ``module``'s parameters (in name order)."""
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        if trainable_only and not p.requires_grad:
            continue
        t = p.detach()
        if hasattr(t, "full_tensor"):  # FSDP2 shard (DTensor): the full parameter (a collective call)
            t = t.full_tensor()
        elif hasattr(p, "ds_id"):  # DeepSpeed ZeRO-3 partition: gather the full parameter (a collective call)
            import deepspeed

            with deepspeed.zero.GatheredParameters([p]):
                t = p.detach().clone()
        h.update(name.encode())
        h.update(t.float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class RankSyncCheck(L.Callback):
    """Compare a hash of the policy's parameters across ranks (see the module docstring).

    Args:
        every_n_steps: also check every N optimiser steps (0: only at the end of training).
        on_mismatch: ``raise`` | ``warn``.
        output_dir: write ``rank<r>.json`` there (None: no files).
        attribute: the LightningModule attribute holding the policy.
    """

    def __init__(
        self,
        every_n_steps: int = 0,
        on_mismatch: str = "raise",
        output_dir: str | None = None,
        attribute: str = "policy",
    ) -> None:
        if on_mismatch not in ("raise", "warn"):
            raise ValueError(f"on_mismatch={on_mismatch!r}; valid: ['raise', 'warn']")
        self.every_n_steps, self.on_mismatch = int(every_n_steps), on_mismatch
        self.output_dir, self.attribute = output_dir, attribute
        self.start_digest: str | None = None
        self.uids: list[str] = []
        self._last_checked = -1

    def _digest(self, pl_module: L.LightningModule) -> str:
        return parameter_digest(getattr(pl_module, self.attribute))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_digest = self._digest(pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int
    ) -> None:
        if isinstance(batch, dict) and "uid" in batch:
            self.uids.extend(str(u) for u in batch["uid"])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps and step and step % self.every_n_steps == 0 and step != self._last_checked:
            self._last_checked = step
            self.check(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest = self.check(trainer, pl_module)
        if self.output_dir:
            out = Path(self.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            record = {
                "rank": trainer.global_rank,
                "world_size": trainer.world_size,
                "global_step": trainer.global_step,
                "start_digest": self.start_digest,
                "end_digest": digest,
                "uids": self.uids,
            }
            (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record, indent=1) + "\n")

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        """All-gather this rank's digest and compare; returns it."""
        digest = self._digest(pl_module)
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            digests: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(digests, digest)
            if len(set(digests)) > 1:
                msg = f"ranks hold different policy weights at step {trainer.global_step}: " + ", ".join(
                    f"rank {r}: {d[:12]}" for r, d in enumerate(digests)
                )
                if self.on_mismatch == "raise":
                    raise RuntimeError(msg)
                log.warning(msg)
            else:
                log.info("rank sync check at step %d: %d ranks identical", trainer.global_step, len(digests))
        return digest
