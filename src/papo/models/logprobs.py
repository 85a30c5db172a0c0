"""Per-token log-probabilities of response tokens under a (vision-)language model.

The sequence is ``[left-padded prompt (P)] + [right-padded response (T)]``. The LM head is applied only
to the positions that predict response tokens, not to prompt/image positions, and columns that are padding
for every row of the micro-batch are trimmed first. For the Qwen-VL families, whose position ids come from the
attention mask (:data:`MASK_POSITION_MODEL_TYPES`), each row's prompt padding is then moved behind its response
(:func:`align_rows_left`): same positions, same attended keys, but no query position whose keys are all
padding. A left-padded row's first positions attend to nothing: SDPA returns zeros there in forward, but
fully masked rows are where attention backward kernels have produced NaN gradients (cuDNN's SDPA backward
on H100/H200 from torch 2.11 with a mask and a length of 64 mod 128, pytorch/pytorch#196678; the GPU check's
``sdpa_nan`` diagnostic tests each backend with and without them, docs/gpu_performance.md). With the padding
trailing, the causal mask alone is exact for every token that is read, so the model gets an all-ones mask
and its attention runs as causal SDPA without a materialised mask. Each distinct image of the micro-batch
goes through the vision tower once (a group's G rows share their prompt's image), when the model accepts precomputed image
features (``mm_encoder_outputs``: Qwen2.5-VL, Qwen3-VL); otherwise, and under FSDP, its pixels are repeated
per row as the model's own forward expects.

Two ways to get from hidden states to log-probs, the same values and gradients (float tolerance,
``tests/test_logprobs_chunked.py``):

* ``chunk_tokens`` set (``algo.logprob_chunk_tokens``): the base model returns the last hidden states, the
  response tokens (padding dropped) are taken out, and the LM head runs on ``chunk_tokens`` of them at a time,
  each chunk under ``torch.utils.checkpoint`` (when there are several) so its (chunk, vocabulary) logits are
  rebuilt in backward instead of kept: at most one chunk's fp32 logits exist at a time. TRL's and verl's fused / chunked log-prob heads
  avoid the (tokens x vocabulary) tensor the same way. Used when the model is a Qwen-VL
  ``...ForConditionalGeneration`` (base model + ``lm_head``) with unsharded weights;
* otherwise the model's own forward returns (N, T + 1, V) logits (``logits_to_keep``), as Hugging Face
  computes them, and the log-softmax runs on all of them at once (FSDP-sharded roots, DeepSpeed ZeRO-3, other
  layouts).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from papo.algos.entropy import entropy_from_logits
from papo.models.loading import forward_accepts, hf_model

#: model types whose ``...ForConditionalGeneration.forward`` is ``lm_head(model(...)[0])`` (nothing between the
#: base model's last hidden state and the LM head), so the chunked head gives the forward's log-probs
CHUNKED_HEAD_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
#: model types whose forward computes the position ids from the 2D attention mask (the Qwen-VL rope index, or
#: its cumulative-sum fallback), so a row's padding may sit after its tokens with every position unchanged
MASK_POSITION_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")


def token_logps_from_logits(
    logits: Tensor, targets: Tensor, temperature: float = 1.0, suppress_ids: Tensor | None = None
) -> Tensor:
    """log softmax(logits / temperature) gathered at ``targets``. (N, T, V), (N, T) -> (N, T).

    ``suppress_ids``: token ids the sampler can never emit (set to -inf first), so these log-probs are
    those of the distribution rollouts were actually drawn from.
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    if suppress_ids is not None and suppress_ids.numel():
        logits = logits.index_fill(-1, suppress_ids.to(logits.device), float("-inf"))
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)  # (N, T)
    return picked - torch.logsumexp(logits, dim=-1)  # (N, T)


