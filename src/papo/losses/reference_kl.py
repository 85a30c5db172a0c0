"""Reference-model KL term beta * KL(pi_theta || pi_ref) in the loss (GRPO; absent in DAPO).

Estimator picked by name from ``papo.algos.KL_ESTIMATORS`` (k3 = low_var_kl by default, as EasyR1).
Built by the module from the algo config only when ``algo.kl_coef > 0`` and ``algo.kl_in == "loss"``;
otherwise no reference model is loaded at all.
"""

from __future__ import annotations

from torch import Tensor

from papo.algos import kl_estimate
from papo.losses.base import LossComponent, LossInputs, scalar


class ReferenceKLLoss(LossComponent):
    """beta * aggregate(kl_estimate(logps, ref_logps)) (to minimise)."""

    name = "ref_kl"
    needs_ref = True

    def __init__(self, kl_coef: float = 0.01, kl_estimator: str = "k3") -> None:
        self.kl_coef = kl_coef
        self.kl_estimator = kl_estimator

    @property
    def active(self) -> bool:
        return self.kl_coef > 0

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        assert inputs.ref_logps is not None, "ReferenceKLLoss needs ref_logps"
        kl_mat = kl_estimate(inputs.logps, inputs.ref_logps, self.kl_estimator)  # (B, T)
        kl = inputs.aggregate(kl_mat)
        return self.kl_coef * kl, {"kl": scalar(kl) * inputs.local_scale, "coef": self.kl_coef}
