"""The loss-component interface every term of the objective implements.

A component receives :class:`LossInputs` (per-token tensors of one micro-batch) and returns
``(loss_to_minimise, metrics)``. The LightningModule sums the components; it never flips signs or
special-cases a term. A component declares which model outputs it needs (``needs_masked``,
``masked_grad``, ``needs_ref``, ``needs_entropy``) so the module runs only the forwards that active components use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from papo.algos import aggregate_loss


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
    entropies: Tensor | None = None  # (B, T) full-vocabulary entropy given the real image, with gradient

    @property
    def local_scale(self) -> float:
        """Factor turning a value aggregated with the GLOBAL token count into this micro-batch's own
        token mean (for logging intensive metrics that the module averages over micro-batches)."""
        if self.agg_mode != "token-mean" or self.num_tokens is None:
            return 1.0
        local = float(self.response_mask.sum())
        return self.num_tokens / local if local > 0 else 0.0

    def aggregate(self, per_token: Tensor) -> Tensor:
        """``per_token`` (B, T) aggregated over the response tokens as every term is: this micro-batch's mask,
        ``agg_mode``, the mini-batch's token count and ``norm_len`` (:func:`papo.algos.aggregate_loss`)."""
        return aggregate_loss(
            per_token, self.response_mask, self.agg_mode, num_tokens=self.num_tokens, norm_len=self.norm_len
        )


class LossComponent:
    """Base class. Subclasses set ``name`` and implement :meth:`__call__`."""

    name: str = "component"
    needs_masked: bool = False  # needs log-probs given the masked image
    masked_grad: bool = False  # ... recomputed with gradient in every micro-batch
    needs_ref: bool = False  # needs the reference model's log-probs
    needs_entropy: bool = False  # needs the full-vocabulary entropies (LossInputs.entropies)

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    @property
    def active(self) -> bool:
        """False when the component contributes nothing (e.g. a zero coefficient)."""
        return True


SCHEDULES: tuple[str, ...] = ("fixed", "linear")


@dataclass(frozen=True)
class GammaSchedule:
    """PAPO's gamma schedule (the released ``kl_prcp_schedule``; ``loss.schedule``, ``loss.gamma_start``,
    ``loss.gamma_end``, ``loss.anneal_fraction``), shared by the perception KL and the double entropy.

    ``fixed``: gamma throughout. ``linear`` (the released ``annealing`` / ``AnnealingKLController``): from
    ``start`` (None: ``gamma``) to ``end`` linearly over the first ``anneal_fraction`` of training, then ``end``:
    gamma(p) = start + (end - start) * min(p / anneal_fraction, 1).

    The entropy coefficients are scaled by the released actor's ratio gamma(p) / gamma, where ``gamma`` is the
    configured coefficient (``kl_prcp_coef``); the released code applies it only when the perception KL is on,
    so with ``gamma`` = 0 the ratio is 1.
    """

    gamma: float
    schedule: str = "fixed"
    start: float | None = None
    end: float = 0.0
    anneal_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown coefficient schedule {self.schedule!r}; valid: {list(SCHEDULES)}")
        if self.schedule == "linear" and not 0 < self.anneal_fraction <= 1:
            raise ValueError(f"loss.anneal_fraction={self.anneal_fraction} must be in (0, 1]")

    def gamma_at(self, progress: float) -> float:
        """gamma after the schedule at ``progress`` (fraction of training done, in [0, 1])."""
        if self.schedule == "fixed":
            return self.gamma
        start = self.gamma if self.start is None else self.start
        return start + (self.end - start) * min(max(progress, 0.0) / self.anneal_fraction, 1.0)

    def entropy_factor(self, progress: float) -> float:
        """gamma(p) / gamma: the factor of both entropy coefficients (1 when gamma is 0 or fixed)."""
        if self.schedule == "fixed" or self.gamma <= 0:
            return 1.0
        return self.gamma_at(progress) / self.gamma


def scalar(x: Tensor | float) -> float:
    """Detach a 0-dim tensor (or pass a float) to a Python float for logging."""
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


class MetricPool:
    """Combines per-micro-batch metric values into one value per training step.

    The module adds each micro-batch's metrics with a weight (its response-token count; 1 for per-step
    values such as the grad norm). Keys combine by their suffix:

    * ``*_max`` / ``*_min``: max / min over the micro-batches with weight > 0 (a token-weighted average of
      micro-batch maxima would not be the step's max);
    * ``*_var`` with a sibling ``*_mean`` in the same :meth:`add` call: the variance of all pooled tokens,
      from each micro-batch's (count, mean, unbiased variance) (Chan et al.'s parallel formula: within-
      plus between-micro-batch variance; an average of micro-batch variances misses the latter);
    * anything else: the weighted mean.
    """

    def __init__(self) -> None:
        self._sum: dict[str, float] = {}
        self._weight: dict[str, float] = {}
        self._extreme: dict[str, float] = {}
        self._var: dict[str, tuple[float, float, float]] = {}  # key -> (count, mean, sum of sq. deviations)
        self._seen: set[str] = set()  # every key added (0.0 if it only came with weight 0)

    def add(self, metrics: dict[str, float], weight: float, prefix: str = "") -> None:
        """Add one micro-batch's ``metrics`` (keys get ``prefix``) with ``weight``."""
        for key, value in metrics.items():
            name, value = prefix + key, float(value)
            self._seen.add(name)
            if key.endswith(("_max", "_min")):
                if weight > 0:
                    pick = max if key.endswith("_max") else min
                    self._extreme[name] = pick(self._extreme.get(name, value), value)
            elif key.endswith("_var") and key[:-4] + "_mean" in metrics:
                if weight > 0:
                    self._add_var(name, weight, float(metrics[key[:-4] + "_mean"]), value)
            else:
                self._sum[name] = self._sum.get(name, 0.0) + value * weight
                self._weight[name] = self._weight.get(name, 0.0) + weight

    def _add_var(self, name: str, n_b: float, mean_b: float, var_b: float) -> None:
        m2_b = var_b * max(n_b - 1.0, 0.0)
        n_a, mean_a, m2_a = self._var.get(name, (0.0, 0.0, 0.0))
        n = n_a + n_b
        delta = mean_b - mean_a
        self._var[name] = (n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n)

    def compute(self) -> dict[str, float]:
        """The step's value of every key added."""
        out = dict.fromkeys(self._seen, 0.0)
        out.update({k: self._sum[k] / max(self._weight[k], 1e-9) for k in self._sum})
        out.update(self._extreme)
        out.update({k: m2 / (n - 1.0) if n > 1 else 0.0 for k, (n, _, m2) in self._var.items()})
        return out
