"""Load a vision-language policy + processor, and the token/module lookups the trainer needs.

``load_policy`` works the same for a hub id (``Qwen/Qwen2.5-VL-3B-Instruct``) and a local directory such
as the embedded tiny model (:mod:`papo.models.tiny_vlm`); a local directory is opened with
``local_files_only=True`` so it never touches the network.

Differences from what EasyR1/verl (the PAPO release) do:
- The processor is set to ``padding_side="left"`` (batched generation needs prompts right-aligned).
- End of a response: every end token of the model's generation config ends it (:func:`end_token_ids`; Qwen2.5-VL
  lists ``<|im_end|>`` and ``<|endoftext|>``), as vLLM's stop tokens and EasyR1's response mask do.
- Suppressed ids, kept to what is needed. Sampling (:func:`generation_suppress_token_ids`): the output rows
  beyond the tokenizer (:func:`padded_vocab_ids`: the real Qwen2.5-VL pads 151,665 ids to 151,936 rows, never
  trained) and the image placeholder ``<|image_pad|>`` (the released vLLM rollout gives it a -100 logit bias; a
  sampled placeholder would make the next forward expect an image that does not exist). Training log-probs: the
  padded rows only, so the policy is scored over the same vocabulary as the released FSDP actor (every
  tokenizer id, special tokens included). Every other special token (``<|im_start|>``, vision markers, ...) can
  be sampled, as in the release.
- The model's ``generation_config`` is left as shipped. The real Qwen2.5-VL release sets near-greedy
  defaults there (top_k=1, top_p=0.001, a low temperature, a repetition penalty), so rollouts must pass
  every sampling setting explicitly (do_sample, temperature, top_p, top_k=0, repetition_penalty=1.0).
- transformers 5: the processor also returns ``mm_token_type_ids`` (1 on image tokens) and the model
  builds M-RoPE positions from it. Pass it to every forward over prompt + response (zeros on response
  tokens); without it positions silently fall back to 1D and log-probs no longer match the rollout's.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from papo.models.special_tokens import IM_END, IMAGE_PAD
from papo.models.vision_tower import vision_tower

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """``"float32"|"bfloat16"|"float16"`` (or fp32/bf16/fp16, or a torch.dtype) -> torch.dtype; "auto" kept."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {sorted(_DTYPES)} or 'auto'") from None


def _tokenizer_of(processor_or_tokenizer):
    return getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)


def padded_vocab_ids(processor_or_tokenizer, vocab_size: int | None) -> list[int]:
    """Output rows the tokenizer has no token for: ``len(tokenizer) .. vocab_size - 1`` (empty without
    ``vocab_size``). The real Qwen2.5-VL pads 151,665 tokenizer ids to 151,936 rows; these rows were never
    trained, so they are suppressed in sampling AND in training log-probs."""
    if vocab_size is None:
        return []
    return list(range(len(_tokenizer_of(processor_or_tokenizer)), int(vocab_size)))


def image_placeholder_ids(processor_or_tokenizer) -> list[int]:
    """The id of the image placeholder the processor expands (``<|image_pad|>``), if the tokenizer has one."""
    tok = _tokenizer_of(processor_or_tokenizer)
    token = getattr(processor_or_tokenizer, "image_token", None) or IMAGE_PAD
    return [tok.convert_tokens_to_ids(token)] if token in tok.get_vocab() else []


def generation_suppress_token_ids(processor_or_tokenizer, vocab_size: int | None = None) -> list[int]:
    """Token ids sampling never emits: :func:`padded_vocab_ids` and :func:`image_placeholder_ids`.

    The released rollout (vLLM) samples over the full vocabulary except the image placeholder (logit bias -100);
    a sampled placeholder would break the next forward (one more image token than image features). Use as
    ``model.generate(..., suppress_tokens=ids)`` or the lean loop's ``suppress_ids``.
    """
    ids = set(image_placeholder_ids(processor_or_tokenizer)) | set(
        padded_vocab_ids(processor_or_tokenizer, vocab_size)
    )
    return sorted(i for i in ids if vocab_size is None or i < vocab_size)


def end_token_ids(generation_config: Any, processor_or_tokenizer) -> list[int]:
    """Every token that ends a response: the model's ``generation_config.eos_token_id`` (an int or a list; Qwen2.5-VL
    lists ``<|im_end|>`` then ``<|endoftext|>``), in its order, else the tokenizer's eos. The first is the one
    a finished row is reported with; all of them stop generation and close the response mask."""
    tok = _tokenizer_of(processor_or_tokenizer)
    eos = getattr(generation_config, "eos_token_id", None)
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if not ids:
        ids = [tok.convert_tokens_to_ids(IM_END) if IM_END in tok.get_vocab() else tok.eos_token_id]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def output_vocab_size(model: torch.nn.Module) -> int | None:
    """Rows of the model's output layer (logits width), which can exceed ``len(tokenizer)``: the real
    Qwen2.5-VL pads 151,665 tokenizer ids to 151,936 rows. Pass it to :func:`padded_vocab_ids` and
    :func:`generation_suppress_token_ids` so the padded ids are never sampled nor scored. From the output
    embeddings, else the (text) config; None if neither."""
    base = hf_model(model)
    emb = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    weight = getattr(emb, "weight", None)
    shape = getattr(weight, "ds_shape", None) or getattr(weight, "shape", None)  # ZeRO-3: full shape
    if shape is not None and len(shape) == 2 and shape[0] > 0:
        return int(shape[0])
    cfg = getattr(base, "config", None)
    size = getattr(getattr(cfg, "text_config", None), "vocab_size", None) or getattr(cfg, "vocab_size", None)
    return int(size) if size else None


