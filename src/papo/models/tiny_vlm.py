"""Build a tiny, randomly initialised but *real* Qwen2.5-VL, entirely offline.

What it is: a ``transformers`` ``Qwen2_5_VLForConditionalGeneration`` (window-attention ViT, 2x2 patch
merger, M-RoPE text decoder), a ``Qwen2_5_VLProcessor`` with the real ``Qwen2VLImageProcessor``
(patch 14, merge 2, temporal patch 2, CLIP mean/std), a ``Qwen2Tokenizer`` carrying all of Qwen2.5's added
tokens with their real strings/flags/order, and the real Qwen2.5-VL-Instruct chat template. It is saved
with ``save_pretrained`` and loads with ``AutoModelForImageTextToText`` / ``AutoProcessor`` exactly like
``Qwen/Qwen2.5-VL-3B-Instruct``, so the whole PAPO pipeline (chat template -> processor -> forward with
``pixel_values`` / ``image_grid_thw`` / ``mm_token_type_ids`` -> ``generate``) runs on two CPU cores with
no hub access.

How it differs from the real release:
- Random weights (seeded), so its outputs are noise until trained; sizes ``tiny`` (397,120 params: vision
  240,896, text 156,224) and ``small`` (13,826,816) instead of 3B/7B (see :data:`SIZES`).
- Tokenizer: a byte-level BPE trained here with ``tokenizers`` (same NFC normaliser, same Qwen2
  pre-tokenisation regex, ByteLevel, no UNK, so any text encodes) on a small built-in corpus plus the
  caller's corpus; ~500 ids instead of 151,665. The 22 added tokens follow the BPE vocabulary in Qwen's
  order, so ids differ from 151643.. (look them up, never hard-code them). ``config.vocab_size`` equals
  ``len(tokenizer)`` (the real config pads to 151,936; here no id is unreachable from the tokenizer).
- ``tie_word_embeddings=True`` for both sizes (like Qwen2.5-VL-3B; the 7B unties them).
- Image pixel bounds default to [56*56, 112*112] (4 to 16 image tokens per image) instead of
  [56*56, 28*28*1280]; the PAPO paper trains with [256*28*28, 1280*28*28].
- ``generation_config.json`` holds only bos/eos/pad ids (eos = [<|im_end|>, <|endoftext|>], pad =
  <|endoftext|>), none of the real release's near-greedy sampling defaults (do_sample with top_k=1,
  top_p=0.001, a low temperature, a repetition penalty).
- M-RoPE sections keep the real 1:1.5:1.5 (t:h:w) split of head_dim/2 ([16, 24, 24] for head_dim 128).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from papo.models.special_tokens import (
    ALL_ADDED_TOKENS,
    ENDOFTEXT,
    EXTRA_SPECIAL_TOKENS,
    IM_END,
    IMAGE_PAD,
    QWEN2_5_VL_CHAT_TEMPLATE,
    QWEN2_5_VL_SPECIAL_TOKENS,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
)
from papo.models.vision_tower import vision_tower
from papo.utils.atomic_dir import build_dir_once, is_complete

log = logging.getLogger(__name__)

# Bump when the builder's output changes for the same inputs (invalidates ensure_tiny_vlm caches).
BUILDER_VERSION = 1

PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
# A 56x56 image stays 56x56 -> 4x4 patches of 14 px -> 2x2 merged groups -> 4 <|image_pad|> tokens.
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 112 * 112  # at most 16 image tokens per image (real Qwen2.5-VL: 28*28*1280)

SPEC_FILENAME = "tiny_vlm_spec.json"

# The instruction EasyR1/PAPO append to each question (the data module owns the real prompt; this copy
# only makes its words cheap to tokenise).
_FORMAT_INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final "
    "answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST "
    "BE put in \\boxed{}."
)


# English words of math / counting questions, for the built-in tokenizer corpus.
_CORPUS_WORDS = """
the a an of in on is are what how many which find total number answer image figure shown below above
left right top bottom there each and or not if then so therefore because let me count first second
third next last step value area perimeter angle length width height radius diameter side sides point
points equal equals sum difference product ratio percent degrees units objects object color shape
largest smallest more less than greater between from to with by for as it this that these those we
you can be has have all any some only one two three four five six seven eight nine ten hundred
thousand half twice question solve compute calculate given choose option options correct true false
yes no x y z n m k ABC AB BC CA triangle chart table graph bar plot axis year price cost time speed
distance rate probability mean median
"""


@dataclass(frozen=True)
class TinyVLMSpec:
    """Architecture of an embedded Qwen2.5-VL. Any field can be overridden by keyword in the builders."""

    # Target tokenizer size INCLUDING the 22 added tokens (the BPE may stop short on a tiny corpus).
    vocab_size: int = 512
    # Text decoder (Qwen2.5 with M-RoPE). head_dim = hidden_size / num_attention_heads.
    hidden_size: int = 64
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    # (temporal, height, width) rotary sections; must sum to head_dim / 2. None: real 1:1.5:1.5 split.
    mrope_section: tuple[int, int, int] | None = None
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    # Vision tower (ViT with window attention; output projected by the merger to hidden_size).
    vision_depth: int = 2
    vision_hidden_size: int = 64
    vision_intermediate_size: int = 128
    vision_num_heads: int = 4
    # Blocks with full attention (others use windows); None: the last block of every pair (real: 7,15,23,31).
    vision_fullatt_block_indexes: tuple[int, ...] | None = None
    vision_window_size: int = 112
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def resolved_mrope_section(self) -> list[int]:
        if self.mrope_section is not None:
            return list(self.mrope_section)
        half = self.head_dim // 2
        t = half // 4
        h = (half - t) // 2
        return [t, h, half - t - h]

    def resolved_fullatt_block_indexes(self) -> list[int]:
        if self.vision_fullatt_block_indexes is not None:
            return list(self.vision_fullatt_block_indexes)
        return [i for i in range(self.vision_depth) if i % 2 == 1] or [self.vision_depth - 1]

    def validate(self) -> None:
        errors = []
        if self.hidden_size % self.num_attention_heads:
            errors.append("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            errors.append("num_attention_heads must be divisible by num_key_value_heads")
        if self.head_dim % 2:
            errors.append("head_dim (hidden_size / num_attention_heads) must be even")
        elif sum(self.resolved_mrope_section()) != self.head_dim // 2:
            errors.append(f"mrope_section must sum to head_dim/2 = {self.head_dim // 2}")
        if (
            self.vision_hidden_size % self.vision_num_heads
            or (self.vision_hidden_size // self.vision_num_heads) % 4
        ):
            errors.append("vision_hidden_size / vision_num_heads must be a multiple of 4 (2D rotary)")
        if any(not 0 <= i < self.vision_depth for i in self.resolved_fullatt_block_indexes()):
            errors.append("vision_fullatt_block_indexes must lie in [0, vision_depth)")
        if self.vocab_size < 256 + len(ALL_ADDED_TOKENS):
            errors.append(f"vocab_size must be >= {256 + len(ALL_ADDED_TOKENS)} (256 bytes + added tokens)")
        if errors:
            raise ValueError("invalid TinyVLMSpec: " + "; ".join(errors))


# "tiny" (397,120 params): unit tests and CPU end-to-end runs. "small" (13,826,816): CPU benchmarks.
# Counts with the full 512-id tokenizer and tied embeddings.
SIZES: dict[str, TinyVLMSpec] = {
    "tiny": TinyVLMSpec(),
    "small": TinyVLMSpec(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        vision_depth=4,
        vision_hidden_size=256,
        vision_intermediate_size=1024,
        vision_num_heads=4,
    ),
}


def resolve_spec(size: str = "tiny", **overrides: Any) -> TinyVLMSpec:
    """The spec for ``size`` with ``overrides`` applied (unknown size or field names are errors)."""
    if size not in SIZES:
        raise ValueError(f"unknown tiny VLM size {size!r}; valid sizes: {sorted(SIZES)}")
    valid = {f.name for f in fields(TinyVLMSpec)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown tiny VLM override(s) {unknown}; valid: {sorted(valid)}")
    for key in ("mrope_section", "vision_fullatt_block_indexes"):  # lists from YAML -> hashable tuples
        if overrides.get(key) is not None:
            overrides[key] = tuple(overrides[key])
    spec = replace(SIZES[size], **overrides)
    spec.validate()
    return spec


# ----------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------


def builtin_corpus() -> list[str]:
    """A small deterministic corpus: digits, punctuation, LaTeX, think tags, chat words, math English."""
    colors = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "gray", "brown"]
    shapes = ["circle", "square", "triangle", "rectangle", "cube", "sphere", "cylinder", "star", "line"]
    words = _CORPUS_WORDS.split()
    lines = [
        "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 30 36 45 50 60 90 100 180 360 1000",
        "3.14 0.5 2.5 -1 -2 1/2 3/4 10% 50% 1,000 2024",
        "! \" # $ % & ' ( ) * + , - . / : ; < = > ? @ [ \\ ] ^ _ ` { | } ~",
        "\\boxed{} \\boxed{0} \\boxed{1} \\boxed{2} \\boxed{3} \\boxed{4} \\boxed{5} \\boxed{A} \\boxed{B}",
        "\\frac{1}{2} \\frac{a}{b} \\sqrt{2} \\sqrt{3} \\times \\cdot \\div \\pi \\circ \\angle \\triangle",
        "x^{2} + y^{2} = r^{2} a_{n} \\leq \\geq \\neq \\approx \\left( \\right) \\text{cm} 30^\\circ",
        "<think> </think> <think>\n</think>\n\n",
        "You are a helpful assistant.",
        "system user assistant",
        _FORMAT_INSTRUCTION,
        "The quick brown fox jumps over the lazy dog. Hello, world!",
    ]
    for i, color in enumerate(colors):
        for j, shape in enumerate(shapes):
            n = (3 * i + j) % 10
            lines.append(f"How many {color} {shape}s are in the image?")
            lines.append(f"<think>I count the {color} {shape}s: there are {n}.</think> \\boxed{{{n}}}")
            lines.append(f"What is the area of the {shape} if each side is {n + 1} cm? {_FORMAT_INSTRUCTION}")
            lines.append(
                f"<think>\nThe {shape} has {n + 2} sides, so the answer is \\frac{{{n}}}{{{n + 2}}}.\n"
                f"</think>\nThe answer is \\boxed{{\\frac{{{n}}}{{{n + 2}}}}}."
            )
    for k in range(0, len(words), 8):
        lines.append(" ".join(words[k : k + 8]).capitalize() + ".")
        lines.append(" ".join(reversed(words[k : k + 8])) + "?")
    return lines * 2  # every line twice: min_frequency=2 keeps one-off pairs out of the merges


def train_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512):
    """Train a Qwen2-style byte-level BPE on ``builtin_corpus() + corpus`` and wrap it as ``Qwen2Tokenizer``.

    The BPE gets ``vocab_size - 22`` ids (fewer if the corpus runs out of pairs seen twice); the 22 added
    tokens follow it in Qwen's order. pad = <|endoftext|>, eos = <|im_end|>, no bos, no unk.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(BPE(unk_token=None, byte_fallback=False, fuse_unk=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(ALL_ADDED_TOKENS),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is ever UNK
        special_tokens=[],
    )
    texts = builtin_corpus() + [t for t in (corpus or []) if t]
    bpe.train_from_iterator(texts, trainer=trainer)
    model_state = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(model_state["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model_state["merges"]]

    n = len(vocab)
    added = {
        n + i: AddedToken(
            tok, special=tok in QWEN2_5_VL_SPECIAL_TOKENS, normalized=False, lstrip=False, rstrip=False
        )
        for i, tok in enumerate(ALL_ADDED_TOKENS)
    }
    vocab.update({tok.content: i for i, tok in added.items()})
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        added_tokens_decoder=added,
        extra_special_tokens=list(EXTRA_SPECIAL_TOKENS),
        model_max_length=32768,
        errors="replace",
        split_special_tokens=False,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    expected = list(range(n, n + len(ALL_ADDED_TOKENS)))
    got = tokenizer.convert_tokens_to_ids(list(ALL_ADDED_TOKENS))
    if got != expected or len(tokenizer) != n + len(ALL_ADDED_TOKENS):
        raise RuntimeError(f"added-token ids came out as {got}, expected {expected} (transformers change?)")
    return tokenizer


# ----------------------------------------------------------------------------------------------------
# Processor, config, model
# ----------------------------------------------------------------------------------------------------


def build_processor(tokenizer, min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS):
    """``Qwen2_5_VLProcessor`` = real Qwen2-VL image/video processors + ``tokenizer`` + the real template."""
    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) > max_pixels ({max_pixels})")
    kw = dict(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
    )
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**kw),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**kw),
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )


