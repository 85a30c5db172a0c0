"""Extra work of training-time validation, kept out of the LightningModule.

:func:`after_validation_generation` is called by ``PapoModule.validation_step`` after each view's
generation. It adds ``val/kl_prcp`` (and ``val/kl_prcp_by_vd/<v>``): the held-out perception KL on the
greedy real-image responses (two extra no-grad forwards per val batch, see
:mod:`papo.evaluation.perception`), and keeps the first batch's samples in ``module.val_samples`` for the
sample-table callback (only when that callback asked for them via ``module.num_val_samples``).
``module.val_kl_prcp`` (default True) and ``module.val_kl_prcp_max_prompts`` (default None = every val
prompt; else the first N of each validation run) are set by
:class:`papo.callbacks.perception_diagnostics.PerceptionDiagnosticsCallback`.
"""

from __future__ import annotations

from typing import Any

from papo.evaluation.perception import attach_masked_view, heldout_perception_kl
from papo.evaluation.samples import collect_samples
from papo.rollout.experience import Experience


def after_validation_generation(
    module: Any, batch: dict[str, Any], batch_idx: int, exp: Experience, masked: bool
) -> None:
    """Held-out KL_prcp into ``module.val_metrics``; first-batch samples into ``module.val_samples``."""
    if not masked:
        _heldout_kl(module, batch, batch_idx, exp)
    keep = int(getattr(module, "num_val_samples", 0))
    if batch_idx == 0 and keep > 0:
        samples = getattr(module, "val_samples", None) if masked else None
        module.val_samples = collect_samples(
            batch, exp, masked, samples if samples is not None else [], keep, step=module.global_step
        )


def _heldout_kl(module: Any, batch: dict[str, Any], batch_idx: int, exp: Experience) -> None:
    if batch_idx == 0:
        module.val_kl_prompts_seen = 0
    limit = getattr(module, "val_kl_prcp_max_prompts", None)
    seen = int(getattr(module, "val_kl_prompts_seen", 0))
    if not getattr(module, "val_kl_prcp", True) or (limit is not None and seen >= limit):
        return
    if limit is not None and seen + len(batch["prompt"]) > limit:  # rows of the first `limit` prompts only
        exp = exp.select([i for i, g in enumerate(exp.group_ids.tolist()) if g < limit - seen])
    module.val_kl_prompts_seen = seen + len(batch["prompt"])
    if not attach_masked_view(module.processor, batch, exp):
        return
    kl_sum, num_tokens = heldout_perception_kl(
        module.policy,
        exp,
        suppress_ids=module.suppress_ids,
        temperature=module.rollout_cfg["temperature"],
        micro_batch_size=module.algo["micro_batch_size"],
        device=module.device,
    )
    module.val_metrics.update_kl(kl_sum, num_tokens, exp.vision_dependency)
