"""Loss components composed by the LightningModule. Each returns a value to MINIMISE.

- :class:`~papo.losses.policy_gradient.PolicyGradientLoss` (from ``configs/algo``)
- :class:`~papo.losses.reference_kl.ReferenceKLLoss` (from ``configs/algo``, when kl_coef > 0)
- :class:`~papo.losses.perception_kl.PerceptionKLLoss` (``configs/loss``: PAPO's KL_prcp, maximised)
- :class:`~papo.losses.double_entropy.DoubleEntropyLoss` (``configs/loss``)

A new loss = one file here + one entry under ``components:`` of a ``configs/loss/*.yaml``.
"""

from papo.losses.base import GammaSchedule, LossComponent, LossInputs

__all__ = ["GammaSchedule", "LossComponent", "LossInputs"]
