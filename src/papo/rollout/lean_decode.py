"""A lean decode loop over a Hugging Face model's own ``forward`` and KV cache (``rollout.decoder=lean``).

What it replaces: ``model.generate`` (:mod:`papo.rollout.hf_generate`), whose per-token machinery (logits
processors, stopping criteria, input preparation, a ``torch.sort`` and ``torch.multinomial`` per step, a causal
mask rebuilt every step) is a large share of a small model's decode time on CPU (measured in
docs/performance.md). Same model calls, same cache class, same sampling semantics (temperature, top-k, top-p,
every end token blocked before ``min_new_tokens``, the suppressed ids never sampled, rows padded after their
end token: one function, :func:`papo.rollout.token_sampling.next_tokens`), stop as soon as every row ended, so
the same distribution of
responses; greedy decoding gives HF's tokens exactly (tested on Qwen2.5-VL and Qwen3-VL).

Differences from ``generate``:

* with ``num_return_sequences = G`` the prompt is prefilled ONCE per prompt and its KV cache repeated G times
  (``generate`` repeats the prompt before the prefill and only shares the image encoding), so a group's
  prompt costs one prefill, as with vLLM's prefix caching;
* the model's ``generation_config`` defaults are not applied (e.g. the ``repetition_penalty`` 1.05 that the
  Qwen2.5-VL-Instruct releases ship): like vLLM (and EasyR1/verl's rollouts) it samples from the policy's
  own distribution with only the settings of ``GenerationConfig``;
* the causal mask of a decode step is passed ready-made (a boolean (N, 1, 1, L) key mask) when the model
  attends with ``sdpa`` and has no sliding-window layers; otherwise the model builds it from the 2D mask.

On a GPU each step is a few hundred small kernel launches: :mod:`papo.rollout.static_decode` replays the step
as one CUDA graph instead. Sharded strategies (FSDP / ZeRO-3, ``cfg.synced_gpus``) use ``generate``: every rank
must keep calling ``forward`` until all ranks finish, which ``generate(synced_gpus=True)`` implements.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from papo.models.loading import forward_accepts
from papo.rollout.hf_generate import GenerationConfig, finish_responses
from papo.rollout.token_sampling import StepRules, next_tokens


def prepared_masks(model: torch.nn.Module) -> bool:
    """Whether decode steps may pass a ready-made boolean key mask (sdpa attention, no sliding windows)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    sliding = bool(getattr(cfg, "use_sliding_window", False)) or "sliding_attention" in (
        getattr(cfg, "layer_types", None) or []
    )
    return getattr(model.config, "_attn_implementation", None) == "sdpa" and not sliding


def cache_of(out: Any) -> Any:
    """The KV cache a forward returned (``cache`` in recent transformers 5.x, else ``past_key_values``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def cache_kwarg(model: torch.nn.Module) -> str:
    """The name ``forward`` takes the KV cache under: ``cache`` (recent transformers 5.x) or
    ``past_key_values``."""
    return "cache" if forward_accepts(model, "cache") else "past_key_values"


def prefill(model: torch.nn.Module, inputs: dict[str, Tensor]) -> tuple[Any, Tensor, Tensor]:
    """One forward over the left-padded prompts (and their images) with a fresh dynamic KV cache.

    Returns (the cache, the last position's logits (B, V) float, the prompt's position ids: (B, P), or
    (4, B, P) for Qwen-VL's text + 3D rope positions, by the model's own rule as ``generate`` uses it).
    """
    input_ids = inputs["input_ids"]
    model_kwargs = {k: v for k, v in inputs.items() if k != "input_ids"}
    positions = model._prepare_position_ids_for_generation(input_ids, dict(model_kwargs))
    out = model(input_ids=input_ids, position_ids=positions, use_cache=True, logits_to_keep=1, **model_kwargs)
    return cache_of(out), out.logits[:, -1].float(), positions


@torch.no_grad()
def lean_generate(
    model: torch.nn.Module,
    inputs: dict[str, Tensor],
    cfg: GenerationConfig,
    eos_ids: int | Sequence[int],
    pad_id: int,
    suppress_ids: list[int],
    num_return_sequences: int = 1,
) -> tuple[Tensor, Tensor]:
    """Sample responses; the contract of :func:`papo.rollout.hf_generate.hf_generate` (any of ``eos_ids``
    ends a row; ``suppress_ids`` are never sampled).

    ``inputs``: left-padded ``input_ids`` / ``attention_mask`` (B, P) plus the model's visual inputs, one row
    per prompt (``num_return_sequences`` = G rows are sampled from each) or one row per sequence.
    Returns response_ids (B*G, T) (pad after EOS) and response_mask (B*G, T) float.
    """
    attn = inputs["attention_mask"]
    cache, logits, positions = prefill(model, inputs)
    G = num_return_sequences
    if G > 1:  # one prefill per prompt, its cache repeated for the G samples
        cache.batch_repeat_interleave(G)
        logits, attn = logits.repeat_interleave(G, 0), attn.repeat_interleave(G, 0)
        positions = positions.repeat_interleave(G, dim=positions.ndim - 2)
    n, device = logits.shape[0], logits.device
    next_pos = positions[..., -1:]
    rules = StepRules.build(cfg, eos_ids, pad_id, suppress_ids, device)
    cache_kw = cache_kwarg(model)
    prepared = prepared_masks(model)
    # the key mask of every step, allocated once: prompt mask + one column per new token (sliced per step)
    P = attn.shape[1]
    full = torch.cat([attn, attn.new_ones(n, cfg.max_new_tokens)], dim=1)
    keys = full.bool()[:, None, None, :] if prepared else full
    unfinished = torch.ones(n, dtype=torch.bool, device=device)
    tokens: list[Tensor] = []
    for t in range(cfg.max_new_tokens):
        nxt = next_tokens(logits, t, unfinished, rules)
        tokens.append(nxt)
        if t == cfg.max_new_tokens - 1 or not bool(unfinished.any()):
            break
        next_pos = next_pos + 1
        mask = keys[..., : P + t + 1]  # prompt + the t + 1 tokens sampled so far
        step = {"input_ids": nxt[:, None], "attention_mask": mask, "position_ids": next_pos, cache_kw: cache}
        out = model(**step, use_cache=True)
        logits = out.logits[:, -1].float()
    return finish_responses(torch.stack(tokens, dim=1), eos_ids, pad_id)
