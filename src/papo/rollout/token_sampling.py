"""Next-token sampling on logits: temperature, top-k, top-p (nucleus) and an inverse-CDF draw.

Pure functions on tensors, used by the lean decode loop (:mod:`papo.rollout.lean_decode`). They keep Hugging
Face ``generate``'s semantics exactly (checked against its ``TemperatureLogitsWarper``, ``TopKLogitsWarper``
and ``TopPLogitsWarper`` in ``tests/test_rollout_lean_decode.py``), in the same order (temperature, top-k,
top-p), with two cheaper steps:

* top-p sorts the probabilities with NumPy on CPU tensors (``torch.sort`` along the last dimension of a small
  (N, V) tensor costs ~0.7 ms on these 2-core machines, ``np.sort`` ~0.02 ms) and keeps every token whose
  probability is at least that of the first token HF keeps (the two differ only on exact ties at the cut);
* the draw inverts the cumulative distribution with ``searchsorted`` (one uniform per row) instead of
  ``torch.multinomial`` (~0.4 ms for 32 x 512 here). Same distribution; a different random stream from HF's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def filter_logits(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Apply temperature, then top-k, then top-p to ``logits`` (N, V); removed tokens get ``-inf``.

    ``temperature`` > 0 divides the logits (1.0 = unchanged); ``top_k`` > 0 keeps the k largest (ties with
    the k-th kept); ``top_p`` < 1 removes the least likely tokens whose cumulative probability, summed from
    the least likely up, stays <= 1 - top_p (at least one token is always kept). Returns a new tensor.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0 for sampling (use argmax for greedy)")
    if temperature != 1.0:
        logits = logits / temperature
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        probs = logits.softmax(-1)
        if probs.device.type == "cpu":
            ascending = torch.from_numpy(np.sort(probs.detach().numpy(), axis=-1))
        else:
            ascending = torch.sort(probs, dim=-1).values
        n_removed = (ascending.cumsum(-1) <= 1 - top_p).sum(-1, keepdim=True).clamp(max=vocab - 1)
        first_kept = ascending.gather(-1, n_removed)  # (N, 1) the smallest probability that survives
        logits = logits.masked_fill(probs < first_kept, float("-inf"))
    return logits


def sample_tokens(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One token per row from ``softmax(logits)`` (N, V) -> (N,) long, by inverting the cumulative
    distribution at a uniform draw. Rows must have at least one finite logit."""
    cdf = logits.softmax(-1).cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, device=cdf.device, dtype=cdf.dtype, generator=generator)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return idx.clamp_(max=cdf.shape[-1] - 1).squeeze(-1)
