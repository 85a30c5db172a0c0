"""The decode loops (papo.rollout.lean_decode, and the static-cache loop papo.rollout.static_decode run step by
step on CPU) and their sampler (papo.rollout.token_sampling): the same filtering as HF's logits warpers, draws
from the right distribution, HF ``generate``'s exact tokens when greedy (left padding, images of different
sizes, Qwen2.5-VL and Qwen3-VL, LoRA), and the sampler's distribution is the training forward's (on-policy).
Static-loop specifics (graph reuse, fallbacks, no host syncs in the step): tests/test_rollout_static_decode.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import papo.rollout.token_sampling as token_sampling
from papo.models.loading import generation_suppress_token_ids, load_policy
from papo.models.stand_in import ensure_stand_in
from papo.rollout.collect import Generator
from papo.rollout.hf_generate import GenerationConfig
from papo.rollout.lean_decode import lean_generate
from papo.rollout.token_sampling import StepRules, filter_logits, next_tokens, nucleus_floor, sample_tokens
from test_rollout_generation import _reward


@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(1.0, 0, 0.9), (0.7, 0, 0.99), (1.3, 5, 1.0), (0.5, 20, 0.8), (1.0, 0, 1.0)]
)
def test_filter_logits_matches_hf_warpers(temperature: float, top_k: int, top_p: float) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 300, generator=gen) * 3
    logits[:, :7] = float("-inf")  # suppressed tokens
    logits[0, 7:] = -50.0
    logits[0, 9] = 10.0  # one dominant token: top-p keeps only it
    ref = logits.clone()
    for warper in (
        TemperatureLogitsWarper(temperature) if temperature != 1.0 else None,
        TopKLogitsWarper(top_k) if top_k else None,
        TopPLogitsWarper(top_p) if top_p < 1 else None,
    ):
        if warper is not None:
            ref = warper(None, ref)
    ours = filter_logits(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    finite = ~torch.isinf(ref)
    assert torch.allclose(ours[finite], ref[finite])
    if top_p < 1:
        assert int((~torch.isinf(ours[0])).sum()) == 1


def _full_sort_floor(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The top-p rule by sorting every row over the whole vocabulary (HF's TopPLogitsWarper's cut)."""
    ascending = torch.sort(probs, dim=-1).values
    n_removed = (ascending.cumsum(-1) <= 1 - top_p).sum(-1, keepdim=True).clamp(max=probs.shape[-1] - 1)
    return ascending.gather(-1, n_removed)


def _logits_of_every_shape(vocab: int, seed: int, flat: bool = True) -> torch.Tensor:
    """Rows from one dominant token to nearly flat (``flat``: else peaked ones only), with a suppressed block
    (-inf) and a top-k cut."""
    g = torch.Generator().manual_seed(seed)
    scales = [12.0, 6.0, 3.0, 1.5, 0.6, 0.2, 0.05, 0.0] if flat else [16.0, 12.0, 9.0, 6.0]
    scale = torch.tensor(scales).repeat(32 // len(scales))[:, None]  # (32, 1)
    logits = torch.randn(32, vocab, generator=g) * scale
    logits[:, vocab // 2 : vocab // 2 + 100] = float("-inf")  # suppressed ids
    logits[5] = logits[5].masked_fill(logits[5] < logits[5].topk(40).values[-1], float("-inf"))  # top-k 40
    return logits


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99, 0.999])
def test_top_p_among_candidates_keeps_the_full_sorts_tokens(top_p: float, monkeypatch) -> None:
    """The nucleus found among the most likely ids (a top-k) is the full sort's, row for row; only the rows
    whose nucleus lies outside the candidates are sorted whole."""
    sorts: list[int] = []
    original = np.sort
    monkeypatch.setattr(
        token_sampling.np, "sort", lambda a, *r, **k: sorts.append(a.shape[0]) or original(a, *r, **k)
    )
    for seed in range(4):
        probs = _logits_of_every_shape(3000, seed).softmax(-1)
        expected = _full_sort_floor(probs, top_p)
        mass = probs.topk(400).values.sum(-1)
        inside, outside = mass >= top_p + 1e-4, mass < top_p - 1e-4
        assert bool(inside.any()) and bool(outside.any())  # both kinds of rows in every call
        del sorts[:]
        got = nucleus_floor(probs[inside], top_p, 400)
        assert sorts == []  # the candidates held every row's nucleus: no full sort
        torch.testing.assert_close(got, expected[inside], rtol=0, atol=0)
        got = nucleus_floor(probs, top_p, 400)
        assert sorts == [int((probs.topk(400).values.sum(-1) < top_p).sum())]  # those rows sorted whole
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_sampled_tokens_equal_the_full_sort_rules_with_the_same_seed(monkeypatch) -> None:
    """Decode steps over a 20,000-id vocabulary, T = 1.0, top-p 0.99: the same tokens, draw for draw, as the
    step rule that sorts every row (steps of peaked rows take the candidates, steps with flat rows too the
    fallback)."""
    rules = StepRules(eos_ids=torch.tensor([1]), pad_id=0, suppress=torch.tensor([2, 3]), top_p=0.99)
    sorts: list[int] = []
    original = np.sort
    monkeypatch.setattr(token_sampling.np, "sort", lambda *a, **k: sorts.append(1) or original(*a, **k))

    def run() -> torch.Tensor:
        torch.manual_seed(11)
        unfinished = torch.ones(32, dtype=torch.bool)
        steps = [_logits_of_every_shape(20_000, s, flat=s % 3 == 0) for s in range(9)]
        return torch.stack([next_tokens(logits, s, unfinished, rules) for s, logits in enumerate(steps)])

    fast = run()
    assert len(sorts) == 3  # the three steps with flat rows sorted those rows, the six others sorted nothing
    monkeypatch.setattr(token_sampling, "nucleus_floor", lambda probs, top_p: _full_sort_floor(probs, top_p))
    assert torch.equal(fast, run())
    assert len(set(fast.flatten().tolist())) > 50


