"""Exact prompt token counts for a processor, without decoding any image: :class:`PromptLength`.

What the rollout feeds the model is the processor's chat template around the templated prompt, tokenised,
with each ``<|image_pad|>`` expanded to the image's token count. :class:`PromptLength` computes that count
from the image SIZE alone, by the image processor's own resize rule (``get_number_of_image_patches`` / merge
size, so Qwen2.5-VL's 28-px and Qwen3-VL's 32-px grids and the configured ``min_pixels`` / ``max_pixels``
are honoured). The setup scan (:func:`papo.data.scan.scan_split`) takes it as its ``prompt_length_fn`` to
drop over-long prompts, as verl/EasyR1's ``filter_overlong_prompts`` does; the released code counts with the
same rule but decodes every image first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from papo.models.loading import set_pixel_bounds
from papo.rollout.inputs import chat_texts

__all__ = ["PromptLength"]

_SENTINEL = "\x00PAPO_PROMPT\x00"


class PromptLength:
    """Exact prompt token counts for a processor: ``fn(prompts, image_sizes) -> [int]``.

    ``prompts`` are templated user prompts; ``image_sizes[i]`` lists ``(width, height)`` of prompt i's images.
    The chat text is the processor's template rendered once per image count with a sentinel in place of the
    prompt (so one template render serves every row), then tokenised in batches.
    """

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        ip = getattr(processor, "image_processor", None)
        self.image_processor = ip
        self.merge = int(getattr(ip, "merge_size", 1) or 1) if ip is not None else 1
        self._templates: dict[int, str] = {}

    @classmethod
    def from_pretrained(
        cls, path: str, min_pixels: int | None = None, max_pixels: int | None = None, **kwargs: Any
    ) -> PromptLength:
        """Load only the processor of ``path`` (hub id or directory) with the model's pixel bounds."""
        from transformers import AutoProcessor

        local = Path(str(path)).expanduser().is_dir()
        processor = AutoProcessor.from_pretrained(str(path), local_files_only=local, **kwargs)
        set_pixel_bounds(processor, min_pixels, max_pixels)
        return cls(processor)

    def _template(self, num_images: int) -> str:
        if num_images not in self._templates:
            text = chat_texts(self.processor, [_SENTINEL], [num_images])[0]
            if text.count(_SENTINEL) != 1:
                raise RuntimeError("the chat template does not copy the prompt text verbatim")
            self._templates[num_images] = text
        return self._templates[num_images]

    def image_tokens(self, width: int, height: int) -> int:
        """Tokens one image of this size becomes (after the processor's smart resize and patch merge)."""
        if self.image_processor is None:
            raise ValueError("this processor has no image processor but the prompt has images")
        patches = self.image_processor.get_number_of_image_patches(height, width, {})
        return int(patches) // (self.merge**2)

    def __call__(self, prompts: list[str], image_sizes: list[list[tuple[int, int]]]) -> list[int]:
        texts = [
            self._template(len(s)).replace(_SENTINEL, p) for p, s in zip(prompts, image_sizes, strict=True)
        ]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        # each image is one <|image_pad|> in the text; the processor expands it to image_tokens(...) tokens
        return [
            len(i) + sum(self.image_tokens(w, h) - 1 for w, h in sizes)
            for i, sizes in zip(ids, image_sizes, strict=True)
        ]
