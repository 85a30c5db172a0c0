"""The rollout batch ("experience") that the update consumes: one row per sampled response.

Rows are grouped G per prompt (``group_ids``). Visual inputs are kept per row (a prompt's patch rows
are shared by reference by its G responses, not copied) so rows can be filtered (DAPO dynamic
sampling), concatenated across rollout batches and split into mini/micro-batches freely.

Rewards: ``rewards`` (the combined score the advantages use), ``accuracy``, ``format`` and, in
``reward_terms``, each named reward component's score (:mod:`papo.rewards.components`), built from a
scored batch by :func:`reward_columns`; :func:`reward_term_means` gives the logged means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from papo.rollout.inputs import collate_visual


def _pad_to(x: Tensor, width: int, value: float, left: bool) -> Tensor:
    pad = width - x.shape[1]
    if pad <= 0:
        return x
    filler = x.new_full((x.shape[0], pad), value)
    return torch.cat([filler, x] if left else [x, filler], dim=1)


@dataclass
class Experience:
    """Per-row tensors (N rows). Optional tensors are None until computed."""

    prompt_ids: Tensor  # (N, P) left-padded
    prompt_mask: Tensor  # (N, P)
    response_ids: Tensor  # (N, T) right-padded
    response_mask: Tensor  # (N, T) float, 1 on response tokens (EOS included)
    group_ids: Tensor  # (N,) long, equal for the G responses of one prompt
    rewards: Tensor  # (N,) float, the scalar reward used for advantages
    accuracy: Tensor  # (N,) float
    format: Tensor  # (N,) float
    visual: list[dict[str, Tensor] | None]  # per row: pixel_values, image_grid_thw
    visual_masked: list[dict[str, Tensor] | None] | None = None  # per row, masked view
    extra: dict[str, Tensor] = field(default_factory=dict)  # per-row prompt tensors (N, P)
    advantages: Tensor | None = None  # (N,)
    old_logps: Tensor | None = None  # (N, T)
    ref_logps: Tensor | None = None  # (N, T)
    logps_masked: Tensor | None = None  # (N, T) detached masked-branch log-probs
    sensitivity: Tensor | None = None  # (N, T) per-token visual sensitivity (papo.blocks), no grad
    task_type: list[str] = field(default_factory=list)
    vision_dependency: list[str] = field(default_factory=list)
    # per-row label a dataset may declare (papo.data.shortcut: consistent | breaking); None when it has none
    shortcut: list[str] | None = None
    texts: list[str] = field(default_factory=list)
    # (N,) float each: every named reward component's score, e.g. "math", "math/format", "brevity"
    reward_terms: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def num_tokens(self) -> float:
        return float(self.response_mask.sum())

    def select(self, idx: Tensor | list[int]) -> Experience:
        """Rows ``idx`` (a list or 1-D long/bool tensor)."""
        if isinstance(idx, Tensor) and idx.dtype == torch.bool:
            idx = idx.nonzero(as_tuple=True)[0]
        idx_list = idx.tolist() if isinstance(idx, Tensor) else list(idx)
        it = torch.as_tensor(idx_list, dtype=torch.long)
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                out[f.name] = v[it]
            elif isinstance(v, list):
                out[f.name] = [v[i] for i in idx_list]
            elif isinstance(v, dict):
                out[f.name] = {k: t[it] for k, t in v.items()}
            else:
                out[f.name] = v
        return Experience(**out)

    @staticmethod
    def cat(items: list[Experience]) -> Experience:
        """Concatenate rows of several batches; prompts re-left-padded, responses re-right-padded."""
        if len(items) == 1:
            return items[0]
        P = max(e.prompt_ids.shape[1] for e in items)
        T = max(e.response_ids.shape[1] for e in items)
        pad_id = 0
        out: dict = {}
        out["prompt_ids"] = torch.cat([_pad_to(e.prompt_ids, P, pad_id, True) for e in items])
        out["prompt_mask"] = torch.cat([_pad_to(e.prompt_mask, P, 0, True) for e in items])
        out["response_ids"] = torch.cat([_pad_to(e.response_ids, T, pad_id, False) for e in items])
        out["response_mask"] = torch.cat([_pad_to(e.response_mask, T, 0, False) for e in items])
        for name in ("old_logps", "ref_logps", "logps_masked", "sensitivity"):
            vals = [getattr(e, name) for e in items]
            out[name] = (
                None if any(v is None for v in vals) else torch.cat([_pad_to(v, T, 0, False) for v in vals])
            )
        for name in ("group_ids", "rewards", "accuracy", "format"):
            out[name] = torch.cat([getattr(e, name) for e in items])
        adv = [e.advantages for e in items]
        out["advantages"] = None if any(a is None for a in adv) else torch.cat(adv)
        out["visual"] = [v for e in items for v in e.visual]
        vm = [e.visual_masked for e in items]
        out["visual_masked"] = None if any(v is None for v in vm) else [v for x in vm for v in x]
        keys = set(items[0].extra)
        out["extra"] = {k: torch.cat([_pad_to(e.extra[k], P, 0, True) for e in items]) for k in keys}
        for name in ("task_type", "vision_dependency", "texts"):
            out[name] = [x for e in items for x in getattr(e, name)]
        labels = [e.shortcut for e in items]
        out["shortcut"] = None if any(v is None for v in labels) else [x for v in labels for x in v]
        terms = set.intersection(*(set(e.reward_terms) for e in items))  # a buffer from an older checkpoint
        out["reward_terms"] = {k: torch.cat([e.reward_terms[k] for e in items]) for k in sorted(terms)}
        return Experience(**out)

    def model_inputs(self, masked: bool = False) -> dict:
        """Arguments of :func:`papo.models.logprobs.response_logps` for these rows."""
        visual = self.visual_masked if masked else self.visual
        if masked and visual is None:
            raise ValueError("masked view requested but this experience has no masked images")
        return {
            "prompt_ids": self.prompt_ids,
            "prompt_mask": self.prompt_mask,
            "response_ids": self.response_ids,
            "response_mask": self.response_mask,
            "visual": collate_visual(visual),
            "extra": self.extra,
        }


_MAIN_SCORES = {"overall": "rewards", "accuracy": "accuracy", "format": "format"}


def reward_columns(scores: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """The reward fields of an :class:`Experience` from :func:`papo.rewards.score_batch`'s per-key lists:
    ``rewards`` (``overall``), ``accuracy``, ``format`` and ``reward_terms`` (every other key)."""
    out: dict[str, Any] = {
        name: torch.tensor(scores[key], dtype=torch.float32) for key, name in _MAIN_SCORES.items()
    }
    out["reward_terms"] = {
        key: torch.tensor(values, dtype=torch.float32)
        for key, values in scores.items()
        if key not in _MAIN_SCORES
    }
    return out


def reward_term_means(exp: Any, prefix: str) -> dict[str, float]:
    """``{f"{prefix}/{name}": mean score}`` of every named reward component of ``exp`` (e.g.
    ``train/reward/math``); empty for rows without ``reward_terms``."""
    terms = getattr(exp, "reward_terms", None) or {}
    return {f"{prefix}/{name}": float(values.mean()) for name, values in terms.items()}
