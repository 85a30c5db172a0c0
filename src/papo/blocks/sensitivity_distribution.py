"""Full-distribution visual sensitivity (``configs/sensitivity/{kl,kl_alt_real,jsd}.yaml``): per response token,
a divergence between the next-token distributions given the real image and given the altered view,
p_t = pi(. | I, o_<t) and q_t = pi(. | I', o_<t): ``kl`` = KL(p_t || q_t) (the VPPO paper's definition of token
visual dependency), ``kl_alt_real`` = KL(q_t || p_t), ``jsd`` = Jensen-Shannon divergence (bounded by log 2).

Computed from the two passes' last hidden states and the LM head, ``chunk_size`` response positions at a time
(:func:`papo.algos.visual_sensitivity.distribution_sensitivity_from_hidden`): at most ``chunk_size x V`` fp32
values per view exist at once, never a (B x T x V) tensor. Needs a model whose forward is
``lm_head(model(...))`` with unsharded weights (Qwen-VL; :func:`papo.models.logprobs.response_hidden`).
Differences from the log-prob passes: the distributions include the vocabulary rows the sampler never emits
(the image placeholder, padded rows), which the log-probs exclude; VPPO's released code uses the sampled-token
k3 estimate instead (``sensitivity=k3``).
"""

from __future__ import annotations

from torch import Tensor

from papo.algos.visual_sensitivity import DISTRIBUTION_SIGNALS, distribution_sensitivity_from_hidden
from papo.blocks.base import ModelPasses, SensitivitySignal


class DistributionSensitivity(SensitivitySignal):
    """Per-token divergence between the real- and altered-view next-token distributions (module doc)."""

    name = "sensitivity"

    def __init__(self, kind: str = "kl", chunk_size: int = 256) -> None:
        DISTRIBUTION_SIGNALS.get(kind)  # an unknown kind is an error that lists the valid ones
        if int(chunk_size) < 1:
            raise ValueError(f"sensitivity.chunk_size={chunk_size} must be >= 1")
        self.kind, self.chunk_size = kind, int(chunk_size)

    def __call__(self, logps: Tensor, logps_alt: Tensor, mask: Tensor) -> Tensor:
        raise ValueError(
            f"sensitivity={self.kind} compares whole next-token distributions: it needs the passes' hidden "
            "states (score), not sampled-token log-probs"
        )

    def score(self, passes: ModelPasses, mask: Tensor) -> Tensor:
        weight, bias = passes.head()
        return distribution_sensitivity_from_hidden(
            passes.hidden(masked=False),
            passes.hidden(masked=True),
            weight,
            mask,
            kind=self.kind,
            lm_head_bias=bias,
            temperature=passes.temperature,
            chunk_size=self.chunk_size,
        )  # (B, T)

    def __repr__(self) -> str:
        return f"DistributionSensitivity(kind={self.kind!r}, chunk_size={self.chunk_size})"
