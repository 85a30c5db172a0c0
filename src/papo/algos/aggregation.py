"""Masked reductions and the ONE loss-aggregation function every loss term uses.

Every loss component (policy gradient, reference KL, perception KL, entropies) produces a per-token
matrix ``loss_mat`` (B, T) and reduces it with :func:`aggregate_loss` over the same response mask, so all
terms share a mask and a normaliser (verl's ``agg_loss``).

Padding never contributes: masked-out positions are *selected away* with ``torch.where`` (not only
multiplied by 0), so even inf/NaN values at padding positions leave the result and the gradient finite,
and their gradient is exactly 0. An empty mask gives 0 (not NaN), still attached to the graph.

Differences from verl/EasyR1:

* ``seq-mean-token-mean`` and ``seq-mean-token-sum`` average over the sequences that have at least one
  response token (verl's ``seq-mean-token-sum`` counts empty rows too).
* ``seq-mean-token-sum-norm`` divides by ``B * L`` (mean over sequences of the per-sequence sum divided by
  a constant length ``L``); older verl divided the batch sum by ``L`` only. ``L`` is ``norm_len`` when given
  (the trainer passes ``rollout.max_new_tokens``, verl's ``loss_scale_factor`` / max response length), else
  ``mask.shape[-1]``, which in training is the LONGEST response of the batch and so changes step to step.
* ``num_tokens`` / ``num_seqs`` overrides let a caller use the global token / sequence count of a
  mini-batch split into micro-batches (gradient accumulation gives the same gradient as one big batch).

How a mini-batch split into micro-batches is normalised (``algo.loss_normalizer``) is
:func:`micro_batch_normalization`: the released actor's per-micro-batch mean divided by the number of
gradient-accumulation micro-batches (``micro_batch_mean``), or one token mean over the whole mini-batch on all
ranks (``global_token_mean``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from papo.algos.registry import AGG_MODES, AGGREGATIONS, accepts_kwarg

__all__ = [
    "AGG_MODES",
    "LOSS_NORMALIZERS",
    "aggregate_loss",
    "masked_max",
    "masked_mean",
    "masked_min",
    "masked_var",
    "micro_batch_normalization",
    "zero_padding",
]

#: ``algo.loss_normalizer`` values (see :func:`micro_batch_normalization`)
LOSS_NORMALIZERS: tuple[str, ...] = ("micro_batch_mean", "global_token_mean")


def _select(x: Tensor, mask: Tensor) -> Tensor:
    """``x * mask`` on mask > 0 and exactly 0 elsewhere (NaN/inf at padding cannot leak)."""
    return torch.where(mask > 0, x * mask.to(x.dtype), torch.zeros((), dtype=x.dtype, device=x.device))


def zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` on mask > 0, exactly 0 elsewhere; its gradient at padding is exactly 0.

    Apply to log-probs before any nonlinearity (exp, differences of -inf) so that garbage at padding
    positions cannot produce NaN gradients through ``0 * NaN`` in the backward pass.
    """
    return torch.where(mask > 0, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``; ``num`` (which is 0 for an empty mask) where ``den <= 0``."""
    return num / torch.where(den > 0, den, torch.ones_like(den))


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask > 0`` (float masks act as weights).

    mean = sum(x * m) / sum(m); 0 where ``sum(m) == 0`` (no NaN). ``dim=None`` reduces everything to a
    scalar; an int reduces that dimension only.

    Shapes: ``x`` and ``mask`` broadcastable, typically (B, T).
    """
    num = _select(x, mask).sum() if dim is None else _select(x, mask).sum(dim)  # () or reduced
    den = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)  # () or reduced
    return _safe_div(num, den)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the positions where ``mask > 0`` (binary mask), a scalar.

    var = sum(m (x - mean)^2) / (n - 1) with n = sum(m) (``unbiased=True``, Bessel's correction, like
    ``torch.var``) or / n. Returns 0 when there are too few elements (n == 0, or n == 1 when unbiased).
    """
    mean = masked_mean(x, mask)  # ()
    sq = _select((x - mean) ** 2, mask).sum()  # ()
    n = mask.to(x.dtype).sum()  # ()
    den = n - 1 if unbiased else n
    return _safe_div(sq, den)


def _masked_extreme(x: Tensor, mask: Tensor, largest: bool) -> Tensor:
    m = (mask > 0).expand_as(x)  # (B, T)
    if m.numel() == 0:
        return torch.zeros((), dtype=x.dtype, device=x.device)
    fill = torch.full((), float("-inf") if largest else float("inf"), dtype=x.dtype, device=x.device)
    v = torch.where(m, x, fill)  # (B, T)
    v = v.amax() if largest else v.amin()  # ()
    return torch.where(m.any(), v, torch.zeros_like(v))  # no host sync


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Max of ``x`` over positions where ``mask > 0``; 0 for an empty mask. A scalar."""
    return _masked_extreme(x, mask, largest=True)