def build_config(spec: TinyVLMSpec, tokenizer):
    """``Qwen2_5_VLConfig`` for ``spec`` whose token ids agree with ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (ENDOFTEXT, IM_END, IMAGE_PAD, VIDEO_PAD)}
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        hidden_act="silu",
        max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.initializer_range,
        rms_norm_eps=spec.rms_norm_eps,
        use_sliding_window=False,
        # transformers 5: M-RoPE lives in rope_parameters (rope_type "default" + mrope_section).
        rope_parameters={
            "rope_type": "default",
            "rope_theta": spec.rope_theta,
            "mrope_section": spec.resolved_mrope_section(),
        },
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
        tie_word_embeddings=spec.tie_word_embeddings,
    )
    vision_config = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_intermediate_size,
        num_heads=spec.vision_num_heads,
        hidden_act="silu",
        in_channels=3,
        patch_size=PATCH_SIZE,
        spatial_merge_size=MERGE_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        window_size=spec.vision_window_size,
        out_hidden_size=spec.hidden_size,
        fullatt_block_indexes=spec.resolved_fullatt_block_indexes(),
        initializer_range=spec.initializer_range,
    )
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=tokenizer.convert_tokens_to_ids(VISION_START),
        vision_end_token_id=tokenizer.convert_tokens_to_ids(VISION_END),
        tie_word_embeddings=spec.tie_word_embeddings,
    )


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Unique parameter counts (tied weights once): total, vision tower, text (everything else)."""
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in vision_tower(model).parameters())
    return {"total": total, "vision": vision, "text": total - vision}