def test_filter_logits_rejects_greedy_temperature() -> None:
    with pytest.raises(ValueError, match="temperature=0"):
        filter_logits(torch.zeros(1, 3), temperature=0)


def test_sample_tokens_draws_from_the_softmax_distribution() -> None:
    probs = torch.tensor([0.0, 0.5, 0.2, 0.0, 0.25, 0.05])
    logits = probs.log().expand(40_000, -1)  # zero-probability tokens are -inf
    gen = torch.Generator().manual_seed(1)
    draws = sample_tokens(logits, generator=gen)
    freq = torch.bincount(draws, minlength=6).float() / draws.numel()
    assert freq[0] == 0 and freq[3] == 0
    assert torch.allclose(freq, probs, atol=0.01)  # 4 standard errors at n = 40k


def test_next_tokens_applies_every_rule_of_a_decode_step() -> None:
    """Greedy by hand: suppressed ids never win, EOS is blocked before min_new_tokens, ended rows get pad,
    and a row that emits EOS is marked ended (in place)."""
    eos, pad = 3, 0
    rules = StepRules(
        eos_ids=torch.tensor([eos]), pad_id=pad, suppress=torch.tensor([1]), temperature=0.0, min_new_tokens=2
    )
    logits = torch.tensor(
        [
            [
                0.0,
                9.0,
                1.0,
                5.0,
            ],  # suppressed id 1 is the largest: the next best is EOS (3), blocked at step 1
            [0.0, 0.0, 1.0, 5.0],  # EOS largest
            [0.0, 0.0, 7.0, 5.0],  # an ended row: pad whatever it would emit
        ]
    )
    unfinished = torch.tensor([True, True, False])
    step1 = next_tokens(logits.clone(), 1, unfinished, rules)
    assert step1.tolist() == [2, 2, pad] and unfinished.tolist() == [True, True, False]
    step2 = next_tokens(logits.clone(), 2, unfinished, rules)  # EOS allowed from step 2 on
    assert step2.tolist() == [eos, eos, pad] and unfinished.tolist() == [False, False, False]
    sampled = StepRules(
        eos_ids=torch.tensor([eos]), pad_id=pad, suppress=torch.tensor([1, 3]), temperature=1.0
    )
    draws = next_tokens(torch.zeros(2000, 4), 0, torch.ones(2000, dtype=torch.bool), sampled)
    assert set(draws.tolist()) == {0, 2}  # suppressed ids (EOS included) are never drawn


def _ragged_batch() -> dict:
    """Prompts of different lengths and images of different sizes (different rope offsets per row)."""
    rng = np.random.RandomState(0)
    sizes = [(56, 56), (84, 56), (56, 112)]
    return {
        "prompt": [
            "Count.",
            "How many red objects are in this picture, in total?",
            "Which shape is left of it?",
        ],
        "images": [[Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8))] for h, w in sizes],
        "images_masked": None,
        "answer": ["1"] * 3,
        "task_type": ["count_all"] * 3,
        "vision_dependency": ["high"] * 3,
    }


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl", "qwen2_5_vl+lora"])
def policy(request, cache_dir: Path):
    """The two families, and a peft LoRA policy whose adapters change the output (the decode loop calls the
    wrapped model)."""
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
    return model, processor


def _generator(processor, chunk: int, decoder: str) -> Generator:
    return Generator(processor, generation_suppress_token_ids(processor), 512, chunk, decoder)