def masked_min(x: Tensor, mask: Tensor) -> Tensor:
    """Min of ``x`` over positions where ``mask > 0``; 0 for an empty mask. A scalar."""
    return _masked_extreme(x, mask, largest=False)


def _as_count(n: int | float | Tensor, like: Tensor) -> Tensor:
    """A normaliser given by the caller as a 0-dim tensor; counts below 1 are raised to 1 (an empty
    global batch then gives 0, not NaN)."""
    return torch.as_tensor(n, dtype=like.dtype, device=like.device).clamp(min=1.0)


@AGGREGATIONS.register("token-mean")
def _token_mean(loss_mat: Tensor, mask: Tensor, num_tokens=None, num_seqs=None, norm_len=None) -> Tensor:
    """sum_{b,t} m l / sum_{b,t} m (or / num_tokens). DAPO's token-level loss; EasyR1/PAPO default."""
    total = _select(loss_mat, mask).sum()  # ()
    if num_tokens is not None:
        return total / _as_count(num_tokens, total)
    return _safe_div(total, mask.to(loss_mat.dtype).sum())


def _seq_mean(seq_values: Tensor, seq_valid: Tensor, num_seqs) -> Tensor:
    """Mean of ``seq_values`` (B,) over valid sequences (or divided by ``num_seqs``)."""
    total = torch.where(seq_valid, seq_values, torch.zeros_like(seq_values)).sum()  # ()
    if num_seqs is not None:
        return total / _as_count(num_seqs, total)
    return _safe_div(total, seq_valid.to(total.dtype).sum())


@AGGREGATIONS.register("seq-mean-token-mean")
def _seq_mean_token_mean(
    loss_mat: Tensor, mask: Tensor, num_tokens=None, num_seqs=None, norm_len=None
) -> Tensor:
    """mean_i [ sum_t m l / sum_t m ] over sequences with >= 1 token. GRPO paper's 1/|o_i| form."""
    seq_len = mask.to(loss_mat.dtype).sum(-1)  # (B,)
    seq_sum = _select(loss_mat, mask).sum(-1)  # (B,)
    return _seq_mean(_safe_div(seq_sum, seq_len), seq_len > 0, num_seqs)


@AGGREGATIONS.register("seq-mean-token-sum")
def _seq_mean_token_sum(
    loss_mat: Tensor, mask: Tensor, num_tokens=None, num_seqs=None, norm_len=None
) -> Tensor:
    """mean_i [ sum_t m l ] over sequences with >= 1 token. Dr. GRPO (no length normalisation)."""
    seq_len = mask.to(loss_mat.dtype).sum(-1)  # (B,)
    seq_sum = _select(loss_mat, mask).sum(-1)  # (B,)
    return _seq_mean(seq_sum, seq_len > 0, num_seqs)


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def _seq_mean_token_sum_norm(
    loss_mat: Tensor, mask: Tensor, num_tokens=None, num_seqs=None, norm_len=None
) -> Tensor:
    """sum_{b,t} m l / (B * L), L = ``norm_len`` (a constant: Dr. GRPO's normaliser, verl) or, when None,
    ``mask.shape[-1]``."""
    total = _select(loss_mat, mask).sum()  # ()
    n_seqs = mask.shape[0] if num_seqs is None else num_seqs
    length = mask.shape[-1] if norm_len is None else norm_len
    return total / (_as_count(n_seqs, total) * _as_count(length, total))


assert set(AGG_MODES) == set(AGGREGATIONS.names()), "AGG_MODES out of sync with AGGREGATIONS"


