"""Next-token choice of one decode step: the rules every decode loop applies, and the sampler under them.

:func:`next_tokens` is the ONE place where a decode step turns the last position's logits into tokens:
suppressed ids can never be emitted, end-of-sequence is blocked before ``min_new_tokens``, then the argmax
(greedy) or a draw after temperature / top-k / top-p, pad for rows that already ended, and the rows that
end now are marked. The lean loop (:mod:`papo.rollout.lean_decode`) and the static-cache loop
(:mod:`papo.rollout.static_decode`) both call it, so a change to end-of-sequence handling is made here once.
It syncs nothing with the host, except one read per step with top-p (below), so a loop on a GPU can queue
its steps ahead of the device.

:func:`filter_logits` and :func:`sample_tokens` keep Hugging Face ``generate``'s semantics (checked against
its ``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and ``TopPLogitsWarper`` in
``tests/test_rollout_lean_decode.py``), in the same order (temperature, top-k, top-p), with two cheaper steps
(their per-token costs: docs/performance.md, "Speed-ups in this branch"):

* top-p keeps every token whose probability is at least that of the first token HF keeps (the two differ
  only on exact ties at the cut), and finds that token among the :data:`TOP_P_CANDIDATES` most likely ids
  (:func:`nucleus_floor`): a ``torch.topk`` instead of sorting the whole vocabulary (151,936 ids for Qwen2.5-VL)
  for every row and token. The rows whose nucleus the candidates do not hold are found on the host (one
  read per step) and only they are sorted whole, as before (with NumPy on CPU tensors: ``torch.sort`` along
  the last dimension of a small (N, V) tensor is the slower of the two there). The kept
  set is the full sort's: the cumulative sums that decide the cut add the same probabilities in another
  order, so they can differ only in the last bits, on a token whose cumulative probability lies within float
  rounding of ``1 - top_p`` (``tests/test_rollout_lean_decode.py`` compares the tokens with the full sort's);
* the draw inverts the cumulative distribution with ``searchsorted`` (one uniform per row) instead of
  ``torch.multinomial``. Same distribution; a different random stream from HF's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from papo.rollout.hf_generate import GenerationConfig

#: the top-p rule looks for the nucleus among this many most likely ids first (:func:`nucleus_floor`)
TOP_P_CANDIDATES = 1024


@dataclass(frozen=True)
class StepRules:
    """What a decode step may emit, fixed for one generate call (see :func:`next_tokens`)."""

    eos_ids: Tensor  # (E,) long, on the logits' device: every end token; each ends a row, all blocked
    # before ``min_new_tokens``
    pad_id: int  # emitted by rows that already ended
    suppress: Tensor  # (S,) long, on the logits' device: ids that are never emitted
    temperature: float = 1.0  # 0 = greedy (argmax)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    min_new_tokens: int = 0  # EOS is blocked at steps < this

    @classmethod
    def build(
        cls,
        cfg: GenerationConfig,
        eos_ids: int | Sequence[int],
        pad_id: int,
        suppress_ids: list[int],
        device: torch.device,
    ) -> StepRules:
        """The rules of a :class:`papo.rollout.hf_generate.GenerationConfig` ``cfg``; ``eos_ids``: one end
        token or several (e.g. Qwen's ``<|im_end|>`` and ``<|endoftext|>``)."""
        suppress = torch.tensor(sorted(set(suppress_ids)), dtype=torch.long, device=device)
        ends = [int(eos_ids)] if isinstance(eos_ids, int) else [int(i) for i in eos_ids]
        return cls(
            eos_ids=torch.tensor(ends, dtype=torch.long, device=device),
            pad_id=int(pad_id),
            suppress=suppress,
            temperature=float(cfg.temperature),
            top_k=int(cfg.top_k),
            top_p=float(cfg.top_p),
            min_new_tokens=int(cfg.min_new_tokens),
        )


def next_tokens(logits: Tensor, step: int, unfinished: Tensor, rules: StepRules) -> Tensor:
    """The tokens of decode step ``step`` (0-based) from the last position's ``logits`` (N, V) float.

    Suppressed ids (and every end token while ``step < rules.min_new_tokens``) are set to ``-inf`` IN PLACE
    in ``logits``; greedy (temperature 0) takes the argmax, otherwise one draw per row after
    :func:`filter_logits`. Rows whose ``unfinished`` (N,) bool is False get ``pad_id``; ``unfinished`` is
    updated IN PLACE (a row that emits any end token has ended). Returns (N,) long.
    """
    if rules.suppress.numel():
        logits[:, rules.suppress] = float("-inf")
    if step < rules.min_new_tokens:
        logits[:, rules.eos_ids] = float("-inf")
    if rules.temperature > 0:
        nxt = sample_tokens(filter_logits(logits, rules.temperature, rules.top_k, rules.top_p))
    else:
        nxt = logits.argmax(-1)
    nxt = torch.where(unfinished, nxt, torch.full_like(nxt, rules.pad_id))
    unfinished &= ~torch.isin(nxt, rules.eos_ids)
    return nxt


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
        logits = logits.masked_fill(probs < nucleus_floor(probs, top_p), float("-inf"))
    return logits


def nucleus_floor(probs: Tensor, top_p: float, candidates: int | None = None) -> Tensor:
    """The smallest probability that top-p keeps in each row of ``probs`` (N, V): (N, 1).

    HF's rule: sorted ascending, the tokens whose cumulative probability stays <= 1 - top_p are removed (at
    least one token is kept). The cut lies among a row's ``candidates`` (default :data:`TOP_P_CANDIDATES`)
    largest probabilities whenever its others add up to at most 1 - top_p; only those are sorted
    (``torch.topk``). The rows where they do not are found on the host (one read per call) and sorted whole.
    """
    vocab = probs.shape[-1]
    k = TOP_P_CANDIDATES if candidates is None else candidates
    if k >= vocab:
        return _sorted_floor(probs, top_p)
    top = torch.topk(probs, k, dim=-1).values.flip(-1)  # (N, k) the k largest, ascending
    rest = (probs.sum(-1, keepdim=True) - top.sum(-1, keepdim=True)).clamp(min=0)  # (N, 1) the others' mass
    # every other id is removed (its cumulative probability is at most `rest`): the cut is among the candidates
    n_removed = ((rest + top.cumsum(-1)) <= 1 - top_p).sum(-1, keepdim=True).clamp(max=k - 1)
    floor = top.gather(-1, n_removed)  # (N, 1)
    outside = (rest[:, 0] > 1 - top_p).nonzero().squeeze(-1)  # host read: rows whose cut lies elsewhere
    if outside.numel():
        floor[outside] = _sorted_floor(probs[outside], top_p)
    return floor


def _sorted_floor(probs: Tensor, top_p: float) -> Tensor:
    """:func:`nucleus_floor` by sorting whole rows (NumPy on CPU tensors, ``torch.sort`` elsewhere)."""
    if probs.device.type == "cpu":
        ascending = torch.from_numpy(np.sort(probs.detach().numpy(), axis=-1))
    else:
        ascending = torch.sort(probs, dim=-1).values
    n_removed = (ascending.cumsum(-1) <= 1 - top_p).sum(-1, keepdim=True).clamp(max=probs.shape[-1] - 1)
    return ascending.gather(-1, n_removed)  # (N, 1) the smallest probability that survives


def sample_tokens(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One token per row from ``softmax(logits)`` (N, V) -> (N,) long, by inverting the cumulative
    distribution at a uniform draw. Rows must have at least one finite logit."""
    cdf = logits.softmax(-1).cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, device=cdf.device, dtype=cdf.dtype, generator=generator)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return idx.clamp_(max=cdf.shape[-1] - 1).squeeze(-1)