@pytest.mark.parametrize("decoder", ["lean", "static", "static_compiled"])
def test_greedy_decode_gives_hf_generate_tokens(policy, decoder: str) -> None:
    model, processor = policy
    batch = _ragged_batch()
    cfg = GenerationConfig(max_new_tokens=12, temperature=0.0, num_samples=1)
    hf, _ = _generator(processor, 8, "generate").rollout(model, batch, cfg, _reward)
    lean, _ = _generator(processor, 8, decoder).rollout(model, batch, cfg, _reward)
    assert hf.prompt_mask.min() == 0  # left padding is exercised
    assert torch.equal(lean.response_ids, hf.response_ids)
    assert torch.equal(lean.response_mask, hf.response_mask)


def test_one_prefill_per_prompt_repeats_the_cache_for_its_samples(policy) -> None:
    """Greedy with num_return_sequences = G: each prompt prefilled once, its G rows equal the per-row result."""
    model, processor = policy
    gen = _generator(processor, 8, "lean")
    enc, per_visual, _ = gen.encode(_ragged_batch(), masked=False)
    inputs = dict(enc)
    inputs["pixel_values"] = torch.cat([v["pixel_values"] for v in per_visual])
    inputs["image_grid_thw"] = torch.cat([v["image_grid_thw"] for v in per_visual])
    cfg = GenerationConfig(max_new_tokens=10, temperature=0.0)
    per_row, _ = lean_generate(model, inputs, cfg, gen.eos_ids, gen.pad_id, gen.suppress_ids)
    prefill_rows = []
    hook = model.register_forward_hook(
        lambda m, a, k, out: prefill_rows.append(k["input_ids"].shape), with_kwargs=True
    )
    try:
        grouped, mask = lean_generate(model, inputs, cfg, gen.eos_ids, gen.pad_id, gen.suppress_ids, 3)
    finally:
        hook.remove()
    assert prefill_rows[0] == inputs["input_ids"].shape  # the prefill ran on the 3 prompts, not 9 rows
    assert all(s == (9, 1) for s in prefill_rows[1:])
    assert torch.equal(grouped, per_row.repeat_interleave(3, dim=0))
    assert mask.shape == grouped.shape


@pytest.mark.parametrize("decoder", ["lean", "static"])
def test_sampled_decode_never_emits_special_tokens_and_honours_min_new_tokens(policy, decoder: str) -> None:
    model, processor = policy
    gen = _generator(processor, 12, decoder)
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.5, top_p=1.0, num_samples=4, min_new_tokens=8)
    torch.manual_seed(0)
    exp, _ = gen.rollout(model, _ragged_batch(), cfg, _reward)
    assert exp.response_ids.shape == (12, 8)
    assert bool((exp.response_mask.sum(1) == 8).all())  # EOS blocked until the 8th token
    special = set(gen.suppress_ids)
    assert special and not special & set(exp.response_ids.flatten().tolist())
    # rows of one group are independent samples, not copies of one another
    assert len({tuple(r) for r in exp.response_ids.tolist()}) > 3


@pytest.mark.parametrize("decoder", ["lean", "static"])
def test_sampling_distribution_is_the_one_the_log_prob_pass_computes(
    policy, monkeypatch, decoder: str
) -> None:
    """The logits each decode step samples from (KV cache (dynamic, or static with its masked spare slots and
    spare rows), 3D rope positions, ready-made masks, one prefill repeated for G rows) equal a full forward over
    prompt + response, with the chunked LM head too: the rollouts are on-policy."""
    import papo.rollout.token_sampling as token_sampling
    from papo.models.logprobs import response_logps

    model, processor = policy
    seen: list[torch.Tensor] = []

    def recording_filter(logits, *args):
        seen.append(logits.clone())
        return filter_logits(logits, *args)

    monkeypatch.setattr(token_sampling, "filter_logits", recording_filter)
    gen = _generator(processor, 9, decoder)
    cfg = GenerationConfig(max_new_tokens=10, temperature=1.0, top_p=1.0, num_samples=3)
    torch.manual_seed(0)
    exp, _ = gen.rollout(model, _ragged_batch(), cfg, _reward)
    steps = torch.stack(seen, dim=1).log_softmax(-1)  # (N, T, V) of the sampler, suppressed ids at -inf
    sampled = steps.gather(-1, exp.response_ids[:, : steps.shape[1], None]).squeeze(-1)
    suppress = torch.tensor(gen.suppress_ids, dtype=torch.long)
    with torch.no_grad():
        full = response_logps(model, **exp.model_inputs(), suppress_ids=suppress)[:, : steps.shape[1]]
        chunked = response_logps(model, **exp.model_inputs(), suppress_ids=suppress, chunk_tokens=7)
    live = exp.response_mask[:, : steps.shape[1]].bool()
    assert live.sum() > 20
    torch.testing.assert_close(sampled[live], full[live], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sampled[live], chunked[:, : steps.shape[1]][live], atol=1e-4, rtol=1e-4)
