"""Test-only fault injectors, importable by Hydra ``_target_`` (tests/ is on the path in pytest; subprocesses
get ``PYTHONPATH=tests``): a callback that freezes a training run at a step so a test can SIGKILL it, and a
loss component that turns non-finite on demand."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from papo.losses.base import LossComponent, LossInputs


class PauseAtStep(L.Callback):
    """At the start of the first batch with ``global_step >= step``, write ``marker`` and sleep forever.

    Checkpoint ``step`` is on disk by then (ModelCheckpoint saves at the end of the previous batch) and the
    next batch has been fetched: the state a SIGKILL between two steps leaves behind.
    """

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = int(step), marker

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            Path(self.marker).write_text(str(trainer.global_step))
            while True:
                time.sleep(0.05)


class NonFiniteLoss(LossComponent):
    """Adds 0 to the loss, except when it fires: then NaN (``mode="loss"``) or a finite loss whose gradient
    is NaN (``mode="grad"``, d sqrt(|x|)/dx at x = 0).

    Fires on the calls numbered in ``calls`` (1-based, one call per micro-batch), or, when ``calls`` is
    None, whenever training progress (global_step / max_steps) is at least ``from_progress``: skipped steps
    do not advance the global step, so that fault persists.
    """

    name = "fault"

    def __init__(
        self, mode: str = "loss", calls: list[int] | None = None, from_progress: float = 0.0
    ) -> None:
        if mode not in ("loss", "grad"):
            raise ValueError(f"mode must be 'loss' or 'grad', got {mode!r}")
        self.mode, self.calls, self.from_progress = mode, set(calls or []), from_progress
        self.n_calls = 0

    def __call__(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        self.n_calls += 1
        fire = self.n_calls in self.calls if self.calls else inputs.progress >= self.from_progress
        zero = (inputs.logps * inputs.response_mask).sum() * 0.0  # keeps the graph, adds nothing
        if not fire:
            return zero, {}
        if self.mode == "loss":
            return zero + float("nan"), {}
        return zero.abs().sqrt(), {}
