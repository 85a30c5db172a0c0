"""From a data batch to an :class:`~papo.rollout.experience.Experience`: encode prompts, sample G
responses per prompt, decode, score. Used for training rollouts and for validation generation."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

from papo.models.loading import end_token_ids, generation_suppress_token_ids, output_vocab_size
from papo.rewards import row_fields, score_batch
from papo.rollout.experience import Experience, reward_columns
from papo.rollout.hf_generate import DECODERS, GenerationConfig, hf_generate
from papo.rollout.inputs import chat_texts, encode_images, encode_prompts, per_prompt_visual
from papo.rollout.lean_decode import lean_generate
from papo.rollout.static_decode import static_generate

log = logging.getLogger(__name__)
_told: set[str] = set()


def choose_decoder(decoder: str, device: torch.device, synced_gpus: bool) -> Callable[..., Any]:
    """The decode function of ``rollout.decoder`` (:data:`papo.rollout.hf_generate.DECODERS`) on ``device``.

    Sharded multi-rank weights (``synced_gpus``) always use HF ``generate``; ``auto`` is the static-cache loop
    with CUDA graphs on a CUDA device and the lean loop elsewhere (on CPU the lean loop is the faster one:
    docs/gpu_performance.md); ``static_compiled`` is the static-cache loop with its step compiled by
    ``torch.compile``. Functions are looked up when called, so wrappers (scripts/bench.py) see them.
    """
    if decoder == "generate" or synced_gpus:
        return hf_generate
    if decoder == "auto":
        decoder = "static" if device.type == "cuda" else "lean"
        if decoder == "lean" and "auto" not in _told:
            _told.add("auto")
            log.info("rollout.decoder=auto on %s: the lean decode loop (CUDA graphs need a GPU)", device.type)
    if decoder == "static_compiled":
        return functools.partial(static_generate, compile_step=True)
    return static_generate if decoder == "static" else lean_generate


class Generator:
    """Holds the processor-level constants needed to sample from a policy."""

    def __init__(
        self,
        processor: Any,
        suppress_ids: list[int],
        max_prompt_length: int,
        batch_size: int,
        decoder: str = "auto",
        eos_ids: list[int] | None = None,
    ) -> None:
        tok = processor.tokenizer
        self.processor = processor
        # every token that ends a response (the model's generation config: papo.models.loading.end_token_ids);
        # None: the tokenizer's <|im_end|> (or its eos) alone
        self.eos_ids = list(eos_ids) if eos_ids else end_token_ids(None, tok)
        self.eos_id = self.eos_ids[0]  # the end token an empty generation is reported with
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_id
        self.suppress_ids = suppress_ids
        self.max_prompt_length = max_prompt_length
        self.batch_size = batch_size
        if decoder not in DECODERS:
            raise ValueError(f"rollout.decoder={decoder!r} is unknown; valid: {list(DECODERS)}")
        # rollout.decoder (choose_decoder); sharded models always use generate
        self.decoder = decoder
        # optional generation engine (papo.rollout.vllm_backend.VLLMEngine); None = HF generate on the policy
        self.engine: Any = None

    @classmethod
    def for_policy(
        cls, policy: Any, processor: Any, max_prompt_length: int, batch_size: int, decoder: str = "auto"
    ) -> Generator:
        """The generator of ``policy``: never samples the image placeholder nor the padded output rows beyond
        the tokenizer; a response ends at every end token of the policy's generation config."""
        return cls(
            processor,
            generation_suppress_token_ids(processor, vocab_size=output_vocab_size(policy)),
            max_prompt_length,
            batch_size,
            decoder,
            eos_ids=end_token_ids(policy.generation_config, processor),
        )

    def encode(self, batch: dict[str, Any], masked: bool) -> tuple[dict, list, list | None]:
        """Tokenise prompts of a data batch. Returns (text inputs (B, P), per-prompt visual, masked visual)."""
        num_images = [len(x) for x in batch["images"]]
        texts = chat_texts(self.processor, batch["prompt"], num_images, batch.get("system_prompt"))
        enc = encode_prompts(self.processor, texts, batch["images"])
        visual = {k: enc.pop(k) for k in ("pixel_values", "image_grid_thw") if k in enc}
        per_visual = per_prompt_visual(visual, num_images)
        per_masked = None
        if masked and batch.get("images_masked") is not None:
            per_masked = per_prompt_visual(encode_images(self.processor, batch["images_masked"]), num_images)
        return enc, per_visual, per_masked

    def masked_per_row(self, batch: dict[str, Any], per_masked: list, rows: list[int], group: int) -> list:
        """The masked view of each response row: its prompt's one view, or with ``batch["images_masked_rows"]``
        (``masking.per_response``) view g of the prompt for its g-th response."""
        views = batch.get("images_masked_rows")
        if not views:
            return [per_masked[i] for i in rows]
        if any(len(v) != group for v in views):
            raise ValueError(
                f"one masked view per response needs {group} views per prompt (the group size), got "
                f"{sorted({len(v) for v in views})}: data.masked_views_per_prompt must equal algo.group_size"
            )
        num_images = [len(x) for x in batch["images"]]
        by_view = [per_masked]  # view 0 is batch["images_masked"], encoded already
        for g in range(1, group):
            by_view.append(
                per_prompt_visual(encode_images(self.processor, [v[g] for v in views]), num_images)
            )
        return [by_view[r % group][i] for r, i in enumerate(rows)]

    @torch.no_grad()
    def rollout(
        self,
        model: torch.nn.Module,
        batch: dict[str, Any],
        cfg: GenerationConfig,
        reward_fn: Any,
        *,
        use_masked_images: bool = False,
        keep_masked_view: bool = False,
        group_offset: int = 0,
        on_error: str = "raise",
        device: torch.device | None = None,
    ) -> tuple[Experience, int]:
        """Sample ``cfg.num_samples`` responses per prompt and score them.

        ``use_masked_images``: generate from the masked view (validation's vision-reliance probe).
        ``keep_masked_view``: also keep the masked view's visual tensors in the experience (PAPO).
        Returns the experience and the number of reward-function errors (counted, when on_error="zero").
        """
        enc, per_visual, per_masked = self.encode(batch, masked=use_masked_images or keep_masked_view)
        gen_visual = per_masked if use_masked_images else per_visual
        if use_masked_images and per_masked is None:
            raise ValueError("validation on masked images requested but the batch has no masked view")
        B, G = enc["input_ids"].shape[0], cfg.num_samples
        rows = torch.arange(B).repeat_interleave(G)  # (B*G,) prompt index of each row
        text_inputs = {k: v[rows] for k, v in enc.items()}  # (N, P)
        row_visual = [gen_visual[i] for i in rows.tolist()]
        row_masked = (
            self.masked_per_row(batch, per_masked, rows.tolist(), G)
            if keep_masked_view and per_masked
            else None
        )
        responses, masks = [], []
        if self.engine is not None:  # rollout=vllm: the colocated engine samples (papo.rollout.vllm_backend)
            images = batch["images_masked"] if use_masked_images else batch["images"]
            texts_in = chat_texts(
                self.processor, batch["prompt"], [len(x) for x in images], batch.get("system_prompt")
            )
            ids, m = self.engine.generate(texts_in, images, cfg, self.eos_ids, self.pad_id, self.suppress_ids)
            responses, masks = [ids], [m]
        # chunks of whole groups: pass each prompt once and let generate sample G rows from it (its images are
        # encoded once, not G times); otherwise (greedy, or chunks that split a group) one row per sequence
        per_prompt = G > 1 and cfg.temperature > 0 and self.batch_size % G == 0
        decode_device = device if device is not None else next(model.parameters()).device
        decode = choose_decoder(self.decoder, torch.device(decode_device), cfg.synced_gpus)
        for s in range(0, len(rows) if self.engine is None else 0, self.batch_size):  # chunks (memory knob)
            sl = slice(s, s + self.batch_size)
            if per_prompt:
                psl = slice(s // G, (s + self.batch_size) // G)
                chunk = {k: v[psl] for k, v in enc.items()}
                vis = [v for v in gen_visual[psl] if v is not None]
            else:
                chunk = {k: v[sl] for k, v in text_inputs.items()}
                vis = [v for v in row_visual[sl] if v is not None]
            if vis:
                chunk["pixel_values"] = torch.cat([v["pixel_values"] for v in vis])
                chunk["image_grid_thw"] = torch.cat([v["image_grid_thw"] for v in vis])
            if device is not None:
                chunk = {k: v.to(device) for k, v in chunk.items()}
            ids, m = decode(
                model, chunk, cfg, self.eos_ids, self.pad_id, self.suppress_ids, G if per_prompt else 1
            )
            responses.append(ids.cpu())
            masks.append(m.cpu())
        T = max(r.shape[1] for r in responses)
        response_ids = torch.cat(
            [torch.nn.functional.pad(r, (0, T - r.shape[1]), value=self.pad_id) for r in responses]
        )
        response_mask = torch.cat([torch.nn.functional.pad(m, (0, T - m.shape[1]), value=0.0) for m in masks])
        texts = self.processor.tokenizer.batch_decode(response_ids, skip_special_tokens=True)
        answers = [batch["answer"][i] for i in rows.tolist()]
        # question, uid, ..., images: what reward functions may take (papo.rewards.components)
        fields = row_fields(batch, rows.tolist())
        scores, n_errors = score_batch(texts, answers, reward_fn, on_error=on_error, fields=fields)
        extra = {k: v for k, v in text_inputs.items() if k not in ("input_ids", "attention_mask")}
        exp = Experience(
            prompt_ids=text_inputs["input_ids"],
            prompt_mask=text_inputs["attention_mask"],
            response_ids=response_ids,
            response_mask=response_mask,
            group_ids=rows + group_offset,
            **reward_columns(scores),  # rewards (overall), accuracy, format, reward_terms (named components)
            visual=row_visual,
            visual_masked=row_masked,
            extra=extra,
            task_type=[batch["task_type"][i] for i in rows.tolist()],
            vision_dependency=[batch["vision_dependency"][i] for i in rows.tolist()],
            shortcut=[batch["shortcut"][i] for i in rows.tolist()] if batch.get("shortcut") else None,
            texts=texts,
        )
        return exp, n_errors
