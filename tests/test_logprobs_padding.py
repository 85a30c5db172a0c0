"""Prompt padding in the log-prob passes (papo.models.logprobs.response_logps): on the Qwen-VL families each
row's prompt padding is moved behind its response, so no attention query of the training forward has every
key masked (the fully masked rows that left padding creates, where attention backward kernels have produced
NaN gradients) and the attention runs causal without a mask, and the log-probs and gradients stay those of
each row run on its own, without padding, on both the chunked-head and the full-logits path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import papo.models.logprobs as logprobs
from papo.models.loading import generation_suppress_token_ids, load_policy
from papo.models.logprobs import (
    align_rows_left,
    response_logps,
    token_logps_from_logits,
    trim_padding,
    visual_model_kwargs,
)
from papo.models.stand_in import ensure_stand_in
from papo.rollout.collect import Generator
from papo.rollout.hf_generate import GenerationConfig
from test_rollout_generation import _reward
from test_rollout_lean_decode import _ragged_batch


def test_align_rows_left_moves_each_rows_leading_padding_to_its_end() -> None:
    x = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 9], [0, 8, 9, 0, 0]])
    (out,) = align_rows_left(torch.tensor([2, 0, 1]), x)
    assert out.tolist() == [[5, 6, 7, 0, 0], [1, 2, 3, 4, 9], [8, 9, 0, 0, 0]]


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def rollout(request, cache_dir: Path):
    """Ragged prompts (different texts and image sizes: left padding of 0 to many columns) and ragged
    responses."""
    torch.set_num_threads(2)
    model, processor = load_policy(ensure_stand_in(request.param, cache_dir / "models"))
    gen = Generator(processor, generation_suppress_token_ids(processor), 512, 12)
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0, num_samples=2)
    torch.manual_seed(0)
    exp, _ = gen.rollout(model, _ragged_batch(), cfg, _reward)
    T = exp.response_ids.shape[1]
    keep = torch.tensor([i % T + 1 for i in range(len(exp))])
    exp.response_mask = (torch.arange(T)[None, :] < keep[:, None]).float()
    exp.response_ids = exp.response_ids.masked_fill(exp.response_mask == 0, gen.pad_id)
    pads = exp.prompt_mask.shape[1] - exp.prompt_mask.sum(1)
    assert int(pads.min()) == 0 and int(pads.max()) > 1  # left padding is exercised
    model.train()
    return model, exp


def _text_attention_calls(model, inputs: dict, monkeypatch, **kw) -> list[int | None]:
    """Per attention call of the text model (one query per position of every row): how many query rows have
    every key masked, or None when the call gets no mask (plain causal attention)."""
    calls: list[int | None] = []
    rows = inputs["prompt_ids"].shape[0]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, *a, **kws):
        if q.shape[0] == rows and q.shape[-2] > 1:  # the vision tower's calls have one batch row
            empty = attn_mask is not None and attn_mask.dtype == torch.bool
            calls.append(int((~attn_mask.any(-1)).sum()) if empty else None)
        return sdpa(q, k, v, attn_mask, *a, **kws)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    response_logps(model, **inputs, **kw).sum().backward()
    monkeypatch.undo()
    model.zero_grad(set_to_none=True)
    return calls


@pytest.mark.parametrize("chunk", [None, 5])
def test_no_attention_query_has_every_key_masked(rollout, monkeypatch, chunk) -> None:
    model, exp = rollout
    # the padding trails every row: the text attention runs causal with no mask at all
    calls = _text_attention_calls(model, exp.model_inputs(), monkeypatch, chunk_tokens=chunk)
    assert calls and all(c is None for c in calls), calls
    # with the padding mask kept, no row of it is empty
    monkeypatch.setattr(logprobs, "padding_trails", lambda mask: False)
    masked = _text_attention_calls(model, exp.model_inputs(), monkeypatch, chunk_tokens=chunk)
    assert masked and None not in masked and sum(masked) == 0, masked
    # the same rows left-padded, as a model whose positions do not come from the mask gets them
    monkeypatch.setattr(logprobs, "MASK_POSITION_MODEL_TYPES", ())
    left = _text_attention_calls(model, exp.model_inputs(), monkeypatch, chunk_tokens=chunk)
    assert None not in left and sum(left) > 0  # the detector sees the rows left padding empties


def test_padding_trails() -> None:
    assert logprobs.padding_trails(torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]]))
    assert not logprobs.padding_trails(torch.tensor([[1, 1, 0], [0, 1, 1]]))
    assert not logprobs.padding_trails(torch.tensor([[1, 0, 1]]))


def _alone(model, inputs: dict, temperature: float, suppress_ids: torch.Tensor) -> torch.Tensor:
    """One row's log-probs from the model's own forward over that row without any padding (1, T)."""
    p_ids, p_mask, r_ids, r_mask, T = trim_padding(
        inputs["prompt_ids"], inputs["prompt_mask"], inputs["response_ids"], inputs["response_mask"]
    )
    assert bool(p_mask.all()) and bool(r_mask.all())
    P = p_ids.shape[1]
    extra = {k: torch.cat([v[:, -P:], v.new_zeros(1, T)], 1) for k, v in (inputs["extra"] or {}).items()}
    out = model(
        input_ids=torch.cat([p_ids, r_ids], 1),
        attention_mask=torch.ones(1, P + T, dtype=torch.long),
        use_cache=False,
        **visual_model_kwargs(model, inputs["visual"]),
        **extra,
    )
    logps = token_logps_from_logits(out.logits[:, P - 1 : P - 1 + T], r_ids, temperature, suppress_ids)
    return torch.cat([logps, logps.new_zeros(1, inputs["response_ids"].shape[1] - T)], 1)


@pytest.mark.parametrize("keep_mask", [False, True])
@pytest.mark.parametrize("chunk", [None, 5])
def test_log_probs_and_gradients_equal_each_row_on_its_own(rollout, chunk, keep_mask, monkeypatch) -> None:
    """The batch's log-probs and the gradient of a weighted sum equal those of the model's own forward over
    every row alone (no padding at all), so moving the padding changes no position and no attended key, and
    dropping the padding mask behind it (causal attention alone) changes no token that is read."""
    model, exp = rollout
    if keep_mask:
        monkeypatch.setattr(logprobs, "padding_trails", lambda mask: False)
    kw = {"temperature": 0.8, "suppress_ids": torch.tensor([3, 7]), "chunk_tokens": chunk}
    weights = torch.linspace(0.5, 1.5, exp.response_ids.shape[1])
    model.zero_grad(set_to_none=True)
    batch = response_logps(model, **exp.model_inputs(), **kw)
    (batch * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    alone = []
    for i in range(len(exp)):
        row = _alone(model, exp.select([i]).model_inputs(), kw["temperature"], kw["suppress_ids"])
        (row * weights).sum().backward()
        alone.append(row.detach())
    torch.testing.assert_close(batch.detach(), torch.cat(alone), atol=2e-5, rtol=1e-5)
    assert bool((batch[exp.response_mask == 0] == 0).all())
    assert len(grads) > 4
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(grads[n], p.grad, atol=2e-5, rtol=1e-4, msg=n)
    model.zero_grad(set_to_none=True)
