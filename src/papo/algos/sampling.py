"""DAPO batch shaping (Yu et al. 2025, arXiv 2503.14476): dynamic sampling and soft overlong punishment.

* Dynamic sampling keeps a prompt's group only if its mean score lies strictly inside (low, high): groups
  where every response is right (or wrong) have zero GRPO advantage and give no gradient. PAPO-D uses
  the mean *accuracy* with (0.01, 0.99); the refill loop ("sample again until the batch is full, give up
  after N tries") lives in the trainer, this is only the per-element filter.
* Soft overlong punishment: a length-dependent reward penalty. DAPO has it; PAPO's runs did not use it
  (option, off by default in the configs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from papo.algos.advantages import group_stats

__all__ = ["dynamic_sampling_keep", "overlong_penalty"]


def dynamic_sampling_keep(scores: Tensor, group_ids: Tensor, low: float = 0.01, high: float = 0.99) -> Tensor:
    """DAPO dynamic-sampling filter.

    keep_i = low < mean_{j in group(i)} score_j < high  (strict on both sides)

    Args:
        scores: (N,) per-response scores (e.g. accuracy in {0, 1}).
        group_ids: (N,) long group ids (arbitrary values and order).
        low, high: the open interval of group means to keep.

    Returns:
        (N,) bool; every member of a group gets the same value.
    """
    mean, _, _, _ = group_stats(scores, group_ids)  # (N,)
    return (mean > low) & (mean < high)  # (N,)


def overlong_penalty(
    response_lengths: Tensor,
    max_response_length: int,
    buffer_length: int,
    penalty_factor: float = 1.0,
) -> Tensor:
    """DAPO soft overlong punishment, a reward term <= 0 per response.

    With L_max = ``max_response_length``, L_buf = ``buffer_length``:
        0                                          if |o| <= L_max - L_buf
        -penalty_factor * (|o| - (L_max - L_buf)) / L_buf   if L_max - L_buf < |o| <= L_max
        -penalty_factor                            if |o| > L_max
    (``buffer_length = 0``: 0 up to L_max, -penalty_factor beyond.)

    Args:
        response_lengths: (N,) response lengths in tokens.
        max_response_length: L_max.
        buffer_length: L_buf, 0 <= L_buf <= L_max.
        penalty_factor: size of the full penalty (>= 0).

    Returns:
        (N,) float penalties.
    """
    if not 0 <= buffer_length <= max_response_length:
        raise ValueError(
            f"need 0 <= buffer_length <= max_response_length, got {buffer_length}, {max_response_length}"
        )
    lengths = response_lengths.to(torch.get_default_dtype())  # (N,)
    expected = max_response_length - buffer_length
    if buffer_length == 0:
        frac = (lengths > max_response_length).to(lengths.dtype)  # (N,)
    else:
        frac = ((lengths - expected) / buffer_length).clamp(min=0.0, max=1.0)  # (N,)
    return -penalty_factor * frac  # (N,)