def set_pixel_bounds(processor, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Set the image processor's resize bounds (pixels per image, smart-resized to multiples of 28).

    transformers 5 stores them as ``image_processor.size = {shortest_edge: min, longest_edge: max}``
    (older processors as ``min_pixels``/``max_pixels`` attributes; both are updated when present).
    """
    if min_pixels is None and max_pixels is None:
        return
    ip = processor.image_processor
    size = dict(ip.size.items() if hasattr(ip.size, "items") else vars(ip.size))
    size = {k: v for k, v in size.items() if v is not None}
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    if size.get("shortest_edge", 0) > size.get("longest_edge", float("inf")):
        raise ValueError(f"min_pixels {size['shortest_edge']} > max_pixels {size['longest_edge']}")
    new = type(ip.size)(**size) if not isinstance(ip.size, dict) else size
    ip.size = new
    for attr, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and hasattr(ip, attr):
            setattr(ip, attr, int(value))


def resolve_policy_path(
    path: str | Path | None,
    cache_dir: str | Path,
    size: str = "tiny",
    seed: int = 0,
    corpus_fn: Callable[[], Iterable[str]] | None = None,
    corpus_key: str | None = None,
) -> str | Path:
    """``path`` if given (hub id or directory), else the embedded model built/reused in ``cache_dir``.

    Mirrors ``configs/model/*.yaml``: ``path: null`` means :func:`papo.models.tiny_vlm.ensure_tiny_vlm`
    with ``size`` and ``seed`` (pixel bounds are applied later by :func:`load_policy`, so changing them
    never triggers a rebuild).
    """
    if path is not None:
        return path
    from papo.models.tiny_vlm import ensure_tiny_vlm

    return ensure_tiny_vlm(cache_dir, size=size, corpus_fn=corpus_fn, seed=seed, corpus_key=corpus_key)


def load_policy(
    path: str | Path,
    dtype: str = "float32",
    attn_implementation: str | None = "sdpa",
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
    freeze_vision_tower: bool = False,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    lora: Mapping[str, Any] | None = None,
):
    """Load ``(model, processor)`` from a hub id or a local directory.

    Args:
        path: hub id (downloaded/cached by ``from_pretrained``) or a local directory (opened offline).
        dtype: parameter dtype, "float32" | "bfloat16" | "float16" | "auto". PAPO trains in bf16 on GPU;
            CPU runs use float32.
        attn_implementation: "sdpa" | "eager" | "flash_attention_2" | None (transformers' default).
        trust_remote_code: forwarded to ``from_pretrained`` (not needed for Qwen2.5-VL).
        gradient_checkpointing: enable non-reentrant activation checkpointing (and ``use_cache=False``).
        freeze_vision_tower: ``requires_grad=False`` on the ViT + merger (PAPO trains it: default False).
        min_pixels / max_pixels: override the image processor's resize bounds (None: keep the saved ones).
        lora: ``{rank, alpha, dropout, target_modules, vision}`` (``configs/model/*.yaml`` ``lora``); rank > 0
            wraps the model in a PEFT LoRA model (:func:`apply_lora`), rank 0 / None is a full fine-tune.

    Returns the model in eval mode (the caller switches to train) and the processor with left padding.

    Raises:
        papo.data.hub.HubOfflineError: a hub id that is not cached while the hub is offline (the default unless
            PAPO_ALLOW_HUB=1); the message says how to allow it or use a local copy.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    local = Path(path).expanduser().is_dir()
    path_str = str(Path(path).expanduser()) if local else str(path)
    common = {"trust_remote_code": trust_remote_code, "local_files_only": local}
    kwargs = {"dtype": resolve_dtype(dtype), **common}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    log.info(
        "loading policy %s (%s, dtype=%s, attn=%s)",
        path_str,
        "local" if local else "hub",
        dtype,
        attn_implementation,
    )
    try:
        model = AutoModelForImageTextToText.from_pretrained(path_str, **kwargs)
        processor = AutoProcessor.from_pretrained(path_str, padding_side="left", **common)
    except OSError as exc:  # not cached while the hub is off: say how to turn it on
        from papo.data.hub import hub_offline_error

        err = None if local else hub_offline_error(exc, f"model {path_str!r}")
        if err is None:
            raise
        raise err from exc
    processor.tokenizer.padding_side = "left"
    set_pixel_bounds(processor, min_pixels, max_pixels)

    tok = processor.tokenizer
    gen = model.generation_config
    if gen.pad_token_id is None and tok.pad_token_id is not None:
        gen.pad_token_id = tok.pad_token_id
    if gen.eos_token_id is None and tok.eos_token_id is not None:
        gen.eos_token_id = tok.eos_token_id

    if gradient_checkpointing:
        # transformers 5 renamed it activation_checkpointing_enable (the old name warns, goes in v6).
        ckpt_kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        model.config.use_cache = False
        if hasattr(model.config, "text_config"):
            model.config.text_config.use_cache = False
    if freeze_vision_tower:
        n = 0
        for p in vision_tower(model).parameters():
            p.requires_grad_(False)
            n += p.numel()
        log.info("froze the vision tower (%d parameters)", n)
    if lora and int(lora.get("rank") or 0) > 0:
        model = apply_lora(model, **{k: v for k, v in lora.items() if k != "enabled"})
    model.eval()
    return model, processor


#: linear layers of the Qwen2/2.5/3-VL decoders (attention + MLP), the usual LoRA targets
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class WeightsMismatch(ValueError):
    """A checkpoint's policy weights do not fit the model they are loaded into (another size or architecture)."""


def load_weights_into(policy: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Load a checkpoint's policy weights (``policy.`` prefix removed) into ``policy``: every weight must fit,
    a tied LM head may be absent. :class:`WeightsMismatch` names the first size mismatch, or the missing and
    unexpected names (the first five of each)."""
    try:
        missing, unexpected = policy.load_state_dict(dict(weights), strict=False)
    except RuntimeError as err:  # shape mismatches
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise WeightsMismatch(first[:300]) from None
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied embeddings
    if missing or unexpected:
        raise WeightsMismatch(f"missing {missing[:5]}, unexpected {unexpected[:5]}")


def hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model itself: ``model``, or the model a peft wrapper (LoRA) holds."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def forward_accepts(model: torch.nn.Module, name: str) -> bool:
    """Whether the HF model's ``forward`` (under any peft wrapper) has a parameter ``name`` (cached per class)."""
    return _forward_accepts(type(hf_model(model)), name)


@functools.cache
def _forward_accepts(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.forward).parameters


def is_lora(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a PEFT model with adapters (so ``disable_adapter()`` yields the base model)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def apply_lora(
    model: torch.nn.Module,
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: Iterable[str] | str | None = None,
    vision: bool = False,
) -> torch.nn.Module:
    """Wrap ``model`` in a PEFT LoRA model: only the adapters train; the base weights stay frozen.

    Args:
        rank: LoRA rank r (> 0).
        alpha: scaling numerator (the update is ``alpha / r * B A``); None -> ``2 * rank``.
        dropout: dropout on the adapter input.
        target_modules: module-name suffixes to adapt (default :data:`DEFAULT_LORA_TARGETS`), or a regex
            string used as is (PEFT full-matches it against module names).
        vision: also adapt matching layers of the vision tower (default: the language model only; the
            Qwen2.5-VL ViT has ``gate_proj``/``up_proj``/``down_proj`` MLPs too, which a plain name list would hit).

    The frozen base model doubles as the reference policy: ``with model.disable_adapter(): ...`` runs it
    without adapters (:class:`papo.models.papo_module.PapoModule` does that instead of loading a second copy).
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:  # pragma: no cover - peft is an extra
        raise ImportError(
            "model.lora.rank > 0 needs peft: pip install 'papo[peft]' (or pip install peft)"
        ) from e
    if int(rank) <= 0:
        raise ValueError(f"LoRA rank must be > 0, got {rank}")
    if isinstance(target_modules, str):
        targets: Any = target_modules
    else:
        names = list(target_modules or DEFAULT_LORA_TARGETS)
        bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9_.]+", str(n))]
        if bad:
            raise ValueError(
                f"LoRA target_modules must be module names, got {bad} (or pass one regex string)"
            )
        alternatives = "|".join(re.escape(str(n)) for n in names)
        vision_guard = "" if vision else r"(?!.*\b(visual|vision_tower|vision_model)\b)"
        targets = rf"^{vision_guard}.*\.({alternatives})$"
    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha) if alpha is not None else 2.0 * int(rank),
        lora_dropout=float(dropout),
        target_modules=targets,
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    if trainable == 0:
        raise ValueError(f"LoRA target_modules {target_modules!r} matched no layer of {type(model).__name__}")
    log.info("LoRA rank %d on %s: %d trainable of %d parameters", rank, targets, trainable, total)
    return peft_model


__all__ = [
    "DEFAULT_LORA_TARGETS",
    "WeightsMismatch",
    "apply_lora",
    "end_token_ids",
    "generation_suppress_token_ids",
    "image_placeholder_ids",
    "is_lora",
    "load_policy",
    "load_weights_into",
    "output_vocab_size",
    "padded_vocab_ids",
    "resolve_dtype",
    "resolve_policy_path",
    "set_pixel_bounds",
    "vision_tower",
]