def aggregate_loss(
    loss_mat: Tensor,
    mask: Tensor,
    mode: str,
    num_tokens: int | float | Tensor | None = None,
    num_seqs: int | float | Tensor | None = None,
    norm_len: int | float | None = None,
) -> Tensor:
    """Reduce a per-token loss matrix to a scalar over the response tokens.

    Modes (``l`` = ``loss_mat``, ``m`` = ``mask``, ``B, T = mask.shape``):

    * ``"token-mean"``: sum(l m) / sum(m); with ``num_tokens`` given: sum(l m) / num_tokens (the global
      token count across micro-batches). DAPO (Yu et al. 2025, arXiv 2503.14476) and the PAPO default.
    * ``"seq-mean-token-mean"``: mean over sequences (with >= 1 token) of the per-sequence masked mean;
      the GRPO paper's 1/G sum_i 1/|o_i| sum_t form (Shao et al. 2024, arXiv 2402.03300).
    * ``"seq-mean-token-sum"``: mean over sequences (with >= 1 token) of the per-sequence masked sum;
      Dr. GRPO (Liu et al. 2025, arXiv 2503.20783).
    * ``"seq-mean-token-sum-norm"``: sum(l m) / (B L), i.e. each sequence's sum divided by a constant
      length L = ``norm_len`` (Dr. GRPO: the maximum response length), or T when ``norm_len`` is None.

    ``num_tokens`` is used by ``token-mean`` only (ignored by the other modes); ``num_seqs`` replaces the
    number of sequences in the three ``seq-mean-*`` modes; ``norm_len`` is used by
    ``seq-mean-token-sum-norm`` only. Counts below 1 are treated as 1.

    Pass ``norm_len`` in training: T (the padded width) is the longest response of the batch, so without
    it the normaliser of ``seq-mean-token-sum-norm`` changes from step to step.

    Args:
        loss_mat: (B, T) per-token values.
        mask: (B, T) bool or float, 1 on response tokens only.
        mode: one of ``AGG_MODES``.
        num_tokens, num_seqs: global counts of a mini-batch split into micro-batches (see above).
        norm_len: constant length L of ``seq-mean-token-sum-norm`` (e.g. ``rollout.max_new_tokens``).

    Returns:
        A 0-dim tensor, attached to ``loss_mat``'s graph; 0 for an empty mask.

    Raises:
        ValueError: unknown ``mode`` (the message lists the valid modes).
    """
    if loss_mat.shape != mask.shape:
        raise ValueError(f"loss_mat {tuple(loss_mat.shape)} and mask {tuple(mask.shape)} must match")
    fn = AGGREGATIONS.get(mode)
    if norm_len is not None and accepts_kwarg(fn, "norm_len"):
        return fn(loss_mat, mask, num_tokens=num_tokens, num_seqs=num_seqs, norm_len=norm_len)
    return fn(loss_mat, mask, num_tokens=num_tokens, num_seqs=num_seqs)


def micro_batch_normalization(
    normalizer: str,
    agg_mode: str,
    *,
    micro_rows: int,
    mini_rows: int,
    num_micro: int,
    tokens_per_rank: float | None = None,
) -> tuple[float | None, float]:
    """How one micro-batch's loss terms are normalised when a mini-batch is split into micro-batches whose
    losses are summed into one gradient (gradient accumulation).

    Returns ``(num_tokens, scale)``: every term of the micro-batch is ``aggregate_loss(..., num_tokens=num_tokens)``
    and the micro-batch's total loss is multiplied by ``scale`` before the backward pass.

    * ``"micro_batch_mean"`` (the released actor, ``dp_actor.update_policy``): each term is aggregated over the
      micro-batch alone (``token-mean``: its own masked mean) and the micro-batch loss is divided by the number
      of micro-batches: ``(None, 1 / num_micro)``. A token's weight then depends on how many tokens share its
      micro-batch, so the update depends on how the mini-batch is split (micro-batch size and composition).
    * ``"global_token_mean"``: ``token-mean`` terms divide by the token count of the whole mini-batch, all
      micro-batches and all ranks (``tokens_per_rank`` = that count / world size, since data parallelism averages
      the ranks' gradients): ``(tokens_per_rank, 1)``; every token weighs alike whatever micro-batch it is in.
      Other aggregations (sequence means) weight each micro-batch by its share of the mini-batch's sequences:
      ``(None, micro_rows / mini_rows)``.

    Both coincide when every micro-batch holds the same number of response tokens.

    Raises:
        ValueError: unknown ``normalizer`` (the message lists the valid ones), or ``global_token_mean`` with
            ``token-mean`` and no ``tokens_per_rank``.
    """
    if normalizer == "micro_batch_mean":
        return None, 1.0 / max(int(num_micro), 1)
    if normalizer == "global_token_mean":
        if agg_mode != "token-mean":
            return None, micro_rows / max(int(mini_rows), 1)
        if tokens_per_rank is None:
            raise ValueError(
                "global_token_mean with token-mean needs tokens_per_rank (the mini-batch's tokens)"
            )
        return float(tokens_per_rank), 1.0
    raise ValueError(f"algo.loss_normalizer={normalizer!r} is unknown; valid: {list(LOSS_NORMALIZERS)}")
