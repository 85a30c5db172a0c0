"""Sampled-token visual sensitivity (``configs/sensitivity/{k1,abs,k3}.yaml``).

s_t from the log-probs of the sampled token given the real image (l_t) and given the altered view (l'_t):
``k1`` = l_t - l'_t, ``abs`` = |l_t - l'_t|, ``k3`` = the k3 estimator with the altered view as reference
(PAPO's per-token KL_prcp, VPPO's released signal); the maths is
:func:`papo.algos.visual_sensitivity.sampled_token_sensitivity`. VPPO's paper defines the signal as the KL
between the full next-token distributions; the released code, reproduced by ``k3``, uses this sampled-token
estimate (docs/methods.md).
"""

from __future__ import annotations

from torch import Tensor

from papo.algos.visual_sensitivity import SAMPLED_SIGNALS, sampled_token_sensitivity
from papo.blocks.base import SensitivitySignal


class SampledTokenSensitivity(SensitivitySignal):
    """Per-token signal from sampled-token log-probs (module doc)."""

    name = "sensitivity"

    def __init__(self, kind: str = "k3") -> None:
        if kind not in SAMPLED_SIGNALS:
            raise ValueError(f"sensitivity.kind={kind!r} is unknown; valid: {list(SAMPLED_SIGNALS)}")
        self.kind = kind

    def __call__(self, logps: Tensor, logps_alt: Tensor, mask: Tensor) -> Tensor:
        return sampled_token_sensitivity(logps, logps_alt, mask, self.kind)  # (B, T)

    def __repr__(self) -> str:
        return f"SampledTokenSensitivity(kind={self.kind!r})"
