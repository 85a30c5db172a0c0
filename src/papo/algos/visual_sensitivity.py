"""Per-token visual-sensitivity signals: how much a response token depends on the real image.

Two forward passes score the same response: one given the real image I, one given an altered view I'
(masked, noised, blank, another image). For response token t (B sequences, T response tokens):

Sampled-token signals, from the log-probs of the SAMPLED token only (no vocabulary-sized tensor), with
l_t = log pi(o_t | I) and l'_t = log pi(o_t | I') (:func:`sampled_token_sensitivity`):

* ``k1``:  l_t - l'_t
* ``abs``: |l_t - l'_t|
* ``k3``:  d = clamp(l'_t - l_t, -20, 20), clamp(exp(d) - d - 1, -10, 10): the k3 estimator with the
  altered view in the role of the reference. It is PAPO's per-token KL_prcp (``direction="masked_as_ref"``)
  and the signal of VPPO's released code (which clamps to [0, 10]; exp(d) - d - 1 >= 0, so the two clamps
  agree except for rounding at d ~ 0).

Full-distribution signals over the vocabulary, p_t = pi(. | I, o_<t) and q_t = pi(. | I', o_<t) at
temperature tau (:func:`distribution_sensitivity` from two logit tensors,
:func:`distribution_sensitivity_from_hidden` from two hidden-state tensors and the LM head):

* ``kl``:          KL(p_t || q_t) = sum_v p_t(v) (log p_t(v) - log q_t(v))  (the VPPO paper's definition of
  token visual dependency: the real-image distribution against the perturbed one)
* ``kl_alt_real``: KL(q_t || p_t)
* ``jsd``:         Jensen-Shannon divergence, 0.5 KL(p || m) + 0.5 KL(q || m), m = (p + q) / 2 (in nats,
  bounded by log 2)

The full-distribution signals visit the response tokens in chunks of ``chunk_size`` positions: at most
``chunk_size x V`` fp32 values per view exist at once (the logits are upcast per chunk; from hidden states
the logits of a chunk are made with the LM head in its own dtype, then upcast), never a (B x T x V) fp32
tensor. Only positions with ``mask > 0`` are computed; every signal is exactly 0 at padding. The functions
differentiate through their inputs; signals that only steer selection or shaping are computed under
``torch.no_grad()`` by the caller (VPPO computes them once per rollout batch from detached log-probs).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from papo.algos.aggregation import zero_padding
from papo.algos.kl import kl_estimate
from papo.algos.registry import Registry

__all__ = [
    "DISTRIBUTION_SIGNALS",
    "SAMPLED_SIGNALS",
    "distribution_sensitivity",
    "distribution_sensitivity_from_hidden",
    "sampled_token_sensitivity",
]

SAMPLED_SIGNALS: tuple[str, ...] = ("k1", "abs", "k3")
#: name -> fn(logp (N, V), logq (N, V)) -> (N,) divergence between the real (p) and altered (q) view
DISTRIBUTION_SIGNALS: Registry = Registry("full-distribution sensitivity signal")


def _kl_rows(logp: Tensor, logq: Tensor) -> Tensor:
    """sum_v p (log p - log q) per row; 0 * (anything) where p = 0 (a -inf logit never gives NaN)."""
    p = logp.exp()  # (N, V)
    term = torch.where(p > 0, p * (logp - logq), torch.zeros((), dtype=p.dtype, device=p.device))
    return term.sum(-1)  # (N,)


@DISTRIBUTION_SIGNALS.register("kl")
def _kl_real_alt(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p || q), p = real-image distribution."""
    return _kl_rows(logp, logq)


