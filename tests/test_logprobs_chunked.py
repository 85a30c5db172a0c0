"""The chunked LM head of the log-prob passes (papo.models.logprobs, ``chunk_tokens``): the same log-probs and
gradients as the full-logits forward (temperature, suppressed ids, padding, shared image features, Qwen2.5-VL,
Qwen3-VL and a LoRA policy), at most one chunk's logits at a time, and the full forward where the layout or
sharded weights do not allow it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import papo.models.logprobs as logprobs
from papo.models.loading import load_policy
from papo.models.logprobs import chunked_token_logps, response_logps, token_logps_from_logits
from papo.models.stand_in import ensure_stand_in
from test_rollout_generation import ragged_rollout


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_chunked_head_equals_full_logits_with_gradients(chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(6, 11, bias=True)
    hidden = torch.randn(7, 6, generator=g, requires_grad=True)
    targets = torch.randint(0, 11, (7,), generator=g)
    suppress = torch.tensor([2, 9])
    targets[targets == 2] = 3
    weights = torch.linspace(0.5, 1.5, 7)

    def run(fn):
        head.zero_grad(set_to_none=True)
        hidden.grad = None
        out = fn()
        (out * weights).sum().backward()
        return out.detach(), hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()

    full = run(lambda: token_logps_from_logits(head(hidden), targets, 0.7, suppress))
    chunked = run(lambda: chunked_token_logps(head, hidden, targets, 0.7, suppress, chunk))
    for a, b in zip(chunked, full, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_at_most_one_chunks_logits_exist_and_backward_rebuilds_them() -> None:
    head = torch.nn.Linear(4, 50)
    rows: list[int] = []
    head.register_forward_hook(lambda m, a, out: rows.append(out.shape[0]))
    hidden = torch.randn(10, 4, requires_grad=True)
    logps = chunked_token_logps(head, hidden, torch.zeros(10, dtype=torch.long), chunk_tokens=4)
    assert rows == [4, 4, 2]  # forward: one chunk at a time, nothing kept for backward
    logps.sum().backward()
    assert sorted(rows[3:]) == [2, 4, 4]  # backward: each chunk's logits recomputed
    with torch.no_grad():
        chunked_token_logps(head, hidden, torch.zeros(10, dtype=torch.long), chunk_tokens=4)
    assert len(rows) == 9  # no grad: one pass, no checkpointing
    chunked_token_logps(head, hidden, torch.zeros(10, dtype=torch.long), chunk_tokens=10).sum().backward()
    assert rows[9:] == [10]  # one chunk holds all the logits there are: kept for backward, not recomputed


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl", "qwen2_5_vl+lora"])
def rollout(request, cache_dir: Path):
    torch.set_num_threads(2)
    family, _, lora = request.param.partition("+")
    adapters = (
        {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": None, "vision": False} if lora else None
    )
    model, processor = load_policy(ensure_stand_in(family, cache_dir / "models"), lora=adapters)
    if lora:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
    return model, *ragged_rollout(model, processor, num_prompts=3, num_samples=4)


def _logps_and_grads(model, inputs: dict, **kw) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logps = response_logps(model, **inputs, **kw)
    (logps * torch.linspace(0.5, 1.5, logps.shape[1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), grads


def test_chunked_response_logps_equal_the_full_forward(rollout) -> None:
    """Shared image features (each image through the tower once), temperature and suppressed ids, on every
    family; trained parameters (vision tower, LoRA adapters) get the same gradients."""
    model, exp, suppress = rollout
    inputs = exp.model_inputs()
    assert "image_index" in inputs["visual"]  # the shared-image path
    kw = {"temperature": 0.8, "suppress_ids": suppress}
    full, grads_full = _logps_and_grads(model, inputs, **kw)
    chunked, grads_chunked = _logps_and_grads(model, inputs, chunk_tokens=5, **kw)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    assert bool((full[exp.response_mask == 0] == 0).all()) and full.abs().sum() > 0
    assert grads_chunked.keys() == grads_full.keys() and len(grads_full) > 4
    for n in grads_full:
        torch.testing.assert_close(grads_chunked[n], grads_full[n], atol=1e-5, rtol=1e-4, msg=n)


def test_sharded_weights_and_unknown_layouts_use_the_full_forward(rollout, monkeypatch) -> None:
    model, exp, _ = rollout
    assert logprobs.chunked_head_supported(model)
    calls: list[dict] = []
    hook = model.register_forward_hook(lambda m, a, k, out: calls.append(k), with_kwargs=True)
    try:
        monkeypatch.setattr(logprobs, "weights_sharded", lambda m: True)
        with torch.no_grad():
            full = response_logps(model, **exp.model_inputs(), chunk_tokens=5)
        assert len(calls) == 1 and "logits_to_keep" in calls[0]  # the model's own full-logits forward
        monkeypatch.setattr(logprobs, "weights_sharded", lambda m: False)
        monkeypatch.setattr(logprobs, "CHUNKED_HEAD_MODEL_TYPES", ())
        assert not logprobs.chunked_head_supported(model)
        monkeypatch.undo()
        with torch.no_grad():
            chunked = response_logps(model, **exp.model_inputs(), chunk_tokens=5)
        assert len(calls) == 1  # the chunked path calls the base model and the head, not the wrapper
    finally:
        hook.remove()
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)


def test_weights_sharded_sees_dtensors_and_zero3_partitions() -> None:
    model = torch.nn.Linear(2, 2)
    assert not logprobs.weights_sharded(model)
    model.weight.ds_id = 0  # what DeepSpeed ZeRO-3 tags its partitioned parameters with
    assert logprobs.weights_sharded(model)