def trim_padding(
    prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor, response_mask: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Drop prompt columns that are padding in every row (left) and response columns after the longest
    response (right). Returns the trimmed tensors and the number of response columns kept."""
    keep_p = int(prompt_mask.sum(dim=1).max().item())  # longest prompt
    keep_t = max(int(response_mask.sum(dim=1).max().item()), 1)  # longest response
    P = prompt_ids.shape[1]
    return (
        prompt_ids[:, P - keep_p :],
        prompt_mask[:, P - keep_p :],
        response_ids[:, :keep_t],
        response_mask[:, :keep_t],
        keep_t,
    )


def align_rows_left(shift: Tensor, *tensors: Tensor) -> list[Tensor]:
    """Each row of each (N, L) tensor rotated left by its ``shift`` (N,) long: a row that starts with
    ``shift[i]`` padding columns starts with its tokens instead, the padding at its end; order is kept."""
    L = tensors[0].shape[1]
    index = (torch.arange(L, device=shift.device)[None, :] + shift[:, None]) % L  # (N, L)
    return [x.gather(1, index.to(x.device)) for x in tensors]


def padding_trails(mask: Tensor) -> bool:
    """Whether every row of the (N, L) 0/1 ``mask`` is its ones followed by its zeros (one host read)."""
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


def aligns_rows(model: torch.nn.Module) -> bool:
    """Whether :func:`response_logps` moves each row's prompt padding behind its response (the model computes
    position ids from the attention mask: :data:`MASK_POSITION_MODEL_TYPES`)."""
    return getattr(hf_model(model).config, "model_type", None) in MASK_POSITION_MODEL_TYPES


def _forward_inputs(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    visual: dict[str, Tensor],
    extra: dict[str, Tensor] | None,
) -> tuple[Tensor, Tensor, dict[str, object], Tensor, Tensor, Tensor, Tensor]:
    """The model's inputs for the response passes: ``(input_ids, attention_mask, kwargs, before, r_ids, r_mask,
    shift)``. ``before`` (N, T): the column whose output predicts response token t of row i; ``shift`` (N,): the
    prompt padding moved behind each row's response (module docstring)."""
    N = response_ids.shape[0]
    P_full = prompt_ids.shape[1]
    p_ids, p_mask, r_ids, r_mask, T = trim_padding(prompt_ids, prompt_mask, response_ids, response_mask)
    P = p_ids.shape[1]
    input_ids = torch.cat([p_ids, r_ids], dim=1)  # (N, P' + T)
    attention_mask = torch.cat([p_mask, r_mask], dim=1).long()  # (N, P' + T)
    kwargs = visual_model_kwargs(model, visual)
    aligned = {}
    if extra:
        for k, v in extra.items():  # prompt-aligned (N, P_full) -> trimmed + zero for response positions
            v = v[:, P_full - P :]
            aligned[k] = torch.cat([v, torch.zeros_like(v[:, :1]).expand(N, T)], dim=1)
    # each row's prompt padding moved behind its response (module docstring); shift = its padding columns
    shift = (P - p_mask.sum(1)).long() if aligns_rows(model) else torch.zeros(N, dtype=torch.long)
    shift = shift.to(input_ids.device)
    if bool(shift.any()):
        names = list(aligned)
        input_ids, attention_mask, *rest = align_rows_left(
            shift, input_ids, attention_mask, *aligned.values()
        )
        aligned = dict(zip(names, rest, strict=True))
    if aligns_rows(model) and padding_trails(attention_mask):
        # every row's padding now trails its tokens: the causal mask alone gives each token the keys it
        # attends to (its row's earlier tokens, none of them padding), and the padding's own outputs are never
        # read; an all-ones mask keeps every position (they come from the mask) and lets the attention run
        # as plain causal SDPA (no (N, 1, L, L) mask; on CUDA a causal kernel instead of a masked one)
        attention_mask = torch.ones_like(attention_mask)
    kwargs.update(aligned)
    # response token t of row i sits at column P' - shift_i + t; the position before it predicts it
    before = (P - 1 - shift)[:, None] + torch.arange(T, device=shift.device)[None, :]  # (N, T)
    return input_ids, attention_mask, kwargs, before, r_ids, r_mask, shift


def _pad_to(x: Tensor, width: int) -> Tensor:
    """``x`` (N, T, ...) with zeros appended along dim 1 up to ``width``."""
    if x.shape[1] >= width:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], width - x.shape[1], *x.shape[2:])], dim=1)