def build_tiny_vlm(
    output_dir: str | Path,
    size: str = "tiny",
    corpus: Iterable[str] | None = None,
    seed: int = 0,
    min_pixels: int | None = DEFAULT_MIN_PIXELS,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    **overrides: Any,
) -> Path:
    """Build the embedded Qwen2.5-VL of ``size`` into ``output_dir`` (model safetensors + processor).

    Deterministic for a given (size, overrides, corpus, seed, pixel bounds): the tokenizer trainer is
    deterministic and the weights are drawn under ``torch.manual_seed(seed)`` inside a forked RNG (the
    caller's global RNG state is left untouched). ``overrides`` are :class:`TinyVLMSpec` fields;
    ``None`` pixel bounds mean the defaults. Also writes ``tiny_vlm_spec.json`` (spec, parameter counts, special-token ids). Returns the dir.
    """
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    spec = resolve_spec(size, **overrides)
    min_pixels, max_pixels = _pixel_bounds(min_pixels, max_pixels)
    output_dir = Path(output_dir)
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(corpus, vocab_size=spec.vocab_size)
    processor = build_processor(tokenizer, min_pixels=min_pixels, max_pixels=max_pixels)
    config = build_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    eos, pad = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad)

    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    params = count_parameters(model)
    info = {
        "builder_version": BUILDER_VERSION,
        "size": size,
        "seed": seed,
        "spec": asdict(spec),
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "vocab_size": len(tokenizer),
        "parameters": params,
        "added_token_ids": {t: tokenizer.convert_tokens_to_ids(t) for t in ALL_ADDED_TOKENS},
    }
    (output_dir / SPEC_FILENAME).write_text(json.dumps(info, indent=2) + "\n")
    log.info(
        "built tiny Qwen2.5-VL %r in %s: %d params (vision %d, text %d), vocab %d, %.1fs",
        size,
        output_dir,
        params["total"],
        params["vision"],
        params["text"],
        len(tokenizer),
        time.perf_counter() - t0,
    )
    return output_dir


