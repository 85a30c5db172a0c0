"""Tiny local stand-ins for each supported architecture family, built offline with the REAL classes.

A stand-in replaces a hub checkpoint (``Qwen/Qwen2.5-VL-3B-Instruct``, ``Qwen/Qwen3-VL-2B-Instruct``) by a
randomly initialised model of the same ``transformers`` classes with tiny dimensions, its own locally trained
tokenizer carrying the family's added tokens, the family's real image/video processors and chat template.
It is saved with ``save_pretrained`` and loaded by :func:`papo.models.loading.load_policy` through
``AutoModelForImageTextToText`` / ``AutoProcessor`` exactly like the real checkpoint, so a test or a smoke
run with ``model.stand_in=tiny`` drives the code path of the real model on a CPU, without any download.

Families (``model.family``):

- ``qwen2_5_vl``: :mod:`papo.models.tiny_vlm` (``Qwen2_5_VLForConditionalGeneration``; 14-px patches, 2x2
  merge, window-attention ViT, M-RoPE).
- ``qwen3_vl``: built here (``Qwen3VLForConditionalGeneration`` + ``Qwen3VLProcessor``): 16-px patches and
  2x2 merge (32-px grid), learned + interpolated vision position embeddings, DeepStack visual features
  injected into the first decoder layers, interleaved M-RoPE, ``head_dim`` set explicitly, no default
  system prompt, and ``<think>`` / ``</think>`` as added (non-special) tokens, as in the real Qwen3 tokenizer.

How the Qwen3-VL stand-in differs from the release: random weights; a ~500-id byte-level BPE instead of
151,643 ids (the 26 added tokens follow it in Qwen3's order, so look ids up, never hard-code them); a
shortened chat template (user/assistant/system turns with images and videos; no tool calls or reasoning
blocks); image bounds [64*64, 128*128] pixels (4 to 16 image tokens) instead of the release's
[32*32*256 (approx.), 32*32*16384]; ``tie_word_embeddings`` true (as in the 2B release).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from papo.models.special_tokens import ENDOFTEXT, IM_END, IMAGE_PAD, VIDEO_PAD, VISION_END, VISION_START
from papo.utils.atomic_dir import build_dir_once, is_complete

log = logging.getLogger(__name__)

__all__ = [
    "FAMILIES",
    "QWEN3_ADDED_TOKENS",
    "QWEN3_VL_CHAT_TEMPLATE",
    "Qwen3VLStandInSpec",
    "build_tiny_qwen3_vl",
    "ensure_stand_in",
]

FAMILIES = ("qwen2_5_vl", "qwen3_vl")

QWEN3_BUILDER_VERSION = 1
QWEN3_PATCH_SIZE = 16
QWEN3_MERGE_SIZE = 2
QWEN3_TEMPORAL_PATCH_SIZE = 2
QWEN3_DEFAULT_MIN_PIXELS = 64 * 64  # a 64x64 image -> 4x4 patches of 16 px -> 2x2 merged -> 4 tokens
QWEN3_DEFAULT_MAX_PIXELS = 128 * 128  # at most 16 image tokens per image

#: added after Qwen2.5's 22 added tokens, in Qwen3's order (all ``special=False``).
QWEN3_ADDED_TOKENS = ("<tool_response>", "</tool_response>", "<think>", "</think>")

# Qwen3-VL-*-Instruct's template, shortened: no default system prompt; each image is
# <|vision_start|><|image_pad|><|vision_end|>; text copied verbatim.
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}{%- else %}"
    "{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content['type'] == 'video' or 'video' in content %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content %}{{- content['text'] }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class Qwen3VLStandInSpec:
    """Architecture of a Qwen3-VL stand-in (any field can be overridden by keyword)."""

    vocab_size: int = 512  # including the 26 added tokens
    hidden_size: int = 64
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    # (t, h, w) rotary sections, interleaved; sum = head_dim / 2 (release: [24, 20, 20] for head_dim 128)
    mrope_section: tuple[int, int, int] = (4, 2, 2)
    rope_theta: float = 5_000_000.0
    max_position_embeddings: int = 32768
    vision_depth: int = 2
    vision_hidden_size: int = 64
    vision_intermediate_size: int = 128
    vision_num_heads: int = 4
    # learned position-embedding grid (sqrt of this per side), interpolated to each image's grid
    vision_num_position_embeddings: int = 64
    # vision layers whose features are added into decoder layers 0, 1, ... (release: 8, 16, 24)
    deepstack_visual_indexes: tuple[int, ...] = (0,)
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02


QWEN3_SIZES: dict[str, Qwen3VLStandInSpec] = {
    "tiny": Qwen3VLStandInSpec(),
    "small": Qwen3VLStandInSpec(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=8,
        head_dim=64,
        mrope_section=(12, 10, 10),
        vision_depth=4,
        vision_hidden_size=256,
        vision_intermediate_size=1024,
        deepstack_visual_indexes=(1, 2),
    ),
}


def _qwen3_tokenizer(corpus: Iterable[str] | None, vocab_size: int):
    """Qwen2.5's 22 added tokens (via :func:`papo.models.tiny_vlm.train_tokenizer`) + Qwen3's 4 more."""
    from tokenizers import AddedToken

    from papo.models.tiny_vlm import train_tokenizer

    tok = train_tokenizer(corpus, vocab_size=vocab_size - len(QWEN3_ADDED_TOKENS))
    n = len(tok)
    tok.add_tokens(
        [
            AddedToken(t, special=False, normalized=False, lstrip=False, rstrip=False)
            for t in QWEN3_ADDED_TOKENS
        ]
    )
    got = tok.convert_tokens_to_ids(list(QWEN3_ADDED_TOKENS))
    if got != list(range(n, n + len(QWEN3_ADDED_TOKENS))):
        raise RuntimeError(f"Qwen3 added-token ids came out as {got} (transformers change?)")
    tok.chat_template = QWEN3_VL_CHAT_TEMPLATE
    return tok


def _qwen3_processor(tokenizer, min_pixels: int, max_pixels: int):
    from transformers import Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    kw = dict(
        patch_size=QWEN3_PATCH_SIZE,
        merge_size=QWEN3_MERGE_SIZE,
        temporal_patch_size=QWEN3_TEMPORAL_PATCH_SIZE,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    image = Qwen2VLImageProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, **kw)
    video = Qwen3VLVideoProcessor(**kw)
    return Qwen3VLProcessor(
        image_processor=image,
        tokenizer=tokenizer,
        video_processor=video,
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )


def _qwen3_config(spec: Qwen3VLStandInSpec, tokenizer):
    from transformers import Qwen3VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (ENDOFTEXT, IM_END, IMAGE_PAD, VIDEO_PAD)}
    if sum(spec.mrope_section) != spec.head_dim // 2:
        raise ValueError(f"mrope_section {spec.mrope_section} must sum to head_dim/2 = {spec.head_dim // 2}")
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        hidden_act="silu",
        max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.initializer_range,
        rms_norm_eps=1e-6,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": spec.rope_theta,
            "mrope_section": list(spec.mrope_section),
            "mrope_interleaved": True,
        },
        pad_token_id=ids[ENDOFTEXT],
    )
    vision_config = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_intermediate_size,
        num_heads=spec.vision_num_heads,
        hidden_act="gelu_pytorch_tanh",
        in_channels=3,
        patch_size=QWEN3_PATCH_SIZE,
        spatial_merge_size=QWEN3_MERGE_SIZE,
        temporal_patch_size=QWEN3_TEMPORAL_PATCH_SIZE,
        out_hidden_size=spec.hidden_size,
        num_position_embeddings=spec.vision_num_position_embeddings,
        deepstack_visual_indexes=list(spec.deepstack_visual_indexes),
        initializer_range=spec.initializer_range,
    )
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=tokenizer.convert_tokens_to_ids(VISION_START),
        vision_end_token_id=tokenizer.convert_tokens_to_ids(VISION_END),
        tie_word_embeddings=spec.tie_word_embeddings,
    )


def _resolve_qwen3_spec(size: str, **overrides: Any) -> Qwen3VLStandInSpec:
    if size not in QWEN3_SIZES:
        raise ValueError(f"unknown stand-in size {size!r}; valid sizes: {sorted(QWEN3_SIZES)}")
    for key in ("mrope_section", "deepstack_visual_indexes"):
        if overrides.get(key) is not None:
            overrides[key] = tuple(overrides[key])
    return replace(QWEN3_SIZES[size], **overrides)


def build_tiny_qwen3_vl(
    output_dir: str | Path,
    size: str = "tiny",
    corpus: Iterable[str] | None = None,
    seed: int = 0,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    **overrides: Any,
) -> Path:
    """Build the Qwen3-VL stand-in of ``size`` into ``output_dir`` (deterministic for its inputs)."""
    from transformers import GenerationConfig, Qwen3VLForConditionalGeneration

    from papo.models.tiny_vlm import count_parameters

    spec = _resolve_qwen3_spec(size, **overrides)
    lo = QWEN3_DEFAULT_MIN_PIXELS if min_pixels is None else int(min_pixels)
    hi = QWEN3_DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    t0 = time.perf_counter()
    tokenizer = _qwen3_tokenizer(corpus, spec.vocab_size)
    processor = _qwen3_processor(tokenizer, lo, hi)
    config = _qwen3_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config).to(torch.float32).eval()
    eos, pad = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    params = count_parameters(model)
    info = {"family": "qwen3_vl", "size": size, "seed": seed, "spec": asdict(spec), "parameters": params}
    (output_dir / "stand_in_spec.json").write_text(json.dumps(info, indent=2) + "\n")
    log.info(
        "built Qwen3-VL stand-in %r in %s: %d params, vocab %d, %.1fs",
        size,
        output_dir,
        params["total"],
        len(tokenizer),
        time.perf_counter() - t0,
    )
    return output_dir


def ensure_stand_in(
    family: str,
    cache_dir: str | Path,
    size: str = "tiny",
    seed: int = 0,
    corpus_fn: Callable[[], Iterable[str]] | None = None,
    corpus_key: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    **overrides: Any,
) -> Path:
    """The stand-in of ``family`` in ``cache_dir`` (built on first use, reused afterwards).

    ``qwen2_5_vl`` delegates to :func:`papo.models.tiny_vlm.ensure_tiny_vlm` (same cache). ``qwen3_vl`` is cached
    under ``qwen3_vl-<size>-<hash>`` (hash of builder version, spec, seed, pixel bounds, corpus) and built in a
    temporary sibling directory renamed into place (:func:`papo.utils.atomic_dir.build_dir_once`), so
    concurrent builders (DDP ranks) cannot clash.
    """
    if family == "qwen2_5_vl":
        from papo.models.tiny_vlm import ensure_tiny_vlm

        kwargs: dict[str, Any] = {"min_pixels": min_pixels, "max_pixels": max_pixels}
        return ensure_tiny_vlm(
            cache_dir, size=size, corpus_fn=corpus_fn, seed=seed, corpus_key=corpus_key, **kwargs, **overrides
        )
    if family != "qwen3_vl":
        raise ValueError(f"unknown model family {family!r} for a stand-in; valid: {list(FAMILIES)}")
    spec = _resolve_qwen3_spec(size, **overrides)
    lo = QWEN3_DEFAULT_MIN_PIXELS if min_pixels is None else int(min_pixels)
    hi = QWEN3_DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    corpus: list[str] | None = None
    if corpus_key is not None:
        corpus_id: str | None = f"key:{corpus_key}"
    elif corpus_fn is not None:
        corpus = list(corpus_fn())
        corpus_id = "sha256:" + hashlib.sha256("\x00".join(corpus).encode()).hexdigest()
    else:
        corpus_id = None
    key = json.dumps(
        {"v": QWEN3_BUILDER_VERSION, "spec": asdict(spec), "seed": seed, "px": [lo, hi], "corpus": corpus_id},
        sort_keys=True,
    )
    target = Path(cache_dir) / f"qwen3_vl-{size}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if is_complete(target):
        log.info("reusing cached Qwen3-VL stand-in %r at %s", size, target)
        return target
    if corpus is None and corpus_fn is not None:
        corpus = list(corpus_fn())
    build_dir_once(target, lambda tmp: build_tiny_qwen3_vl(tmp, size, corpus, seed, lo, hi, **overrides))
    return target