def response_logps(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    visual: dict[str, Tensor],
    extra: dict[str, Tensor] | None = None,
    temperature: float = 1.0,
    suppress_ids: Tensor | None = None,
    chunk_tokens: int | None = None,
    with_entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """log pi(o_t | prompt, image, o_<t) for every response position. Returns (N, T) (T = input's T).

    prompt_ids/prompt_mask (N, P) left-padded; response_ids/response_mask (N, T) right-padded;
    ``visual`` holds pixel_values/image_grid_thw for the images of these N rows (in row order);
    ``extra`` holds other per-row prompt tensors of the processor (e.g. mm_token_type_ids (N, P)).
    ``chunk_tokens``: apply the LM head to this many response tokens at a time (see the module docstring);
    None = the model's own full-logits forward. Padding positions are returned as 0.
    ``with_entropy``: also the full-vocabulary entropy of every response position from the same logits
    (:func:`papo.algos.entropy.entropy_from_logits`, same temperature and suppressed ids), returned as
    ``(logps, entropies)``, both (N, T), 0 at padding.
    """
    N, T_full = response_ids.shape
    input_ids, attention_mask, kwargs, before, r_ids, r_mask, shift = _forward_inputs(
        model, prompt_ids, prompt_mask, response_ids, response_mask, visual, extra
    )
    T = r_ids.shape[1]
    entropies = None
    if chunk_tokens and chunked_head_supported(model):
        hf = hf_model(model)
        out = hf.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
        live = r_mask.bool()  # (N, T)
        rows = torch.arange(N, device=live.device)[:, None].expand(N, T)[live]  # (M,)
        hidden = out.last_hidden_state[rows, before.to(live.device)[live]]  # (M, H) one per response token
        picked = chunked_token_logps(
            hf.get_output_embeddings(),
            hidden,
            r_ids[live],
            temperature,
            suppress_ids,
            chunk_tokens,
            with_entropy=with_entropy,
        )  # (M,) one per response token; (M, 2) with the entropy
        if with_entropy:
            picked, ent = picked[:, 0], picked[:, 1]
            entropies = torch.zeros(N, T, dtype=ent.dtype, device=ent.device).masked_scatter(live, ent)
        logps = torch.zeros(N, T, dtype=picked.dtype, device=picked.device).masked_scatter(live, picked)
    else:
        most = int(shift.max())  # the kept logits span every row's response: T + 1 + the largest shift
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            logits_to_keep=T + 1 + most,
            **kwargs,
        )
        # (N, T + most, V): kept position k predicts the input token at column P' + T - most - 1 + k + 1
        window = out.logits[:, :-1, :]
        targets = input_ids[:, input_ids.shape[1] - window.shape[1] :]  # (N, T + most)
        logps = token_logps_from_logits(window, targets, temperature, suppress_ids)  # (N, T + most)
        if with_entropy:
            entropies = entropy_from_logits(window, temperature, suppress_ids)  # (N, T + most)
        if most:
            first = before[:, :1] + shift[:, None] - most  # (N, 1): P' - 1 - most, the first kept column
            logps = logps.gather(1, before - first)  # (N, T): each row's response columns
            if with_entropy:
                entropies = entropies.gather(1, before - first)
        logps = logps.masked_fill(r_mask == 0, 0.0)  # padding (possibly a suppressed id: -inf) -> 0
        if with_entropy:
            entropies = entropies.masked_fill(r_mask == 0, 0.0)
    return (_pad_to(logps, T_full), _pad_to(entropies, T_full)) if with_entropy else _pad_to(logps, T_full)


def response_hidden(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    visual: dict[str, Tensor],
    extra: dict[str, Tensor] | None = None,
) -> Tensor:
    """The base model's last hidden states that predict each response token, (N, T, H) (T = input's T), 0 at
    padding; with the LM head (``hf_model(model).get_output_embeddings()``) they give the next-token logits
    without a (N, T, V) tensor (:func:`papo.algos.visual_sensitivity.distribution_sensitivity_from_hidden`).

    Raises:
        ValueError: the model's layout is not ``lm_head(model(...))`` with unsharded weights
            (:func:`chunked_head_supported`).
    """
    if not chunked_head_supported(model):
        raise ValueError(
            "hidden states of the response positions need a Qwen-VL ...ForConditionalGeneration with unsharded "
            f"weights (model types {list(CHUNKED_HEAD_MODEL_TYPES)}); use a sampled-token sensitivity signal"
        )
    N, T_full = response_ids.shape
    input_ids, attention_mask, kwargs, before, _, r_mask, _ = _forward_inputs(
        model, prompt_ids, prompt_mask, response_ids, response_mask, visual, extra
    )
    out = hf_model(model).model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
    rows = torch.arange(N, device=before.device)[:, None].expand_as(before)  # (N, T)
    hidden = out.last_hidden_state[rows, before]  # (N, T, H)
    hidden = hidden * r_mask.unsqueeze(-1).to(hidden.dtype)  # 0 at padding
    return _pad_to(hidden, T_full)  # (N, T_full, H)


