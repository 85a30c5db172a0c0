"""Per-token KL estimators (Schulman 2020, "Approximating KL Divergence", joschu.net/blog/kl-approx.html).

Used for the reference-model KL (GRPO's beta term) and, with the masked-image log-probs in the role of
the reference, for PAPO's implicit perception loss. With l = log pi(o_t), l_ref = log pi_ref(o_t) of
the *sampled* token and x = l - l_ref:

* ``k1``: x                         (unbiased, high variance, can be negative)
* ``abs``: |x|
* ``k2`` (verl's "mse"): 0.5 x^2
* ``k3`` / ``low_var_kl``: d = clamp(l_ref - l, -20, 20), k = clamp(exp(d) - d - 1, -10, 10)
  (non-negative, low variance; the clamps are verl/EasyR1's and PAPO's released code's).

No clamps on k1/abs/k2 (as in verl). Note the k3 clamps zero the gradient of saturated tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from papo.algos.registry import KL_ESTIMATORS

__all__ = ["KL_ESTIMATORS", "kl_estimate"]


@KL_ESTIMATORS.register("k1")
def _k1(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k1 = l - l_ref."""
    return logps - ref_logps  # (B, T)


@KL_ESTIMATORS.register("abs")
def _abs(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """|l - l_ref|."""
    return (logps - ref_logps).abs()  # (B, T)


@KL_ESTIMATORS.register("k2")
def _k2(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k2 = 0.5 (l - l_ref)^2."""
    return 0.5 * (logps - ref_logps).square()  # (B, T)


@KL_ESTIMATORS.register("k3")
def _k3(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k3 = clamp(exp(d) - d - 1, -10, 10), d = clamp(l_ref - l, -20, 20)."""
    d = torch.clamp(ref_logps - logps, min=-20.0, max=20.0)  # (B, T)
    return torch.clamp(torch.exp(d) - d - 1.0, min=-10.0, max=10.0)  # (B, T)


KL_ESTIMATORS.register("low_var_kl")(_k3)


def kl_estimate(logps: Tensor, ref_logps: Tensor, kind: str) -> Tensor:
    """Per-token KL estimate between the policy and a reference, from sampled-token log-probs.

    Args:
        logps: (B, T) log pi(o_t) (with gradient).
        ref_logps: (B, T) log pi_ref(o_t) of the same tokens.
        kind: ``"k1"``, ``"abs"``, ``"k2"``, ``"k3"`` or ``"low_var_kl"`` (= ``"k3"``); see the module doc.

    Returns:
        (B, T) per-token values; reduce them with :func:`papo.algos.aggregate_loss`.

    Raises:
        ValueError: unknown ``kind`` (the message lists the valid kinds).
    """
    if logps.shape != ref_logps.shape:
        raise ValueError(f"logps {tuple(logps.shape)} and ref_logps {tuple(ref_logps.shape)} must match")
    return KL_ESTIMATORS.get(kind)(logps, ref_logps)
