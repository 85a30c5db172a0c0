"""The embedded tiny Qwen2.5-VL: build, reload, chat template, processor, forward, generate, caching."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from papo.models.loading import (
    end_token_ids,
    generation_suppress_token_ids,
    load_policy,
    padded_vocab_ids,
    resolve_dtype,
    resolve_policy_path,
    vision_tower,
)
from papo.models.special_tokens import (
    ALL_ADDED_TOKENS,
    ENDOFTEXT,
    IM_END,
    IMAGE_PAD,
    QWEN2_5_VL_CHAT_TEMPLATE,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
)
from papo.models.tiny_vlm import (
    SPEC_FILENAME,
    build_config,
    build_tiny_vlm,
    ensure_tiny_vlm,
    resolve_spec,
    train_tokenizer,
)

# sha256 of Qwen2.5-VL-*-Instruct's chat_template.json "chat_template" string.
CHAT_TEMPLATE_SHA256 = "a0bc6f6fc7a29a80017a433e8f03a1cc1236e838a944a2d034295a60c4f2fddb"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny"), corpus=["How many marbles are left?"] * 3)


@pytest.fixture(scope="module")
def policy(tiny_dir):
    torch.set_num_threads(2)
    return load_policy(tiny_dir)


def _image(seed: int, size: int = 56) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8))


def _prompt(processor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def test_chat_template_is_the_release_one():
    assert hashlib.sha256(QWEN2_5_VL_CHAT_TEMPLATE.encode()).hexdigest() == CHAT_TEMPLATE_SHA256


def test_saved_files_and_ids_consistent(tiny_dir, policy):
    model, processor = policy
    names = {p.name for p in tiny_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "processor_config.json",
        SPEC_FILENAME,
    } <= names
    tok = processor.tokenizer
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(processor.image_processor).__name__.startswith("Qwen2VLImageProcessor")
    assert tok.padding_side == "left"
    # All 22 Qwen2.5 added tokens, contiguous, in the release's order, right after the BPE vocabulary.
    ids = tok.convert_tokens_to_ids(list(ALL_ADDED_TOKENS))
    assert ids == list(range(ids[0], ids[0] + 22)) and ids[-1] == len(tok) - 1
    assert tok.pad_token == ENDOFTEXT and tok.eos_token == IM_END and tok.bos_token is None
    assert tok.unk_token is None
    cfg = model.config
    assert cfg.image_token_id == tok.convert_tokens_to_ids(IMAGE_PAD) == processor.image_token_id
    assert cfg.video_token_id == tok.convert_tokens_to_ids(VIDEO_PAD)
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids(VISION_START)
    assert cfg.vision_end_token_id == tok.convert_tokens_to_ids(VISION_END)
    assert cfg.text_config.vocab_size == len(tok) == 512
    assert cfg.text_config.eos_token_id == tok.eos_token_id
    assert cfg.text_config.pad_token_id == tok.pad_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert tok.eos_token_id in model.generation_config.eos_token_id
    assert cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    info = json.loads((tiny_dir / SPEC_FILENAME).read_text())
    assert info["added_token_ids"][IMAGE_PAD] == cfg.image_token_id


def test_tokenizer_round_trips():
    tok = train_tokenizer(["a tiny extra corpus"], vocab_size=512)
    for text in [
        "<think>x</think> \\boxed{3}",
        "héllo wörld, 日本語, emoji 🙂🧮, ∑∫√π, tabs\tand\nnewlines\r\n, nul\x00, Ω≈ç",
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n",
    ]:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
        assert all(0 <= i < len(tok) for i in ids)
    ids = tok("<|im_start|><|image_pad|><|im_end|>")["input_ids"]
    assert ids == tok.convert_tokens_to_ids(["<|im_start|>", IMAGE_PAD, IM_END])
    assert tok.decode(ids, skip_special_tokens=True) == ""
    assert len(tok("\\boxed{12}")["input_ids"]) <= 6  # the built-in corpus makes LaTeX cheap


def test_processor_image_tokens_and_forward(policy):
    model, processor = policy
    text = _prompt(processor, "How many circles are there?")
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>How many circles are there?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    enc = processor(text=[text], images=[_image(0)], return_tensors="pt", padding=True)
    assert {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"} <= set(enc)
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == 4  # 56x56 -> 2x2 merged
    assert enc["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert tuple(enc["pixel_values"].shape) == (16, 3 * 2 * 14 * 14)
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (1, enc["input_ids"].shape[1], len(processor.tokenizer))
    assert torch.isfinite(logits).all()


def test_generate_left_padded_batch_never_samples_suppressed(policy):
    model, processor = policy
    tok = processor.tokenizer
    questions = ["Count.", "How many red circles are in this image?", "What is \\frac{1}{2} of 8 apples?"]
    texts = [_prompt(processor, q) for q in questions]
    enc = processor(text=texts, images=[_image(i) for i in range(3)], return_tensors="pt", padding=True)
    lengths = enc["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) == 3
    short = int(lengths.argmin())
    assert enc["attention_mask"][short, 0] == 0 and enc["input_ids"][short, 0] == tok.pad_token_id  # left pad
    assert (enc["attention_mask"][:, -1] == 1).all()

    ours = generation_suppress_token_ids(processor, model.config.text_config.vocab_size)
    assert ours == [model.config.image_token_id]  # no padded rows in the tiny model: the placeholder only
    # the mechanism under test (HF suppress_tokens / bad_words_ids on a left-padded batch), with a set large
    # enough that a random-init model at T=1 does sample it: every added token except the two end tokens
    ends = {tok.eos_token_id, tok.pad_token_id}  # <|im_end|>, <|endoftext|>: the generation config's eos
    suppress = sorted(set(tok.convert_tokens_to_ids(list(ALL_ADDED_TOKENS))) - ends)
    assert set(ours) <= set(suppress)

    def sample(**kw):
        torch.manual_seed(0)
        with torch.no_grad():
            out = model.generate(
                **enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=12,
                num_return_sequences=8, **kw,
            )  # fmt: skip
        return out[:, enc["input_ids"].shape[1] :]  # (24, <=12) responses

    def emitted(responses):  # suppressed ids sampled before (and including) the first eos
        hits = 0
        for row in responses.tolist():
            upto = row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row
            hits += sum(i in suppress for i in upto)
            assert all(i == tok.pad_token_id for i in row[len(upto) :])  # after eos: padding only
        return hits

    baseline = sample()  # a random-init model at T=1 does emit them (else this test would be vacuous)
    assert emitted(baseline) > 0
    assert emitted(sample(suppress_tokens=suppress)) == 0
    assert emitted(sample(bad_words_ids=[[i] for i in suppress])) == 0


def test_param_counts_in_range():
    from transformers import Qwen2_5_VLForConditionalGeneration

    tok = train_tokenizer(vocab_size=512)
    counts = {}
    for size in ("tiny", "small"):
        with torch.device("meta"):
            model = Qwen2_5_VLForConditionalGeneration(build_config(resolve_spec(size), tok))
        counts[size] = sum(p.numel() for p in model.parameters())
    assert 300_000 <= counts["tiny"] <= 600_000, counts
    assert 10_000_000 <= counts["small"] <= 20_000_000, counts


def test_same_seed_same_weights(tmp_path, tiny_dir):
    again = build_tiny_vlm(tmp_path / "again", corpus=["How many marbles are left?"] * 3)
    other = build_tiny_vlm(tmp_path / "other", corpus=["How many marbles are left?"] * 3, seed=1)
    a, b, c = (load_file(d / "model.safetensors") for d in (tiny_dir, again, other))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert (tiny_dir / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()


def test_ensure_tiny_vlm_builds_once(tmp_path, caplog):
    calls = []

    def corpus_fn():
        calls.append(1)
        return ["Which shape is largest?"]

    with caplog.at_level(logging.INFO, logger="papo.models.tiny_vlm"):
        first = ensure_tiny_vlm(tmp_path, corpus_fn=corpus_fn, corpus_key="shapes-v1")
        mtime = (first / "model.safetensors").stat().st_mtime_ns
        caplog.clear()
        second = ensure_tiny_vlm(tmp_path, corpus_fn=corpus_fn, corpus_key="shapes-v1")
    assert first == second and first.name.startswith("tiny-")
    assert (second / "model.safetensors").stat().st_mtime_ns == mtime
    assert any("reusing" in r.getMessage() for r in caplog.records)
    assert not any("building" in r.getMessage() for r in caplog.records)
    assert len(calls) == 1  # with a corpus_key the corpus is only produced on a miss
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp dirs left behind
    # None pixel bounds (a config without them) mean the defaults: same entry.
    assert ensure_tiny_vlm(tmp_path, corpus_key="shapes-v1", min_pixels=None, max_pixels=None) == first
    assert resolve_policy_path(None, tmp_path, corpus_key="shapes-v1") == first
    assert resolve_policy_path("Qwen/Qwen2.5-VL-3B-Instruct", tmp_path) == "Qwen/Qwen2.5-VL-3B-Instruct"
    # A different spec or corpus is a different cache entry.
    assert ensure_tiny_vlm(tmp_path, corpus_fn=corpus_fn, corpus_key="shapes-v2") != first


def test_ensure_failed_build_leaves_no_cache(tmp_path):
    def bad_corpus():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ensure_tiny_vlm(tmp_path, corpus_fn=bad_corpus, corpus_key="x")
    with pytest.raises(ValueError, match="unknown tiny VLM override"):
        ensure_tiny_vlm(tmp_path, hidden_sise=32)
    assert list(tmp_path.iterdir()) == []


def test_load_policy_options(tiny_dir):
    model, processor = load_policy(
        tiny_dir,
        dtype="bfloat16",
        gradient_checkpointing=True,
        freeze_vision_tower=True,
        min_pixels=28 * 28,
        max_pixels=56 * 56,
    )
    assert next(model.parameters()).dtype == torch.bfloat16
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    visual = vision_tower(model)
    assert visual is model.model.visual
    visual_ids = {id(p) for p in visual.parameters()}
    assert all(not p.requires_grad for p in visual.parameters())
    assert all(p.requires_grad for p in model.parameters() if id(p) not in visual_ids)
    enc = processor(text=[_prompt(processor, "q")], images=[_image(1, 224)], return_tensors="pt")
    assert enc["image_grid_thw"].tolist() == [[1, 4, 4]]  # 224x224 capped at 56*56 pixels -> 4 tokens


def test_suppress_ids_end_tokens_and_validation(policy):
    model, processor = policy
    tok = processor.tokenizer
    ids = generation_suppress_token_ids(processor)
    assert ids == generation_suppress_token_ids(tok) == tok.convert_tokens_to_ids(["<|image_pad|>"])
    # padded output rows beyond the tokenizer: never sampled, never scored
    assert generation_suppress_token_ids(tok, vocab_size=len(tok) + 3)[-3:] == [
        len(tok) + i for i in range(3)
    ]
    assert padded_vocab_ids(tok, len(tok) + 3) == [len(tok) + i for i in range(3)]
    assert padded_vocab_ids(tok, len(tok)) == [] and padded_vocab_ids(tok, None) == []
    # both end tokens of the generation config, <|im_end|> first (as Qwen2.5-VL's generation_config.json)
    assert end_token_ids(model.generation_config, tok) == tok.convert_tokens_to_ids([IM_END, "<|endoftext|>"])
    assert end_token_ids(None, tok) == [tok.convert_tokens_to_ids(IM_END)]
    with pytest.raises(ValueError, match="valid sizes"):
        resolve_spec("huge")
    with pytest.raises(ValueError, match="mrope_section"):
        resolve_spec("tiny", mrope_section=[1, 1, 1])
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8")


def test_training_forward_reproduces_rollout_logits(policy):
    """transformers 5 builds M-RoPE positions from mm_token_type_ids: a training forward over
    prompt + response must pass it (zeros on response tokens) to score what generate() sampled."""
    model, processor = policy
    texts = [_prompt(processor, q) for q in ("a", "How many red circles are there?")]
    images = [_image(0), _image(1, 84)]  # 56x56 -> 4 image tokens, 84x84 -> 9
    enc = processor(text=texts, images=images, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    with torch.no_grad():
        gen = model.generate(
            **enc, do_sample=True, top_k=0, top_p=1.0, max_new_tokens=6, min_new_tokens=6,
            suppress_tokens=generation_suppress_token_ids(processor),
            output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
    seq, P = gen.sequences, enc["input_ids"].shape[1]  # (2, P + 6)
    rollout_logits = torch.stack(gen.logits, 1)  # (2, 6, V)
    attention_mask = torch.ones_like(seq)
    attention_mask[:, :P] = enc["attention_mask"]
    mm_token_type_ids = torch.zeros_like(seq)
    mm_token_type_ids[:, :P] = enc["mm_token_type_ids"]
    visual = {"pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]}

    def max_logp_gap(**kw):
        with torch.no_grad():
            logits = model(input_ids=seq, attention_mask=attention_mask, **visual, **kw).logits[:, P - 1 : -1]
        return (torch.log_softmax(logits, -1) - torch.log_softmax(rollout_logits, -1)).abs().max().item()

    assert max_logp_gap(mm_token_type_ids=mm_token_type_ids) < 1e-5
    assert max_logp_gap() > 1e-4  # without it positions silently fall back to 1D text positions
