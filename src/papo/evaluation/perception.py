"""Held-out perception diagnostics: PAPO's KL_prcp measured on validation/test responses.

``kl_prcp`` here is the same per-token quantity the perception loss maximises during training (k3 with
the masked-image log-probs in the role of the reference, :func:`papo.algos.kl_estimate`), computed
without gradient on responses the policy generated from the REAL image (greedy by default), with the
seeded val/test masks. Training logs it on its own rollouts (``train/perception_kl/kl``); this is the
held-out counterpart the paper's reviewers asked for ("does the model look more?"). Not in the released
code, which logs KL_prcp on training rollouts only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from papo.algos import kl_estimate, zero_padding
from papo.models.logprobs import response_logps
from papo.rollout.experience import Experience
from papo.rollout.inputs import encode_images, per_prompt_visual


def attach_masked_view(processor: Any, batch: dict[str, Any], exp: Experience, group_offset: int = 0) -> bool:
    """Give ``exp`` (generated from the real images of ``batch``) the masked view's visual tensors.

    Row i of ``exp`` belongs to prompt ``exp.group_ids[i] - group_offset`` of ``batch``. Returns False (and
    changes nothing) when the batch has no masked view.
    """
    if batch.get("images_masked") is None:
        return False
    num_images = [len(x) for x in batch["images"]]
    per_masked = per_prompt_visual(encode_images(processor, batch["images_masked"]), num_images)
    exp.visual_masked = [per_masked[int(g) - group_offset] for g in exp.group_ids.tolist()]
    return True


@torch.no_grad()
def heldout_perception_kl(
    policy: torch.nn.Module,
    exp: Experience,
    suppress_ids: Tensor | None = None,
    temperature: float = 1.0,
    micro_batch_size: int = 64,
    device: torch.device | str | None = None,
    kind: str = "k3",
    direction: str = "masked_as_ref",
) -> tuple[Tensor, Tensor]:
    """Per-row sum of per-token KL_prcp and per-row token counts, both (N,), on CPU.

    ``exp`` must carry ``visual_masked`` (see :func:`attach_masked_view`). ``direction`` as in
    :func:`papo.algos.perception_kl`: ``masked_as_ref`` (released code) or ``real_as_ref``.
    """
    sums, counts = [], []
    for s in range(0, len(exp), micro_batch_size):
        micro = exp.select(list(range(s, min(s + micro_batch_size, len(exp)))))
        branches = []
        for masked in (False, True):
            inputs = micro.model_inputs(masked=masked)
            inputs = {
                k: (v.to(device) if isinstance(v, Tensor) else {a: b.to(device) for a, b in v.items()})
                for k, v in inputs.items()
            }
            branches.append(
                response_logps(policy, temperature=temperature, suppress_ids=suppress_ids, **inputs).float()
            )  # (n, T')
        logps, logps_masked = branches
        T = logps.shape[1]
        mask = micro.response_mask[:, :T].to(logps.device)  # (n, T')
        logps, logps_masked = zero_padding(logps, mask), zero_padding(logps_masked, mask)
        if direction == "masked_as_ref":
            per_token = kl_estimate(logps, logps_masked, kind)  # (n, T')
        else:
            per_token = kl_estimate(logps_masked, logps, kind)  # (n, T')
        sums.append((per_token * mask).sum(1).cpu())  # (n,)
        counts.append(mask.sum(1).cpu())  # (n,)
    return torch.cat(sums), torch.cat(counts)
