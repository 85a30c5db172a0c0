"""PAPO's Double Entropy Loss: eta_real * H(real branch) + eta_masked * H(masked branch), minimised.

Entropies are the sampled-token surrogate -log p(o_t) (docs/algorithm.md), via :func:`papo.algos.sampled_entropy`.
With the masked branch detached (``mask_branch_grad=false``, the released code's default) the
H_masked term carries NO gradient: it changes the logged loss value only (the authors confirmed this).
``mask_branch_grad=true`` (config: the loss-level ``loss.mask_branch_grad``, shared with the perception
KL) asks the module to recompute the masked branch with gradient in every micro-batch, so H_masked is
trained too, also when this is the only active masked component (``loss=double_entropy``).
Both coefficients follow the perception-KL schedule when ``schedule="linear"``: they are multiplied by the
released actor's ratio gamma(p) / gamma (:class:`papo.losses.base.GammaSchedule`; 1 when gamma is 0).
"""

from __future__ import annotations

from torch import Tensor

from papo.algos import sampled_entropy
from papo.losses.base import GammaSchedule, LossComponent, LossInputs, scalar


class DoubleEntropyLoss(LossComponent):
    """eta_real * H_real + eta_masked * H_masked (to minimise)."""

    name = "double_entropy"
    needs_masked = True

    def __init__(
        self,
        eta_real: float = 0.03,
        eta_masked: float = 0.03,
        schedule: str = "fixed",
        anneal_fraction: float = 0.5,
        mask_branch_grad: bool = False,
        gamma: float = 0.0,
        gamma_start: float | None = None,
        gamma_end: float = 0.0,
    ) -> None:
        if eta_real < 0 or eta_masked < 0:
            raise ValueError(f"loss.eta_real/eta_masked must be >= 0, got {eta_real}, {eta_masked}")
        # the perception KL's schedule: the entropy coefficients follow gamma(p) / gamma
        self.schedule = GammaSchedule(gamma, schedule, gamma_start, gamma_end, anneal_fraction)
        self.eta_real = eta_real
        self.eta_masked = eta_masked
        self.masked_grad = bool(mask_branch_grad)

    @property
    def active(self) -> bool:
        return self.eta_real > 0 or self.eta_masked > 0

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        assert inputs.logps_masked is not None, "DoubleEntropyLoss needs logps_masked"
        mask, mode, n, L = inputs.response_mask, inputs.agg_mode, inputs.num_tokens, inputs.norm_len
        h_real = sampled_entropy(inputs.logps, mask, agg_mode=mode, num_tokens=n, norm_len=L)
        # the module recomputes the masked branch with grad when ANY component asks; not asked: detached
        masked = inputs.logps_masked if self.masked_grad else inputs.logps_masked.detach()
        h_masked = sampled_entropy(masked, mask, agg_mode=mode, num_tokens=n, norm_len=L)
        f = self.schedule.entropy_factor(inputs.progress)
        loss = f * (self.eta_real * h_real + self.eta_masked * h_masked)
        if not loss.requires_grad:  # both coefficients zero or branch detached: keep autograd-friendly
            loss = loss + 0.0 * inputs.logps.sum()
        metrics = {
            "entropy_real": scalar(h_real) * inputs.local_scale,
            "entropy_masked": scalar(h_masked) * inputs.local_scale,
            "eta_real": f * self.eta_real,
            "eta_masked": f * self.eta_masked,
        }
        return loss, metrics
