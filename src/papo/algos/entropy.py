"""Full-vocabulary token entropy from logits (NoisyRollout's entropy bonus; the released EasyR1 / verl
``entropy_from_logits``).

H_t = -sum_v p_t(v) log p_t(v) with p_t = softmax(z_t / tau) over the tokens the sampler can emit, computed
as logsumexp(z) - sum_v p(v) z(v) on fp32 copies of the logits. PAPO's and VPPO's entropy terms are instead
the sampled-token surrogate -log p_t(o_t) (:func:`papo.algos.sampled_entropy`), which needs no vocabulary
tensor. Suppressed ids (never sampled: the image placeholder, padded vocabulary rows) get probability 0 and
add nothing, so this is the entropy of the distribution the rollouts were drawn from.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["entropy_from_logits"]


def entropy_from_logits(
    logits: Tensor, temperature: float = 1.0, suppress_ids: Tensor | None = None
) -> Tensor:
    """Entropy of softmax(logits / temperature) over the last dimension: (..., V) -> (...), fp32, >= 0.

    Differentiable; ``suppress_ids`` (token ids set to -inf first) contribute exactly 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    if suppress_ids is not None and suppress_ids.numel():
        z = z.index_fill(-1, suppress_ids.to(z.device), float("-inf"))
    logp = torch.log_softmax(z, dim=-1)  # (..., V)
    # -inf at suppressed ids: 0 * (-inf) would be NaN in the value and in the gradient, so they are replaced
    # by 0 before the product (their probability is exactly 0 either way)
    finite = torch.where(torch.isfinite(logp), logp, torch.zeros((), dtype=logp.dtype, device=logp.device))
    return -(logp.exp() * finite).sum(-1)  # (...)
