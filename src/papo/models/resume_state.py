"""What a checkpoint holds beyond Lightning's own state, for an exact resume: RNG states and the run's counters.

Lightning checkpoints hold weights, optimiser, LR scheduler, loop counters (the global step, hence the gamma
schedule's progress) and the train loader's position. :class:`ResumeState` adds, under ``checkpoint["papo"]``
(tensors, lists, numbers and strings only: it loads with ``weights_only=True``), the global RNG states, the
rollout-group counter, the bad-row count and the flat states of its ``parts`` (DAPO's refill buffer, the
non-finite step counts).

RNG discipline: every training step starts from the RNG state the previous step ENDED with (or the checkpoint's,
after a resume), so what runs between steps (validation, a new DataLoader iterator, checkpointing) never shifts
rollout sampling, and a resumed run draws what an uninterrupted one draws. Multi-process runs restore rank 0's
state on every rank (fresh runs also seed every rank alike).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from papo.utils.checkpointing import rng_state, set_rng_state

log = logging.getLogger(__name__)

__all__ = ["NO_REFILL", "ResumeState"]


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class _NoRefill:
    """The refill state of a run without dynamic sampling: an empty buffer, no tries."""

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": [], "tries": 0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


NO_REFILL = _NoRefill()


class ResumeState:
    """RNG discipline and counters (see the module docstring); ``parts`` add their flat states to the same dict."""

    def __init__(self, *parts: Stateful) -> None:
        self.parts = parts
        self.group_counter = 0  # rollout groups drawn so far (group ids stay unique across steps)
        self.skipped_rows = 0  # bad data rows dropped from train batches (data.on_bad_row=skip)
        self._train_rng: dict[str, Any] | None = None  # RNG state at the end of the last training step
        self._in_train_step = False

    def step_started(self) -> None:
        """A training step starts: from the RNG state the last step ended with (or the checkpoint's)."""
        if self._train_rng is not None:
            set_rng_state(self._train_rng)
        self._in_train_step = True

    def step_ended(self) -> None:
        self._train_rng = rng_state()
        self._in_train_step = False

    def state_dict(self) -> dict[str, Any]:
        # inside a step (ModelCheckpoint at on_train_batch_end, or an exception) the live state is the step's end
        # state; between steps, the one the next step will start from
        live = self._in_train_step or self._train_rng is None
        state: dict[str, Any] = {"rng": rng_state() if live else self._train_rng}
        for part in self.parts:
            state.update(part.state_dict())
        state.update(group_counter=self.group_counter, skipped_rows=self.skipped_rows)
        return state

    def save_to(self, checkpoint: dict[str, Any]) -> None:
        """Into a Lightning checkpoint: this state under ``papo``; the frozen reference model's weights dropped
        (``reference.*``: it is reloaded from its path, never stored)."""
        sd = checkpoint.get("state_dict", {})
        for k in [k for k in sd if k.startswith("reference.")]:
            del sd[k]
        checkpoint["papo"] = self.state_dict()

    def load_from(self, checkpoint: dict[str, Any], reference: Any = None) -> None:
        """From a Lightning checkpoint; ``reference``'s own weights fill the ``reference.*`` keys it lacks."""
        if reference is not None:
            sd = checkpoint.setdefault("state_dict", {})
            for k, v in reference.state_dict().items():
                sd.setdefault(f"reference.{k}", v)
        self.load_state_dict(checkpoint.get("papo"))

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is None:
            log.warning("checkpoint has no PAPO resume state: RNG and dynamic-sampling state start afresh")
            return
        self._train_rng = state["rng"]  # applied at the start of the next training step
        for part in self.parts:
            part.load_state_dict(state)
        self.group_counter = int(state["group_counter"])
        self.skipped_rows = int(state["skipped_rows"])
