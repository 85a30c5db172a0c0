"""Validation metrics with torchmetrics: accuracy/reward/format/length with the real image and with the
masked image, overall, per task type and per vision-dependency level, and the vision-reliance gap.

avg@k: with k samples per prompt every sample is one row, so the row mean is avg@k accuracy.
"""

from __future__ import annotations

import torch
from torchmetrics import MeanMetric

from papo.rollout.experience import Experience


class ValidationMetrics:
    """Lazily-created MeanMetrics keyed by name (categories come from the data)."""

    def __init__(self) -> None:
        self.metrics: dict[str, MeanMetric] = {}

    def _update(self, key: str, values: torch.Tensor) -> None:
        if key not in self.metrics:
            self.metrics[key] = MeanMetric()
        self.metrics[key].update(values.float())

    def reset(self) -> None:
        self.metrics.clear()

    def update(self, exp: Experience, masked: bool) -> None:
        """Accumulate one generated-and-scored batch (``masked``: generated from the masked view)."""
        sfx = "_masked" if masked else ""
        self._update(f"acc{sfx}", exp.accuracy)
        self._update(f"reward{sfx}", exp.rewards)
        self._update(f"format{sfx}", exp.format)
        self._update(f"response_length{sfx}", exp.response_mask.sum(1))
        for field, tag in (("task_type", "task"), ("vision_dependency", "vd")):
            labels = getattr(exp, field)
            for value in sorted(set(labels)):
                idx = torch.tensor([i for i, x in enumerate(labels) if x == value])
                self._update(f"acc{sfx}_by_{tag}/{value}", exp.accuracy[idx])

    def compute(self, prefix: str = "val") -> dict[str, float]:
        out = {f"{prefix}/{k}": float(m.compute()) for k, m in sorted(self.metrics.items())}
        if f"{prefix}/acc" in out and f"{prefix}/acc_masked" in out:
            out[f"{prefix}/vision_gap"] = out[f"{prefix}/acc"] - out[f"{prefix}/acc_masked"]
        return out