@DISTRIBUTION_SIGNALS.register("kl_alt_real")
def _kl_alt_real(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(q || p)."""
    return _kl_rows(logq, logp)


@DISTRIBUTION_SIGNALS.register("jsd")
def _jsd(logp: Tensor, logq: Tensor) -> Tensor:
    """0.5 KL(p || m) + 0.5 KL(q || m), m = (p + q) / 2."""
    logm = torch.logaddexp(logp, logq) - math.log(2.0)  # (N, V)
    return 0.5 * (_kl_rows(logp, logm) + _kl_rows(logq, logm))


def sampled_token_sensitivity(logps: Tensor, logps_alt: Tensor, mask: Tensor, kind: str = "k3") -> Tensor:
    """Per-token sensitivity from sampled-token log-probs (see the module doc).

    Args:
        logps: (B, T) log pi(o_t | I) given the real image.
        logps_alt: (B, T) log pi(o_t | I') of the same tokens given the altered view.
        mask: (B, T) response mask.
        kind: ``"k1"``, ``"abs"`` or ``"k3"``.

    Returns:
        (B, T) signal, exactly 0 where ``mask == 0``.

    Raises:
        ValueError: unknown ``kind`` (names the valid ones) or mismatched shapes.
    """
    if kind not in SAMPLED_SIGNALS:
        raise ValueError(
            f"Unknown sampled-token sensitivity signal '{kind}'. Valid names: {list(SAMPLED_SIGNALS)}"
        )
    if logps.shape != logps_alt.shape or logps.shape != mask.shape:
        raise ValueError(
            f"logps {tuple(logps.shape)}, logps_alt {tuple(logps_alt.shape)} and mask {tuple(mask.shape)} must match"
        )
    # both inputs are 0 at padding, so every estimator is exactly 0 there
    return kl_estimate(zero_padding(logps, mask), zero_padding(logps_alt, mask), kind)  # (B, T)


def _chunked(
    logits_at: Callable[[Tensor, int], Tensor],
    mask: Tensor,
    kind: str,
    temperature: float,
    chunk_size: int,
) -> Tensor:
    """Shared loop: ``logits_at(flat_positions, view)`` gives (n, V) logits of view 0 (real) or 1 (altered)."""
    divergence = DISTRIBUTION_SIGNALS.get(kind)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    positions = (mask > 0).flatten().nonzero().squeeze(1)  # (n,) flat indices of response tokens
    values = []
    for start in range(0, positions.numel(), chunk_size):
        idx = positions[start : start + chunk_size]  # (c,)
        logp = F.log_softmax(logits_at(idx, 0).float() / temperature, dim=-1)  # (c, V) fp32
        logq = F.log_softmax(logits_at(idx, 1).float() / temperature, dim=-1)  # (c, V) fp32
        values.append(divergence(logp, logq))  # (c,)
    out = torch.zeros(mask.numel(), dtype=torch.float32, device=mask.device)  # (B*T,)
    if values:
        out = out.index_put((positions,), torch.cat(values))  # out of place: keeps the graph
    return out.view(mask.shape)  # (B, T)


def distribution_sensitivity(
    logits: Tensor,
    logits_alt: Tensor,
    mask: Tensor,
    kind: str = "kl",
    temperature: float = 1.0,
    chunk_size: int = 256,
) -> Tensor:
    """Per-token divergence between the real- and altered-view next-token distributions, from logits.

    Args:
        logits: (B, T, V) next-token logits at the response positions given the real image (any float
            dtype; each chunk is upcast to fp32).
        logits_alt: (B, T, V) the same given the altered view.
        mask: (B, T) response mask; only positions with ``mask > 0`` are computed.
        kind: ``"kl"``, ``"kl_alt_real"`` or ``"jsd"`` (see the module doc).
        temperature: both distributions are softmax(logits / temperature) (the rollout temperature).
        chunk_size: response positions per chunk (bounds the fp32 working set to ``chunk_size x V``).

    Returns:
        (B, T) fp32 signal, 0 at padding.

    Raises:
        ValueError: unknown ``kind``, mismatched shapes, ``temperature <= 0`` or ``chunk_size < 1``.
    """
    if logits.shape != logits_alt.shape or logits.shape[:2] != mask.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)}, logits_alt {tuple(logits_alt.shape)} and mask {tuple(mask.shape)} "
            "must agree ((B, T, V), (B, T, V), (B, T))"
        )
    flat = (logits.flatten(0, 1), logits_alt.flatten(0, 1))  # (B*T, V) views, no copy
    return _chunked(lambda idx, view: flat[view][idx], mask, kind, temperature, chunk_size)


def distribution_sensitivity_from_hidden(
    hidden: Tensor,
    hidden_alt: Tensor,
    lm_head_weight: Tensor,
    mask: Tensor,
    kind: str = "kl",
    lm_head_bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 256,
) -> Tensor:
    """As :func:`distribution_sensitivity`, from the last hidden states and the LM head: the logits of one
    chunk at a time are ``hidden[idx] @ W^T (+ b)`` (in the head's dtype, then upcast), so the vocabulary-
    sized logits of the whole batch never exist.

    Args:
        hidden: (B, T, H) final hidden states (after the last norm) that predict the response tokens, real
            image.
        hidden_alt: (B, T, H) the same given the altered view.
        lm_head_weight: (V, H) output projection (tied to the embeddings on Qwen2.5-VL-3B).
        mask: (B, T) response mask.
        kind, temperature, chunk_size: see :func:`distribution_sensitivity`.
        lm_head_bias: optional (V,) bias.

    Returns:
        (B, T) fp32 signal, 0 at padding.
    """
    if hidden.shape != hidden_alt.shape or hidden.shape[:2] != mask.shape:
        raise ValueError(
            f"hidden {tuple(hidden.shape)}, hidden_alt {tuple(hidden_alt.shape)} and mask {tuple(mask.shape)} "
            "must agree ((B, T, H), (B, T, H), (B, T))"
        )
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"lm_head_weight {tuple(lm_head_weight.shape)} must be (V, H={hidden.shape[-1]})")
    flat = (hidden.flatten(0, 1), hidden_alt.flatten(0, 1))  # (B*T, H)

    def logits_at(idx: Tensor, view: int) -> Tensor:
        h = flat[view][idx].to(lm_head_weight.dtype)  # (c, H)
        return F.linear(h, lm_head_weight, lm_head_bias)  # (c, V)

    return _chunked(logits_at, mask, kind, temperature, chunk_size)
