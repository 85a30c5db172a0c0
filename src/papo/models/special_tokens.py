"""Qwen2.5-VL's added tokens and chat template, as the real release ships them.

The tiny embedded VLM (:mod:`papo.models.tiny_vlm`) reuses these exact strings, flags and order so that
everything downstream (chat template, image placeholders, generation stopping, suppression of special
tokens) behaves as with ``Qwen/Qwen2.5-VL-*-Instruct``. Only the *ids* differ: in the real tokenizer the
added tokens start at 151643 (after 151643 BPE tokens); in the tiny one they start right after its small
BPE vocabulary, in the same order. Look ids up through the tokenizer, never hard-code them.

Note ``<think>`` / ``</think>`` are NOT added tokens in Qwen2.5 (they are ordinary text, split by BPE).
"""

from __future__ import annotations

# Added tokens flagged ``special=True`` in Qwen2.5-VL's tokenizer.json, in id order (151643..151656).
QWEN2_5_VL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The rest of Qwen2.5's added tokens (151657..151664): added but ``special=False`` (so
# ``skip_special_tokens`` keeps them, as in the real tokenizer).
QWEN2_5_EXTRA_ADDED_TOKENS: tuple[str, ...] = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)

ALL_ADDED_TOKENS: tuple[str, ...] = QWEN2_5_VL_SPECIAL_TOKENS + QWEN2_5_EXTRA_ADDED_TOKENS

ENDOFTEXT = "<|endoftext|>"  # pad token (and bos id in config.json; no bos is prepended)
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # eos token of the Instruct models: ends an assistant turn
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VISION_PAD = "<|vision_pad|>"
IMAGE_PAD = "<|image_pad|>"  # one per merged 2x2 patch group after the processor expands it
VIDEO_PAD = "<|video_pad|>"

# ``additional_special_tokens`` (``extra_special_tokens`` in transformers 5) of the real tokenizer_config.
EXTRA_SPECIAL_TOKENS: tuple[str, ...] = QWEN2_5_VL_SPECIAL_TOKENS[1:]

# Qwen2.5-VL-*-Instruct chat_template.json, verbatim. It injects the default system prompt when the
# first message is not a system message and renders each image as
# <|vision_start|><|image_pad|><|vision_end|> (the processor later repeats <|image_pad|> once per
# image token).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

__all__ = [
    "ALL_ADDED_TOKENS",
    "ENDOFTEXT",
    "EXTRA_SPECIAL_TOKENS",
    "IMAGE_PAD",
    "IM_END",
    "IM_START",
    "QWEN2_5_EXTRA_ADDED_TOKENS",
    "QWEN2_5_VL_CHAT_TEMPLATE",
    "QWEN2_5_VL_SPECIAL_TOKENS",
    "VIDEO_PAD",
    "VISION_END",
    "VISION_PAD",
    "VISION_START",
]
