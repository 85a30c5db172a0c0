"""Per-token log-probabilities of response tokens under a (vision-)language model.

The sequence is ``[left-padded prompt (P)] + [right-padded response (T)]``. The LM head is applied only
to the T positions that predict response tokens (``logits_to_keep``), not to prompt/image positions,
and columns that are padding for every row of the micro-batch are trimmed first. Each distinct image of
the micro-batch goes through the vision tower once (a group's G rows share their prompt's image), when
the model accepts precomputed image features (``mm_encoder_outputs``: Qwen2.5-VL, Qwen3-VL); otherwise,
and under FSDP, its pixels are repeated per row as the model's own forward expects.
"""

from __future__ import annotations

import torch
from torch import Tensor

from papo.models.loading import forward_accepts, hf_model


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
) -> Tensor:
    """log pi(o_t | prompt, image, o_<t) for every response position. Returns (N, T) (T = input's T).

    prompt_ids/prompt_mask (N, P) left-padded; response_ids/response_mask (N, T) right-padded;
    ``visual`` holds pixel_values/image_grid_thw for the images of these N rows (in row order);
    ``extra`` holds other per-row prompt tensors of the processor (e.g. mm_token_type_ids (N, P)).
    Positions beyond the longest response are returned as 0.
    """
    N, T_full = response_ids.shape
    P_full = prompt_ids.shape[1]
    p_ids, p_mask, r_ids, r_mask, T = trim_padding(prompt_ids, prompt_mask, response_ids, response_mask)
    input_ids = torch.cat([p_ids, r_ids], dim=1)  # (N, P' + T)
    attention_mask = torch.cat([p_mask, r_mask], dim=1).long()  # (N, P' + T)
    kwargs = visual_model_kwargs(model, visual)
    if extra:
        P = p_ids.shape[1]
        for k, v in extra.items():  # prompt-aligned (N, P_full) -> trimmed + zero for response positions
            v = v[:, P_full - P :]
            kwargs[k] = torch.cat([v, torch.zeros_like(v[:, :1]).expand(N, T)], dim=1)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        use_cache=False,
        logits_to_keep=T + 1,
        **kwargs,
    )
    logits = out.logits[:, :-1, :]  # (N, T, V): position P'-1+t predicts response token t
    logps = token_logps_from_logits(logits, r_ids, temperature, suppress_ids)  # (N, T)
    logps = logps.masked_fill(r_mask == 0, 0.0)  # padding (possibly a suppressed id: -inf) -> 0
    if T_full > T:
        logps = torch.cat([logps, logps.new_zeros(N, T_full - T)], dim=1)  # (N, T_full)
    return logps


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
