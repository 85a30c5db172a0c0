"""Turn a data batch (prompts + PIL images) into model inputs with the processor's chat template.

Prompts are LEFT-padded (generation appends on the right). Visual inputs of Qwen-VL processors are
flattened patch rows (``pixel_values`` (sum_i patches_i, D)) plus a per-image ``image_grid_thw``; to
repeat a prompt G times we slice each image's patch rows by its grid, never by a fixed stride.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL.Image import Image
from torch import Tensor

from papo.data.prompts import chat_messages


def build_messages(prompt: str, num_images: int, system_prompt: str | None = None) -> list[dict[str, Any]]:
    """One prompt's chat messages (:func:`papo.data.prompts.chat_messages`): an optional system turn, then
    the user turn with each image at its ``<image>`` placeholder, or all images first when there is none."""
    return chat_messages(prompt, num_images, system_prompt)


def chat_texts(
    processor: Any,
    prompts: list[str],
    num_images: list[int],
    system_prompts: list[str | None] | str | None = None,
) -> list[str]:
    """Apply the processor's chat template (with the generation prompt) to each prompt.

    ``system_prompts``: one per prompt (a batch's ``system_prompt`` list), one for all, or None (no system turn).
    """
    if system_prompts is None or isinstance(system_prompts, str):
        system_prompts = [system_prompts] * len(prompts)
    return [
        processor.apply_chat_template(build_messages(p, k, s), tokenize=False, add_generation_prompt=True)
        for p, k, s in zip(prompts, num_images, system_prompts, strict=True)
    ]


def encode_prompts(processor: Any, texts: list[str], images: list[list[Image]]) -> dict[str, Tensor]:
    """Tokenise texts with their images: input_ids/attention_mask (B, P) left-padded + visual tensors."""
    flat = [img for imgs in images for img in imgs]
    kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
    if flat:
        kwargs["images"] = flat
    processor.tokenizer.padding_side = "left"
    enc = processor(**kwargs)
    return {k: v for k, v in enc.items() if isinstance(v, Tensor)}


def encode_images(processor: Any, images: list[list[Image]]) -> dict[str, Tensor]:
    """Visual tensors only (pixel_values, image_grid_thw) for a view of the same images (e.g. masked)."""
    flat = [img for imgs in images for img in imgs]
    out = processor.image_processor(images=flat, return_tensors="pt")
    return {k: v for k, v in out.items() if isinstance(v, Tensor)}


def split_visual_per_image(pixel_values: Tensor, grid_thw: Tensor) -> list[Tensor]:
    """Split flattened patch rows into one tensor per image, using each image's t*h*w patch count."""
    counts = grid_thw.prod(dim=-1).tolist()  # patches per image
    return list(torch.split(pixel_values, counts, dim=0))


def per_prompt_visual(
    visual: dict[str, Tensor], num_images: list[int]
) -> list[dict[str, Tensor]] | list[None]:
    """Group visual tensors by prompt: [{pixel_values (p_i, D), image_grid_thw (k_i, 3)}, ...]."""
    if "pixel_values" not in visual:
        return [None] * len(num_images)
    chunks = split_visual_per_image(visual["pixel_values"], visual["image_grid_thw"])
    out, i = [], 0
    for k in num_images:
        out.append(
            {
                "pixel_values": torch.cat(chunks[i : i + k], 0) if k else visual["pixel_values"][:0],
                "image_grid_thw": visual["image_grid_thw"][i : i + k],
            }
        )
        i += k
    return out


def collate_visual(items: list[dict[str, Tensor] | None]) -> dict[str, Tensor]:
    """Per-row visual dicts -> one batch for the log-prob passes, each distinct image once.

    The G rows of a group share one visual dict object (the rollout repeats a reference, not a copy), so
    rows are matched by identity: ``pixel_values`` / ``image_grid_thw`` hold the distinct rows' images
    (in first-seen order) and ``image_index`` (one entry per image of every row, in row order) says which
    distinct image each row image is. :func:`papo.models.logprobs.visual_model_kwargs` encodes each
    distinct image once and gives every row its features.
    """
    items = [x for x in items if x is not None]
    if not items:
        return {}
    first: dict[int, int] = {}  # id(row dict) -> position of its first image among the distinct ones
    distinct: list[dict[str, Tensor]] = []
    index: list[int] = []
    n_images = 0
    for x in items:
        k = int(x["image_grid_thw"].shape[0])
        if id(x) not in first:
            first[id(x)] = n_images
            distinct.append(x)
            n_images += k
        index.extend(range(first[id(x)], first[id(x)] + k))
    return {
        "pixel_values": torch.cat([x["pixel_values"] for x in distinct], 0),
        "image_grid_thw": torch.cat([x["image_grid_thw"] for x in distinct], 0),
        "image_index": torch.tensor(index, dtype=torch.long),
    }
