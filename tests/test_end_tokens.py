"""Every end token of the model's generation config ends a response (Qwen2.5-VL: ``<|im_end|>`` and
``<|endoftext|>``), in the lean decode loop and in HF ``generate``, and the response mask closes at the first
of them; the sampler never emits the suppressed ids (image placeholder) but may emit any other special token."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from papo.models.loading import end_token_ids, generation_suppress_token_ids, load_policy
from papo.models.tiny_vlm import ensure_tiny_vlm
from papo.rollout.collect import Generator
from papo.rollout.hf_generate import GenerationConfig, finish_responses, response_mask_from_ids
from test_rollout_generation import _batch, _reward


@pytest.fixture(scope="module")
def policy(cache_dir: Path):
    torch.set_num_threads(1)
    return load_policy(ensure_tiny_vlm(cache_dir / "models"))


def test_response_mask_closes_at_the_first_of_several_end_tokens() -> None:
    ids = torch.tensor([[5, 7, 2, 9, 9], [5, 3, 7, 2, 9], [5, 5, 5, 5, 5]])
    assert response_mask_from_ids(ids, [2, 3]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1] * 5]
    assert response_mask_from_ids(ids, 2).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1] * 5]
    out, mask = finish_responses(ids, [2, 3], pad_id=0)
    assert out.tolist() == [[5, 7, 2, 0, 0], [5, 3, 0, 0, 0], [5] * 5]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1] * 5]
    empty, m = finish_responses(ids[:, :0], [3, 2], pad_id=0)
    assert empty.tolist() == [[3]] * 3 and m.tolist() == [[1.0]] * 3


def _forcing_hook(model, token_id: int):
    """Make ``token_id`` the only likely next token at every step (a forward hook on the LM head)."""

    def hook(module, args, out):
        out = out.clone()
        out[..., token_id] = out[..., token_id] + 1e4
        return out

    return model.get_output_embeddings().register_forward_hook(hook)


@pytest.mark.parametrize("decoder", ["lean", "generate"])
@pytest.mark.parametrize("end", ["<|im_end|>", "<|endoftext|>"])
def test_each_end_token_ends_the_response(policy, decoder: str, end: str) -> None:
    model, processor = policy
    tok = processor.tokenizer
    eos_ids = end_token_ids(model.generation_config, processor)
    assert eos_ids == tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    gen = Generator(processor, generation_suppress_token_ids(processor), 512, 8, decoder, eos_ids=eos_ids)
    end_id = tok.convert_tokens_to_ids(end)
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0, num_samples=2)
    handle = _forcing_hook(model, end_id)
    try:
        exp, _ = gen.rollout(model, _batch(2), cfg, _reward)
    finally:
        handle.remove()
    assert exp.response_ids.shape[1] == 1, "generation must stop at the first end token"
    assert exp.response_ids[:, 0].tolist() == [end_id] * 4
    assert exp.response_mask.tolist() == [[1.0]] * 4


def test_min_new_tokens_blocks_every_end_token(policy) -> None:
    model, processor = policy
    tok = processor.tokenizer
    eos_ids = end_token_ids(model.generation_config, processor)
    gen = Generator(processor, generation_suppress_token_ids(processor), 512, 8, "lean", eos_ids=eos_ids)
    cfg = GenerationConfig(max_new_tokens=5, temperature=1.0, num_samples=2, min_new_tokens=3)
    handle = _forcing_hook(model, tok.convert_tokens_to_ids("<|endoftext|>"))
    try:
        exp, _ = gen.rollout(model, _batch(2), cfg, _reward)
    finally:
        handle.remove()
    assert exp.response_mask.sum(1).tolist() == [4.0] * 4  # 3 forced tokens, then the end token
    assert not torch.isin(exp.response_ids[:, :3], torch.tensor(eos_ids)).any()


@pytest.mark.parametrize("decoder", ["lean", "generate"])
def test_the_image_placeholder_is_never_sampled_other_specials_are(policy, decoder: str) -> None:
    model, processor = policy
    tok = processor.tokenizer
    eos_ids = end_token_ids(model.generation_config, processor)
    gen = Generator(processor, generation_suppress_token_ids(processor), 512, 8, decoder, eos_ids=eos_ids)
    cfg = GenerationConfig(max_new_tokens=3, temperature=1.0, num_samples=2)
    image_pad, im_start = tok.convert_tokens_to_ids(["<|image_pad|>", "<|im_start|>"])
    handles = [_forcing_hook(model, image_pad), _forcing_hook(model, im_start)]
    try:
        exp, _ = gen.rollout(model, _batch(2), cfg, _reward)
    finally:
        for h in handles:
            h.remove()
    assert not (exp.response_ids == image_pad).any()
    assert (exp.response_ids == im_start).all()  # the released rollout samples the full vocabulary