def chunked_token_logps(
    head: torch.nn.Module,
    hidden: Tensor,
    targets: Tensor,
    temperature: float = 1.0,
    suppress_ids: Tensor | None = None,
    chunk_tokens: int = 2048,
    with_entropy: bool = False,
) -> Tensor:
    """:func:`token_logps_from_logits` of ``head(hidden)`` without the whole (M, V) logits: (M, H), (M,) -> (M,);
    with ``with_entropy`` (M, 2): the log-prob and the full-vocabulary entropy of each row.

    The head runs on ``chunk_tokens`` rows at a time. When gradients are recorded and there are several
    chunks, each chunk is a ``torch.utils.checkpoint`` region, so backward rebuilds that chunk's logits instead
    of keeping them (one extra head forward per token, for memory that no longer grows with M x V); a single
    chunk keeps its logits for backward, as the full forward does (no recomputation: that chunk is all the
    logits there are).
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens} must be >= 1")
    grad = torch.is_grad_enabled() and hidden.shape[0] > chunk_tokens
    out = []
    for s in range(0, hidden.shape[0], chunk_tokens):
        h, y = hidden[s : s + chunk_tokens], targets[s : s + chunk_tokens]
        args = (head, h, y, temperature, suppress_ids, with_entropy)
        out.append(checkpoint(_head_logps, *args, use_reentrant=False) if grad else _head_logps(*args))
    if not out:
        return hidden.new_zeros((0, 2) if with_entropy else 0, dtype=torch.float32)
    return torch.cat(out)


def _head_logps(
    head: torch.nn.Module,
    h: Tensor,
    y: Tensor,
    temperature: float,
    suppress_ids: Tensor | None,
    with_entropy: bool = False,
) -> Tensor:
    logits = head(h)  # (c, V)
    logps = token_logps_from_logits(logits, y, temperature, suppress_ids)  # (c,)
    if not with_entropy:
        return logps
    return torch.stack([logps, entropy_from_logits(logits, temperature, suppress_ids)], dim=-1)  # (c, 2)


def weights_sharded(model: torch.nn.Module) -> bool:
    """True if the model's weights are sharded across ranks (FSDP / FSDP2 roots, DTensor parameters, DeepSpeed
    ZeRO-3 partitions): its submodules cannot be called on their own, outside the root's gathering hooks."""
    try:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    except ImportError:  # pragma: no cover - torch < 2.6
        FSDPModule = FullyShardedDataParallel = ()
    if isinstance(model, (FSDPModule, FullyShardedDataParallel)):
        return True
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        DTensor = ()
    return any(isinstance(p, DTensor) or hasattr(p, "ds_id") for p in model.parameters())


def chunked_head_supported(model: torch.nn.Module) -> bool:
    """Whether :func:`response_logps` may run the base model and the LM head separately (chunked head): a
    known ``lm_head(model(...))`` layout (:data:`CHUNKED_HEAD_MODEL_TYPES`) with unsharded weights."""
    hf = hf_model(model)
    layout = getattr(hf.config, "model_type", None) in CHUNKED_HEAD_MODEL_TYPES and hasattr(hf, "model")
    return layout and hf.get_output_embeddings() is not None and not weights_sharded(model)


def visual_model_kwargs(model: torch.nn.Module, visual: dict[str, Tensor]) -> dict[str, object]:
    """The model's image arguments for a batch from :func:`papo.rollout.inputs.collate_visual`.

    ``visual`` without ``image_index``: passed as is (one entry per row image). With it (distinct images +
    which distinct image each row image is): the vision tower encodes the distinct images once and each
    row gets its image's features through ``mm_encoder_outputs`` (gradients of the shared features add up
    over the rows, as they would with one encoding per row); models without that argument get the pixels
    repeated per row.
    """
    if "image_index" not in visual:
        return dict(visual)
    if shares_image_features(model):
        index, grid = visual["image_index"], visual["image_grid_thw"]
        rows, row_grid = index.tolist(), grid[index.to(grid.device)]
        out = model.get_image_features(
            pixel_values=visual["pixel_values"], image_grid_thw=grid, return_dict=True
        )
        # per-image tuples -> per row image: the merged embeddings and (Qwen3-VL) each deepstack layer's
        out.pooler_output = tuple(out.pooler_output[i] for i in rows)
        if getattr(out, "deepstack_features", None) is not None:
            out.deepstack_features = [tuple(layer[i] for i in rows) for layer in out.deepstack_features]
        return {"mm_encoder_outputs": {"image": out}, "image_grid_thw": row_grid}
    return per_row_visual(visual)


def per_row_visual(visual: dict[str, Tensor]) -> dict[str, Tensor]:
    """A :func:`papo.rollout.inputs.collate_visual` batch with every row's own copy of its images' pixels
    (what a model's forward takes without precomputed features)."""
    index, pixels, grid = visual["image_index"], visual["pixel_values"], visual["image_grid_thw"]
    chunks = torch.split(pixels, grid.prod(-1).tolist())  # patch rows of each distinct image
    return {
        "pixel_values": torch.cat([chunks[i] for i in index.tolist()], 0),
        "image_grid_thw": grid[index.to(grid.device)],
    }


def shares_image_features(model: torch.nn.Module) -> bool:
    """True if the model's forward takes precomputed image features (``mm_encoder_outputs``) and has
    ``get_image_features``, and it is not FSDP-sharded (its vision tower would run outside the root's
    forward, whose hooks gather the parameters)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch < 2.6
        FSDPModule = ()
    if isinstance(model, FSDPModule):
        return False
    return hasattr(hf_model(model), "get_image_features") and forward_accepts(model, "mm_encoder_outputs")
