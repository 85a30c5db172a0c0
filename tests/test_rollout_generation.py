"""Rollout generation paths: per-prompt sampling (each image encoded once, ``num_return_sequences=G``) draws
the same responses as one row per sequence, and ``min_new_tokens`` forces equal response lengths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from papo.models.loading import generation_suppress_token_ids, load_policy
from papo.models.tiny_vlm import ensure_tiny_vlm
from papo.rollout.collect import Generator
from papo.rollout.experience import Experience
from papo.rollout.hf_generate import GenerationConfig


@pytest.fixture(scope="module")
def policy(cache_dir: Path):
    torch.set_num_threads(2)
    return load_policy(ensure_tiny_vlm(cache_dir / "models"))


def _batch(n: int) -> dict:
    rng = np.random.RandomState(0)
    images = [[Image.fromarray(rng.randint(0, 256, (56, 56, 3), dtype=np.uint8))] for _ in range(n)]
    return {
        "prompt": [f"How many objects are there? ({i})" for i in range(n)],
        "images": images,
        "images_masked": None,
        "answer": ["1"] * n,
        "task_type": ["count_all"] * n,
        "vision_dependency": ["high"] * n,
    }


def _reward(text: str, truth: str) -> dict[str, float]:
    return {"overall": 0.0, "accuracy": 0.0, "format": 0.0}


def ragged_rollout(model, processor, num_prompts: int, num_samples: int) -> tuple[Experience, torch.Tensor]:
    """``num_samples`` sampled responses (6 tokens at most) to each of ``num_prompts`` prompts of :func:`_batch`,
    cut to ragged lengths (row i keeps ``i mod T + 1`` tokens, so padding is exercised), and the ids the
    sampler suppresses."""
    gen = Generator(processor, generation_suppress_token_ids(processor), 512, 12)
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0, top_p=1.0, top_k=0, num_samples=num_samples)
    torch.manual_seed(0)
    exp, _ = gen.rollout(model, _batch(num_prompts), cfg, _reward)
    T = exp.response_ids.shape[1]
    keep = torch.tensor([i % T + 1 for i in range(len(exp))])
    exp.response_mask = (torch.arange(T)[None, :] < keep[:, None]).float()
    exp.response_ids = exp.response_ids.masked_fill(exp.response_mask == 0, gen.pad_id)
    return exp, torch.tensor(gen.suppress_ids)


def _rollout(policy, chunk: int, cfg: GenerationConfig, batch: dict, calls: list[int]):
    model, processor = policy
    gen = Generator(processor, generation_suppress_token_ids(processor), 512, chunk)
    visual = model.model.visual
    hook = visual.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        torch.manual_seed(0)
        exp, _ = gen.rollout(model, batch, cfg, _reward)
    finally:
        hook.remove()
    return exp


def test_per_prompt_generation_matches_per_sequence_and_encodes_images_once(policy) -> None:
    batch, G = _batch(3), 4
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0, top_p=1.0, top_k=0, num_samples=G)
    per_prompt, per_row = [], []
    a = _rollout(policy, 12, cfg, batch, per_prompt)  # chunk = whole groups -> num_return_sequences=G
    b = _rollout(policy, 13, cfg, batch, per_row)  # no multiple of G -> one row per sequence, one call
    assert sum(per_prompt) * G == sum(per_row)  # vision patch rows: each image once vs G times
    assert a.response_ids.shape == b.response_ids.shape == (12, a.response_ids.shape[1])
    assert torch.equal(a.group_ids, b.group_ids)
    # same sampler, same RNG draws: identical responses, grouped G per prompt in prompt order
    assert torch.equal(a.response_ids, b.response_ids)


def test_min_new_tokens_forces_full_length_responses(policy) -> None:
    cfg = GenerationConfig(max_new_tokens=5, temperature=1.0, top_p=1.0, top_k=0, num_samples=2)
    cfg.min_new_tokens = 5
    exp = _rollout(policy, 4, cfg, _batch(2), [])
    assert exp.response_mask.shape == (4, 5)
    assert bool((exp.response_mask.sum(1) == 5).all())


def _masked_views(batch: dict, views: int) -> dict:
    """``batch`` with ``views`` masked views per prompt (a different grey level each): what the datamodule
    yields with ``masking.per_response``."""
    rows = [
        [[Image.new("RGB", im.size, (40 * v,) * 3) for im in imgs] for v in range(views)]
        for imgs in batch["images"]
    ]
    return {**batch, "images_masked": [r[0] for r in rows], "images_masked_rows": rows}


def test_one_masked_view_per_response_reaches_its_row(policy) -> None:
    model, processor = policy
    G = 4
    cfg = GenerationConfig(max_new_tokens=3, temperature=1.0, top_p=1.0, top_k=0, num_samples=G)
    gen = Generator(processor, generation_suppress_token_ids(processor), 512, 8)
    batch = _masked_views(_batch(2), G)
    exp, _ = gen.rollout(model, batch, cfg, _reward, keep_masked_view=True)
    encoded = {
        v: processor.image_processor(images=[Image.new("RGB", (56, 56), (40 * v,) * 3)], return_tensors="pt")
        for v in range(G)
    }
    for r in range(2 * G):  # row r = response r % G of prompt r // G
        assert torch.equal(exp.visual_masked[r]["pixel_values"], encoded[r % G]["pixel_values"])
    # without the per-response views every response of a prompt shares its one view
    shared, _ = gen.rollout(model, {**batch, "images_masked_rows": None}, cfg, _reward, keep_masked_view=True)
    assert all(
        torch.equal(shared.visual_masked[r]["pixel_values"], encoded[0]["pixel_values"]) for r in range(8)
    )
    with pytest.raises(ValueError, match=r"algo\.group_size"):
        gen.rollout(model, _masked_views(_batch(2), G - 1), cfg, _reward, keep_masked_view=True)
