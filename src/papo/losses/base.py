"""The loss-component interface every term of the objective implements.

A component receives :class:`LossInputs` (per-token tensors of one micro-batch) and returns
``(loss_to_minimise, metrics)``. The LightningModule sums the components; it never flips signs or
special-cases a term. A component declares which model outputs it needs (``needs_masked``,
``masked_grad``, ``needs_ref``) so the module runs only the forwards that active components use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LossInputs:
    """Per-token inputs of one micro-batch. B sequences, T response positions."""

    logps: Tensor  # (B, T) log pi_theta(o_t | q, I, o_<t), with gradient
    old_logps: Tensor  # (B, T) rollout-policy log-probs, no grad
    advantages: Tensor  # (B, T) advantages broadcast over tokens
    response_mask: Tensor  # (B, T) 1 on response tokens only
    agg_mode: str = "token-mean"  # shared by every term: one mask, one normaliser
    num_tokens: float | None = None  # global token count of the mini-batch (token-mean denominator)
    ref_logps: Tensor | None = None  # (B, T) frozen reference model, no grad
    logps_masked: Tensor | None = None  # (B, T) policy given the masked image (detached or with grad)
    progress: float = 0.0  # fraction of training done, in [0, 1] (coefficient schedules)
    norm_len: int | None = None  # constant length L of seq-mean-token-sum-norm (rollout.max_new_tokens)

    @property
    def local_scale(self) -> float:
        """Factor turning a value aggregated with the GLOBAL token count into this micro-batch's own
        token mean (for logging intensive metrics that the module averages over micro-batches)."""
        if self.agg_mode != "token-mean" or self.num_tokens is None:
            return 1.0
        local = float(self.response_mask.sum())
        return self.num_tokens / local if local > 0 else 0.0


class LossComponent:
    """Base class. Subclasses set ``name`` and implement :meth:`__call__`."""

    name: str = "component"
    needs_masked: bool = False  # needs log-probs given the masked image
    masked_grad: bool = False  # ... recomputed with gradient in every micro-batch
    needs_ref: bool = False  # needs the reference model's log-probs

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    @property
    def active(self) -> bool:
        """False when the component contributes nothing (e.g. a zero coefficient)."""
        return True


def schedule_factor(schedule: str, anneal_fraction: float, progress: float) -> float:
    """Coefficient multiplier: ``fixed`` -> 1; ``linear`` -> 1 - progress / anneal_fraction, floored at 0."""
    if schedule == "fixed":
        return 1.0
    if schedule == "linear":
        if anneal_fraction <= 0:
            return 0.0
        return max(0.0, 1.0 - progress / anneal_fraction)
    raise ValueError(f"unknown coefficient schedule {schedule!r}; valid: ['fixed', 'linear']")


def scalar(x: Tensor | float) -> float:
    """Detach a 0-dim tensor (or pass a float) to a Python float for logging."""
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)
