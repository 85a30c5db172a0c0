"""DAPO's dynamic sampling as a small state machine: filter each generation round, buffer the kept groups,
hand back a full update batch once enough groups are kept, give up with a clear error after ``max_tries``.

The per-group filter is the pure :func:`papo.algos.dynamic_sampling_keep` (0.01 < mean accuracy < 0.99).
:class:`DynamicSampler` adds what the trainer needs around it, without Lightning:

* ``add(exp, need, all_reduce)`` filters one round and returns the update batch (exactly ``need`` groups, the
  earliest kept first; the surplus is dropped, as in the released trainer) or None (sample another round).
  ``all_reduce(value, op)`` is passed in (``op`` in ``"min"``, ``"max"``): with several ranks every rank must
  decide alike, so the kept-group count is the minimum over ranks and the "no group passed" test is global.
* ``keep_all_when_none_pass`` (the released trainer's behaviour, ``algo.dynamic_sampling.keep_all_when_none_pass``):
  a round in which no group passes the filter, on any rank, is kept whole instead of discarded. Its groups
  have zero advantage, so they add only the KL and entropy terms; the option keeps the number of rounds per
  update bounded on tasks the policy always (or never) solves.
* ``state_dict`` / ``load_state_dict``: the buffer and the round counter, as tensors, lists and numbers only
  (checkpoints load with ``weights_only=True``), so a run resumed mid-refill continues bit-identically.

Differences from the released trainer (``verl/trainer/ray_trainer.py`` ``_make_batch_data``): there the filter
and the fallback see the whole round of all ranks at once on the driver; here each rank filters its own
prompts, the kept count is reduced with ``min`` and the fallback decision with ``max`` over ranks. A round here
is one data batch (``data.batch_size`` prompts per rank; the published DAPO runs generate 128 prompts per round
until ``algo.dynamic_sampling.batch_prompts`` = 384 are kept, as the released ``mini_rollout_batch_size``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from papo.algos import dynamic_sampling_keep
from papo.rollout.experience import Experience
from papo.utils.checkpointing import experience_from_state, experience_state

__all__ = ["DynamicSampler"]

#: ``all_reduce(value, op)`` over the ranks, ``op`` in ("min", "max"); the identity on one process
AllReduce = Callable[[int, str], int]


def _single_process(value: int, op: str) -> int:
    return value


class DynamicSampler:
    """Refill loop of DAPO's dynamic sampling (see the module docstring)."""

    def __init__(
        self,
        group_size: int,
        low: float = 0.01,
        high: float = 0.99,
        max_tries: int = 20,
        keep_all_when_none_pass: bool = False,
    ) -> None:
        if group_size < 1 or max_tries < 1:
            raise ValueError(f"need group_size >= 1 and max_tries >= 1, got {group_size}, {max_tries}")
        self.group_size, self.low, self.high = int(group_size), float(low), float(high)
        self.max_tries = int(max_tries)
        self.keep_all_when_none_pass = bool(keep_all_when_none_pass)
        self.buffer: list[Experience] = []  # kept rows of the rounds so far (whole groups)
        self.tries = 0  # rounds sampled for the batch being filled

    def add(
        self, exp: Experience, need: int, all_reduce: AllReduce = _single_process
    ) -> tuple[Experience | None, dict[str, float]]:
        """Filter one generation round into the buffer.

        Args:
            exp: the round's rollouts (G consecutive rows per prompt, ``exp.accuracy`` scored).
            need: groups per update batch (on this rank).
            all_reduce: ``(value, op) -> value`` over the ranks (``op`` "min" or "max").

        Returns:
            ``(batch, metrics)``: ``batch`` has exactly ``need`` groups (the earliest kept), or is None while the
            buffer holds fewer; ``metrics`` has ``kept_fraction`` (groups passing the filter this round),
            ``kept_whole`` (1.0 when the round was kept whole because no group passed) and, with a batch,
            ``tries`` (rounds it took).

        Raises:
            RuntimeError: the buffer is still short after ``max_tries`` rounds (the state is left as is).
        """
        keep = dynamic_sampling_keep(exp.accuracy, exp.group_ids, self.low, self.high)  # (N,) bool
        metrics = {"kept_fraction": float(keep.float().mean()), "kept_whole": 0.0}
        if self.keep_all_when_none_pass and int(all_reduce(int(keep.any()), "max")) == 0:
            keep = torch.ones_like(
                keep
            )  # no group passed on any rank: the released trainer keeps the whole round
            metrics["kept_whole"] = 1.0
        self.buffer.append(exp.select(keep))
        self.tries += 1
        have = sum(len(e) for e in self.buffer) // self.group_size
        have = int(all_reduce(have, "min"))  # ranks update together (matching collectives)
        if have < need:
            if self.tries >= self.max_tries:
                raise RuntimeError(
                    f"DAPO dynamic sampling: only {have}/{need} groups with "
                    f"{self.low} < mean accuracy < {self.high} after {self.tries} rollout batches "
                    "(algo.dynamic_sampling.max_tries). The task is too easy or too hard for the policy: "
                    "check accuracy, set algo.dynamic_sampling.keep_all_when_none_pass=true (the released "
                    "code's fallback), or disable with algo.dynamic_sampling.enabled=false."
                )
            return None, metrics
        metrics["tries"] = float(self.tries)
        batch = Experience.cat(self.buffer).select(list(range(need * self.group_size)))
        self.buffer, self.tries = [], 0
        return batch, metrics

    def state_dict(self) -> dict[str, Any]:
        """``{"buffer": [experience states], "tries": int}`` (loads with ``weights_only=True``)."""
        return {"buffer": [experience_state(e) for e in self.buffer], "tries": self.tries}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer = [experience_from_state(e) for e in state["buffer"]]
        self.tries = int(state["tries"])
