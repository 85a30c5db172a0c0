"""Rollouts with Hugging Face ``generate``: G sampled responses per prompt.

``rollout.decoder=generate`` selects this path; the default ``lean`` is :mod:`papo.rollout.lean_decode` (same
sampling semantics, less per-token overhead); sharded strategies always use ``generate``.

Differences from EasyR1/verl (which use vLLM): same sampling semantics (temperature, top_p, top_k,
max_new_tokens), run on the policy module itself; generation stops as soon as every sequence has emitted one
of its end tokens (HF's stopping criteria). As there, every end token of the model's generation config ends a
response (``eos_ids``: ``<|im_end|>`` and ``<|endoftext|>`` for Qwen2.5-VL), and the suppressed ids
(``suppress_ids``, :func:`papo.models.loading.generation_suppress_token_ids`) are only the image placeholder
and the padded output rows beyond the tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# rollout.decoder values: ``auto`` (default: ``static`` on a CUDA device, ``lean`` elsewhere), the static-cache
# loop with the step as a CUDA graph (papo.rollout.static_decode), the same with the step compiled by
# torch.compile first (``static_compiled``), the lean loop (papo.rollout.lean_decode) or HF ``generate`` (this
# module); papo.rollout.collect.choose_decoder picks the function
DECODERS = ("auto", "static", "static_compiled", "lean", "generate")


@dataclass
class GenerationConfig:
    """Sampling settings of one generate call."""

    max_new_tokens: int = 24
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_samples: int = 1  # sequences per prompt (G)
    synced_gpus: bool = False  # keep stepping until every rank is done (FSDP / ZeRO-3 sharded weights)
    # EOS is blocked until this many tokens were sampled (0 = off; benchmarks force equal response lengths)
    min_new_tokens: int = 0


def as_id_list(ids: int | Sequence[int]) -> list[int]:
    """One token id or several -> a list of ints (end tokens may be given either way)."""
    return (
        [int(ids)]
        if isinstance(ids, int) or (isinstance(ids, Tensor) and ids.ndim == 0)
        else [int(i) for i in ids]
    )


def is_end_token(ids: Tensor, eos_ids: int | Sequence[int]) -> Tensor:
    """Bool, same shape as ``ids``: True where the id is one of the end tokens."""
    return torch.isin(ids, torch.tensor(as_id_list(eos_ids), dtype=ids.dtype, device=ids.device))


def response_mask_from_ids(response_ids: Tensor, eos_ids: int | Sequence[int]) -> Tensor:
    """1 on response tokens up to and including the first end token (any of ``eos_ids``), 0 after it.
    (N, T) -> (N, T) float. EasyR1's ``get_response_mask`` with a list of end tokens."""
    is_eos = is_end_token(response_ids, eos_ids).long()  # (N, T)
    after_eos = (torch.cumsum(is_eos, dim=1) - is_eos) > 0  # strictly after the first end token
    return (~after_eos).float()


def finish_responses(
    response_ids: Tensor, eos_ids: int | Sequence[int], pad_id: int
) -> tuple[Tensor, Tensor]:
    """(response ids with pad after the first end token, response mask) of sampled ids (N, T); an empty
    generation becomes one end token (the first of ``eos_ids``) per row."""
    if response_ids.shape[1] == 0:  # degenerate: nothing generated
        response_ids = torch.full(
            (response_ids.shape[0], 1),
            as_id_list(eos_ids)[0],
            dtype=response_ids.dtype,
            device=response_ids.device,
        )
    mask = response_mask_from_ids(response_ids, eos_ids)
    response_ids = torch.where(mask.bool(), response_ids, torch.full_like(response_ids, pad_id))
    return response_ids, mask


@torch.no_grad()
def hf_generate(
    model: torch.nn.Module,
    inputs: dict[str, Tensor],
    cfg: GenerationConfig,
    eos_ids: int | Sequence[int],
    pad_id: int,
    suppress_ids: list[int],
    num_return_sequences: int = 1,
) -> tuple[Tensor, Tensor]:
    """Sample responses; any of ``eos_ids`` ends a row. ``inputs`` holds one row per sequence (prompts repeated G times), or one row per
    prompt with ``num_return_sequences=G`` (sampling only): ``generate`` then encodes each prompt's images
    once and repeats the encoding for its G rows (rows come out grouped by prompt, as ``repeat_interleave``).

    Returns response_ids (N, T) (pad after EOS) and response_mask (N, T) float.
    """
    prompt_len = inputs["input_ids"].shape[1]
    sample = cfg.temperature > 0
    gen_kwargs = dict(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=sample,
        eos_token_id=as_id_list(eos_ids),
        pad_token_id=pad_id,
        suppress_tokens=suppress_ids or None,
        use_cache=True,
        repetition_penalty=1.0,  # not the model's generation_config default (Qwen2.5-VL-Instruct ships 1.05)
    )
    if cfg.synced_gpus:
        gen_kwargs["synced_gpus"] = True
    if num_return_sequences > 1:
        gen_kwargs["num_return_sequences"] = num_return_sequences
    if cfg.min_new_tokens > 0:
        gen_kwargs["min_new_tokens"] = min(cfg.min_new_tokens, cfg.max_new_tokens)
    if sample:
        gen_kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    out = model.generate(**inputs, **gen_kwargs)
    return finish_responses(out[:, prompt_len:], eos_ids, pad_id)
