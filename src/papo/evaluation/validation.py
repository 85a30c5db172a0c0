"""Training-time validation kept out of the LightningModule.

* :class:`ValidationRun`: one validation run over the val loader: the main protocol (``rollout.val_*``: greedy
  unless ``val_temperature`` > 0) and, with ``rollout.val_sampled_k``, the published avg@k protocol, each with
  the real and (when the batch has one) the masked image; the held-out perception KL (``val/kl_prcp``, two
  extra no-grad forwards per val batch) on the main protocol's real-image responses; the ``val/*`` metrics.
* :class:`PromptBudget`: the held-out KL on the first ``rollout.val_kl_max_prompts`` prompts of each validation
  run only, the same prompts every time.
* :class:`ValidationOutput`: what ``PapoModule.validation_step`` returns for each batch, read by callbacks in
  ``on_validation_batch_end`` (the sample table takes its samples from it).
* :class:`ValidationSuite`: several named validation sets validated together (``val_sets``,
  :mod:`papo.evaluation.val_sets`), one :class:`ValidationRun` per set (= per val dataloader), each with its own
  sampling protocol and keys ``val/<name>/...`` (greedy) and ``val/<name>/sampled/...`` (avg@k), the group
  averages ``val/average/<group>/...`` and the per-benchmark table (:func:`papo.evaluation.suite.suite_table`).
  Without ``val_sets`` it holds the single run of ``data.val_dataset`` with the keys ``val/...``.

The generation and the KL forward are passed in as functions, so the protocol runs on plain tensors in tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from papo.config import RolloutConfig
from papo.evaluation.metrics import ValidationMetrics
from papo.evaluation.perception import attach_masked_view
from papo.evaluation.suite import group_averages, suite_table
from papo.evaluation.val_sets import SamplingProtocol, ValSet
from papo.rollout.experience import Experience
from papo.rollout.hf_generate import GenerationConfig

__all__ = ["AVERAGED", "PromptBudget", "ValidationOutput", "ValidationRun", "ValidationSuite"]

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
    """The protocols and metrics of training-time validation of one val set (see the module docstring).

    Args:
        rollout: the rollout config; without ``protocol`` its ``val_*`` keys set the protocols.
        prefix: the metric prefix (``val`` for ``data.val_dataset``, ``val/<name>`` for a named set).
        protocol: a named set's own protocol: greedy (``<prefix>/...``) and/or avg@k (``<prefix>/sampled/...``);
            the first of them is the main protocol (held-out KL, the callbacks' outputs).
    """

    def __init__(
        self, rollout: RolloutConfig, prefix: str = "val", protocol: SamplingProtocol | None = None
    ) -> None:
        r = rollout
        self.prefix = prefix
        if protocol is None:
            self.main: GenerationConfig | None = GenerationConfig(
                r.max_new_tokens, r.val_temperature, r.top_p, r.top_k, r.val_samples
            )
            # the published protocol: avg@k at temperature T, no nucleus / top-k (val/sampled/*)
            self.sampled = (
                GenerationConfig(r.max_new_tokens, r.val_sampled_temperature, 1.0, 0, r.val_sampled_k)
                if r.val_sampled_k > 0
                else None
            )
        else:
            max_new = protocol.max_new_tokens or r.max_new_tokens
            self.main = GenerationConfig(max_new, 0.0, 1.0, 0, 1) if protocol.greedy else None
            self.sampled = (
                GenerationConfig(
                    max_new, protocol.temperature, protocol.top_p, protocol.top_k, protocol.samples
                )
                if protocol.samples > 0
                else None
            )
        self.kl_prcp = r.val_kl_prcp
        self.kl_prompts = PromptBudget(r.val_kl_max_prompts)
        self.metrics = ValidationMetrics()
        self.metrics_sampled = ValidationMetrics()

    @property
    def primary(self) -> GenerationConfig:
        """The main protocol: greedy (or ``rollout.val_*``) when there is one, else avg@k."""
        gen = self.main if self.main is not None else self.sampled
        assert gen is not None, "a validation run needs at least one protocol"
        return gen

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
        primary = self.metrics if self.main is not None else self.metrics_sampled
        out = ValidationOutput(real=generate(self.primary, False))
        primary.update(out.real, masked=False)
        out.kl_prcp = self._heldout_kl(batch, batch_idx, out.real, heldout_kl, processor, primary)
        if True in views:
            out.masked = generate(self.primary, True)
            primary.update(out.masked, masked=True)
        if self.main is not None and self.sampled is not None:
            for masked in views:
                self.metrics_sampled.update(generate(self.sampled, masked), masked=masked)
        return out

    def _heldout_kl(
        self,
        batch: dict[str, Any],
        batch_idx: int,
        exp: Experience,
        heldout_kl: HeldoutKL,
        processor: Any,
        metrics: ValidationMetrics,
    ) -> float | None:
        """``val/kl_prcp`` on the real-image responses of the prompts within ``rollout.val_kl_max_prompts``."""
        rows = self.kl_prompts.take(batch_idx, len(batch["prompt"]), exp) if self.kl_prcp else None
        if rows is None or not attach_masked_view(processor, batch, rows):
            return None
        kl_sum, num_tokens = heldout_kl(rows)
        metrics.update_kl(kl_sum, num_tokens, rows.vision_dependency)
        return float(kl_sum.sum() / num_tokens.sum().clamp(min=1))

    def compute(self) -> dict[str, float]:
        """The ``<prefix>/*`` metrics, and of the sampled protocol the headline keys and the accuracy per
        vision-dependency level (``<prefix>/sampled/*``; the reproduction's table reads them)."""
        metrics = self.metrics.compute(prefix=self.prefix)
        sampled = self.metrics_sampled.compute(prefix=f"{self.prefix}/sampled")
        metrics.update({k: v for k, v in sampled.items() if "_by_" not in k or "/acc_by_vd/" in k})
        return metrics


#: the metrics averaged over the sets of a group (``val/average/<group>/<metric>``, and ``sampled/<metric>``)
AVERAGED = ("acc", "acc_masked", "vision_gap", "reward", "format")


class ValidationSuite:
    """Every val set of a run, one :class:`ValidationRun` per val dataloader (see the module docstring).

    Args:
        rollout: the rollout config.
        sets: the named sets (``val_sets``), in dataloader order; None / [] = the single ``data.val_dataset``.
    """

    def __init__(self, rollout: RolloutConfig, sets: Sequence[ValSet] | None = None) -> None:
        self.sets = list(sets or [])
        if self.sets:
            self.runs = [ValidationRun(rollout, s.prefix, s.protocol) for s in self.sets]
        else:
            self.runs = [ValidationRun(rollout)]

    @property
    def main(self) -> GenerationConfig:
        """The first set's main protocol."""
        return self.runs[0].primary

    def reset(self) -> None:
        for run in self.runs:
            run.reset()

    def step(
        self,
        batch: dict[str, Any],
        batch_idx: int,
        generate: Generate,
        heldout_kl: HeldoutKL,
        processor: Any,
        dataloader_idx: int = 0,
    ) -> ValidationOutput:
        """One val batch of the set of ``dataloader_idx`` (:meth:`ValidationRun.step`)."""
        return self.runs[dataloader_idx].step(batch, batch_idx, generate, heldout_kl, processor)

    def _groups(self) -> dict[str, str]:
        return {s.name: s.group or "other" for s in self.sets}

    def compute(self) -> dict[str, float]:
        """Every set's metrics and, with named sets, the group and overall averages of :data:`AVERAGED`."""
        out: dict[str, float] = {}
        for run in self.runs:
            out.update(run.compute())
        if not self.sets:
            return out
        groups = self._groups()
        for proto in ("", "sampled/"):
            for metric in AVERAGED:
                scores = {
                    s.name: out[f"{s.prefix}/{proto}{metric}"]
                    for s in self.sets
                    if f"{s.prefix}/{proto}{metric}" in out
                }
                for group, value in group_averages(scores, groups).items():
                    out[f"val/average/{group}/{proto}{metric}"] = value
        return out

    def headline_keys(self) -> list[str]:
        """The accuracy keys of every set and average (the before/after comparison of a run)."""
        if not self.sets:
            return []
        keys = [f"{s.prefix}/{p}acc" for s in self.sets for p in ("", "sampled/")]
        names = [*dict.fromkeys(self._groups().values()), "overall"]
        return keys + [f"val/average/{g}/{p}acc" for g in names for p in ("", "sampled/")]

    def table(self, metrics: dict[str, float], counts: dict[str, int] | None = None) -> str:
        """The per-benchmark Markdown table of ``metrics`` (:meth:`compute`'s keys): accuracy with the real and
        the masked image and the vision gap, greedy and avg@k where measured, with the group averages;
        ``counts``: questions per set (the ``n`` column)."""
        columns = [f"{p}{m}" for p in ("", "sampled/") for m in ("acc", "acc_masked", "vision_gap")]
        results = {
            s.name: {c: metrics[f"{s.prefix}/{c}"] for c in columns if f"{s.prefix}/{c}" in metrics}
            for s in self.sets
        }
        used = [c for c in columns if any(c in r for r in results.values())]
        header = {
            c: (c.replace("sampled/", "avg@k ") if c.startswith("sampled/") else f"greedy {c}") for c in used
        }
        renamed = {n: {header[c]: v for c, v in r.items()} for n, r in results.items()}
        return suite_table(renamed, self._groups(), counts, metrics=[header[c] for c in used])
