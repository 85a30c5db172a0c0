"""Validation metrics with torchmetrics: accuracy/reward/format/length with the real image and with the
masked image, overall, per task type and per vision-dependency level, the vision-reliance gap, and the
held-out perception KL (``kl_prcp``, PAPO's KL between the real- and masked-image policies on the
greedy responses; see :mod:`papo.evaluation.perception`).

avg@k: with k samples per prompt every sample is one row, so the row mean is avg@k accuracy.

Keys (``{prefix}/...``, ``sfx`` is ``""`` for the real image and ``"_masked"`` for the masked one):
``acc{sfx}``, ``reward{sfx}``, ``reward{sfx}/<component>`` (each named reward component,
:mod:`papo.rewards.components`), ``format{sfx}``, ``response_length{sfx}``, ``acc{sfx}_by_task/<t>``,
``acc{sfx}_by_vd/<v>``, ``vision_gap`` (= acc - acc_masked), ``kl_prcp`` (token mean) and
``kl_prcp_by_vd/<v>`` when :meth:`ValidationMetrics.update_kl` was called. ``detailed=True`` (eval.py)
adds ``reward{sfx}_by_task|vd/<x>``, ``format{sfx}_by_task|vd/<x>``, ``vision_gap_by_task|vd/<x>`` and
``reward_gap`` (= reward - reward_masked).

Grouping is generic over per-row label fields: ``GROUPS`` (task type, vision dependency) are always there;
``DECLARED_GROUPS`` are fields a dataset may declare, grouped only when the rows carry them (an attribute of
the scored batch, e.g. ``exp.shortcut``: ``consistent`` / ``breaking`` rows of :mod:`papo.data.shortcut`),
and for those the per-group vision gap ``vision_gap_by_<tag>/<x>`` is reported in the lean key set too.
``ValidationMetrics(groups=...)`` replaces the whole list.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import MeanMetric

from papo.rollout.experience import Experience

#: (row field, key tag) always grouped
GROUPS = (("task_type", "task"), ("vision_dependency", "vd"))
#: (row field, key tag) grouped when the rows carry the field; their per-group vision gap is always reported
DECLARED_GROUPS = (("shortcut", "shortcut"),)


class ValidationMetrics:
    """Lazily-created MeanMetrics keyed by name (categories come from the data).

    Args:
        detailed: also track reward and format per category and the per-category gaps (eval.py); off for
            training-time validation to keep the logged key set small.
        groups: ``(row field, key tag)`` pairs to group by; ``None`` = ``GROUPS`` + ``DECLARED_GROUPS``.
            A field the scored rows do not carry is skipped.
    """

    def __init__(self, detailed: bool = False, groups: Sequence[tuple[str, str]] | None = None) -> None:
        self.metrics: dict[str, MeanMetric] = {}
        self.detailed = detailed
        self.groups = tuple(GROUPS + DECLARED_GROUPS if groups is None else groups)
        self._seen_tags: set[str] = set()

    def _update(self, key: str, values: torch.Tensor, weight: torch.Tensor | float = 1.0) -> None:
        if key not in self.metrics:
            # no cross-rank sync: every rank validates the whole (unsharded) val split, and a sync would
            # deadlock on keys present on one rank only and fail on CPU tensors under NCCL (multi-GPU runs)
            self.metrics[key] = MeanMetric(sync_on_compute=False)
        self.metrics[key].update(values.float(), weight)

    def reset(self) -> None:
        self.metrics.clear()
        self._seen_tags.clear()

    def update(self, exp: Experience, masked: bool) -> None:
        """Accumulate one generated-and-scored batch (``masked``: generated from the masked view)."""
        sfx = "_masked" if masked else ""
        self._update(f"acc{sfx}", exp.accuracy)
        self._update(f"reward{sfx}", exp.rewards)
        self._update(f"format{sfx}", exp.format)
        self._update(f"response_length{sfx}", exp.response_mask.sum(1))
        for name, values in exp.reward_terms.items():  # each named reward component: reward{sfx}/<name>
            self._update(f"reward{sfx}/{name}", values)
        per_group = [("acc", exp.accuracy)]
        if self.detailed:
            per_group += [("reward", exp.rewards), ("format", exp.format)]
        for field, tag in self.groups:
            labels = getattr(exp, field, None)
            if labels is None:  # a declared field this dataset does not have
                continue
            self._seen_tags.add(tag)
            for value in sorted(set(labels)):
                idx = torch.tensor([i for i, x in enumerate(labels) if x == value])
                for name, values in per_group:
                    self._update(f"{name}{sfx}_by_{tag}/{value}", values[idx])

    def update_kl(
        self, token_kl_sum: torch.Tensor, num_tokens: torch.Tensor, vision_dependency: list[str]
    ) -> None:
        """Accumulate the held-out perception KL: per-row sums of per-token KL and token counts, (N,) each.

        ``kl_prcp`` is the token mean over all rows (as ``train/perception_kl/kl`` with ``token-mean``).
        """
        total = num_tokens.sum()
        if total > 0:
            self._update("kl_prcp", token_kl_sum.sum() / total, total)
        for value in sorted(set(vision_dependency)):
            idx = torch.tensor([i for i, x in enumerate(vision_dependency) if x == value])
            n = num_tokens[idx].sum()
            if n > 0:
                self._update(f"kl_prcp_by_vd/{value}", token_kl_sum[idx].sum() / n, n)

    def compute(self, prefix: str = "val") -> dict[str, float]:
        out = {f"{prefix}/{k}": float(m.compute()) for k, m in sorted(self.metrics.items())}
        if f"{prefix}/acc" in out and f"{prefix}/acc_masked" in out:
            out[f"{prefix}/vision_gap"] = out[f"{prefix}/acc"] - out[f"{prefix}/acc_masked"]
        if self.detailed and f"{prefix}/reward" in out and f"{prefix}/reward_masked" in out:
            out[f"{prefix}/reward_gap"] = out[f"{prefix}/reward"] - out[f"{prefix}/reward_masked"]
        declared = {tag for _, tag in DECLARED_GROUPS}
        for tag in sorted(self._seen_tags):
            if not (self.detailed or tag in declared):
                continue
            head = f"{prefix}/acc_by_{tag}/"
            for key in [k for k in out if k.startswith(head)]:
                value = key[len(head) :]
                masked = out.get(f"{prefix}/acc_masked_by_{tag}/{value}")
                if masked is not None:
                    out[f"{prefix}/vision_gap_by_{tag}/{value}"] = out[key] - masked
        return out
