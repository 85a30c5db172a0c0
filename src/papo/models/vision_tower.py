"""Find the vision encoder inside a vision-language model, whatever its attribute layout.

Used by model loading (freezing the tower) and the tiny-model builder (counting its parameters); kept on
its own so that neither has to import the other for it.
"""

from __future__ import annotations

import torch

__all__ = ["vision_tower"]


def vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The vision encoder (ViT + merger) of a Qwen2/2.5-VL-like model, whatever the attribute layout.

    transformers 5 keeps it at ``model.model.visual`` (with a ``model.visual`` property on some classes);
    4.4x kept it at ``model.visual``; other VLMs use ``vision_tower`` / ``vision_model``; PEFT wraps the
    model in ``base_model.model``.
    """
    seen: set[int] = set()
    queue: list[torch.nn.Module] = [model]
    while queue:  # breadth-first over the usual wrappers: model.model, base_model.model
        m = queue.pop(0)
        if id(m) in seen:
            continue
        seen.add(id(m))
        for name in ("visual", "vision_tower", "vision_model"):
            sub = getattr(m, name, None)
            if isinstance(sub, torch.nn.Module):
                return sub
        for name in ("model", "base_model"):
            sub = getattr(m, name, None)
            if isinstance(sub, torch.nn.Module):
                queue.append(sub)
    raise AttributeError(f"no vision tower found on {type(model).__name__} (looked for visual/vision_tower)")