def _pixel_bounds(min_pixels: int | None, max_pixels: int | None) -> tuple[int, int]:
    """None -> the defaults; ints as ints (a YAML 3136.0 and 3136 give the same cache key)."""
    lo = DEFAULT_MIN_PIXELS if min_pixels is None else int(min_pixels)
    hi = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if lo > hi:
        raise ValueError(f"min_pixels ({lo}) > max_pixels ({hi})")
    return lo, hi


def _cache_key(size: str, spec: TinyVLMSpec, seed: int, min_pixels: int, max_pixels: int, corpus_id) -> str:
    key = {
        "builder_version": BUILDER_VERSION,
        "size": size,
        "spec": asdict(spec),
        "seed": seed,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "corpus": corpus_id,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def ensure_tiny_vlm(
    cache_dir: str | Path,
    size: str = "tiny",
    corpus_fn: Callable[[], Iterable[str]] | None = None,
    seed: int = 0,
    min_pixels: int | None = DEFAULT_MIN_PIXELS,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    corpus_key: str | None = None,
    **overrides: Any,
) -> Path:
    """Return ``cache_dir/<size>-<hash>``, building it with :func:`build_tiny_vlm` on first use.

    The hash covers the builder version, spec (after ``overrides``), seed, pixel bounds and corpus. The
    corpus enters the hash as ``corpus_key`` when given (a caller-chosen name for it, e.g. the dataset
    config; ``corpus_fn`` is then only called on a cache miss), else as a digest of ``corpus_fn()``'s text.
    The build goes to a temporary sibling directory renamed into place when complete
    (:func:`papo.utils.atomic_dir.build_dir_once`), so a crash never leaves a half-built cache and concurrent
    builders (e.g. DDP ranks) cannot clash. Pixel bounds can also be changed at load time
    (:func:`papo.models.loading.load_policy`) without rebuilding.
    """
    spec = resolve_spec(size, **overrides)
    min_pixels, max_pixels = _pixel_bounds(min_pixels, max_pixels)
    corpus: list[str] | None = None
    if corpus_key is not None:
        corpus_id: str | None = f"key:{corpus_key}"
    elif corpus_fn is not None:
        corpus = list(corpus_fn())
        corpus_id = "sha256:" + hashlib.sha256("\x00".join(corpus).encode()).hexdigest()
    else:
        corpus_id = None
    cache_dir = Path(cache_dir)
    target = cache_dir / f"{size}-{_cache_key(size, spec, seed, min_pixels, max_pixels, corpus_id)}"
    if is_complete(target):
        log.info("reusing cached tiny Qwen2.5-VL %r at %s", size, target)
        return target

    if corpus is None and corpus_fn is not None:
        corpus = list(corpus_fn())
    log.info("building tiny Qwen2.5-VL %r into %s", size, target)
    build_dir_once(
        target, lambda tmp: build_tiny_vlm(tmp, size, corpus, seed, min_pixels, max_pixels, **overrides)
    )
    return target


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_PIXELS",
    "SIZES",
    "TinyVLMSpec",
    "build_config",
    "build_processor",
    "build_tiny_vlm",
    "builtin_corpus",
    "count_parameters",
    "ensure_tiny_vlm",
    "resolve_spec",
    "train_tokenizer",
]
