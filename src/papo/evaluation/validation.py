"""Training-time validation kept out of the LightningModule.

* :class:`ValidationRun`: one validation run over the val loader: the main protocol (``rollout.val_*``: greedy
  unless ``val_temperature`` > 0) and, with ``rollout.val_sampled_k``, the published avg@k protocol, each with
  the real and (when the batch has one) the masked image; the held-out perception KL (``val/kl_prcp``, two
  extra no-grad forwards per val batch) on the main protocol's real-image responses; the ``val/*`` metrics.
* :class:`PromptBudget`: the held-out KL on the first ``rollout.val_kl_max_prompts`` prompts of each validation
  run only, the same prompts every time.
* :class:`ValidationOutput`: what ``PapoModule.validation_step`` returns for each batch, read by callbacks in
  ``on_validation_batch_end`` (the sample table takes its samples from it).

The generation and the KL forward are passed in as functions, so the protocol runs on plain tensors in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from papo.config import RolloutConfig
from papo.evaluation.metrics import ValidationMetrics
from papo.evaluation.perception import attach_masked_view
from papo.rollout.experience import Experience
from papo.rollout.hf_generate import GenerationConfig

__all__ = ["PromptBudget", "ValidationOutput", "ValidationRun"]

#: ``(generation config, masked view?) -> the batch's scored generations``
Generate = Callable[[GenerationConfig, bool], Experience]
#: ``rows with their masked view attached -> (per-row KL sum, per-row token count)``
HeldoutKL = Callable[[Experience], tuple[Tensor, Tensor]]


@dataclass
class ValidationOutput:
    """One val batch under the main protocol: ``real`` / ``masked`` generations (``masked`` None without a
    masked view), and the token-mean held-out KL of the batch (None when not computed)."""

    real: Experience
    masked: Experience | None = None
    kl_prcp: float | None = None


class PromptBudget:
    """The rows of each val batch that fall in the first ``max_prompts`` prompts of a validation run (None:
    all of them); the count restarts at batch 0."""

    def __init__(self, max_prompts: int | None) -> None:
        self.max_prompts = max_prompts
        self.seen = 0

    def take(self, batch_idx: int, num_prompts: int, exp: Experience) -> Experience | None:
        """The rows of ``exp`` (a batch of ``num_prompts`` prompts, group id = prompt index) within the budget,
        or None when the budget is spent."""
        if batch_idx == 0:
            self.seen = 0
        limit, seen = self.max_prompts, self.seen
        if limit is not None and seen >= limit:
            return None
        if limit is not None and seen + num_prompts > limit:  # rows of the first `limit` prompts only
            exp = exp.select([i for i, g in enumerate(exp.group_ids.tolist()) if g < limit - seen])
        self.seen = seen + num_prompts
        return exp


class ValidationRun:
    """The protocols and metrics of training-time validation (see the module docstring)."""

    def __init__(self, rollout: RolloutConfig) -> None:
        r = rollout
        self.main = GenerationConfig(r.max_new_tokens, r.val_temperature, r.top_p, r.top_k, r.val_samples)
        # the published protocol: avg@k at temperature T, no nucleus / top-k (val/sampled/*)
        self.sampled = (
            GenerationConfig(r.max_new_tokens, r.val_sampled_temperature, 1.0, 0, r.val_sampled_k)
            if r.val_sampled_k > 0
            else None
        )
        self.kl_prcp = r.val_kl_prcp
        self.kl_prompts = PromptBudget(r.val_kl_max_prompts)
        self.metrics = ValidationMetrics()
        self.metrics_sampled = ValidationMetrics()

    def reset(self) -> None:
        self.metrics.reset()
        self.metrics_sampled.reset()

    def step(
        self,
        batch: dict[str, Any],
        batch_idx: int,
        generate: Generate,
        heldout_kl: HeldoutKL,
        processor: Any,
    ) -> ValidationOutput:
        """Generate, score and count one val batch under every protocol; returns the main protocol's output."""
        views = [False, True] if batch.get("images_masked") is not None else [False]
        out = ValidationOutput(real=generate(self.main, False))
        self.metrics.update(out.real, masked=False)
        out.kl_prcp = self._heldout_kl(batch, batch_idx, out.real, heldout_kl, processor)
        if True in views:
            out.masked = generate(self.main, True)
            self.metrics.update(out.masked, masked=True)
        if self.sampled is not None:
            for masked in views:
                self.metrics_sampled.update(generate(self.sampled, masked), masked=masked)
        return out

    def _heldout_kl(
        self, batch: dict[str, Any], batch_idx: int, exp: Experience, heldout_kl: HeldoutKL, processor: Any
    ) -> float | None:
        """``val/kl_prcp`` on the real-image responses of the prompts within ``rollout.val_kl_max_prompts``."""
        rows = self.kl_prompts.take(batch_idx, len(batch["prompt"]), exp) if self.kl_prcp else None
        if rows is None or not attach_masked_view(processor, batch, rows):
            return None
        kl_sum, num_tokens = heldout_kl(rows)
        self.metrics.update_kl(kl_sum, num_tokens, rows.vision_dependency)
        return float(kl_sum.sum() / num_tokens.sum().clamp(min=1))

    def compute(self) -> dict[str, float]:
        """The ``val/*`` metrics, and of the sampled protocol the headline keys and the accuracy per
        vision-dependency level (``val/sampled/*``; the reproduction's table reads them)."""
        metrics = self.metrics.compute(prefix="val")
        sampled = self.metrics_sampled.compute(prefix="val/sampled")
        metrics.update({k: v for k, v in sampled.items() if "_by_" not in k or "/acc_by_vd/" in k})
        return metrics
