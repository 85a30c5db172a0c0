"""Token selection (``configs/token_selection/<rule>.yaml``): keep the response tokens a rule picks from
per-token scores, and, used as an advantage shaper, zero the advantages of the others.

Rules are the registry :data:`papo.algos.token_selection.TOKEN_SELECTIONS` (``top_fraction_per_sequence``,
``top_quantile_per_sequence``, ``top_fraction_per_batch``, ``threshold``). As a shaper this is VPPO's
Token-level Gradient Filtering: A_{i,t} = A_{i,t} w_{i,t} with w the keep mask
(:func:`papo.algos.advantage_shaping.token_level_advantages`); the dropped tokens stay in the loss
normaliser, as in the released code (there the per-token loss is multiplied by the mask, which for the
clipped surrogate is the same thing, ``tests/test_algos_advantage_shaping.py``).
"""

from __future__ import annotations

from torch import Tensor

from papo.algos.advantage_shaping import token_level_advantages
from papo.algos.token_selection import TOKEN_SELECTIONS, select_tokens, selection_metrics
from papo.blocks.base import AdvantageShaper, ShapingInputs, TokenSelector


class TokenSelection(TokenSelector, AdvantageShaper):
    """Keep mask by ``rule`` with ``value`` (a fraction in (0, 1] or, for ``threshold``, a score)."""

    name = "token_selection"
    needs_scores = True

    def __init__(self, rule: str = "top_fraction_per_sequence", value: float = 0.4) -> None:
        TOKEN_SELECTIONS.get(rule)  # an unknown rule is an error that lists the valid ones
        if rule != "threshold" and not 0.0 < float(value) <= 1.0:
            raise ValueError(f"token_selection.value={value} must be a fraction in (0, 1] for rule {rule!r}")
        self.rule, self.value = rule, float(value)

    def select(self, scores: Tensor, mask: Tensor) -> Tensor:
        return select_tokens(scores, mask, self.rule, self.value)  # (B, T)

    def __call__(self, inputs: ShapingInputs) -> tuple[Tensor, dict[str, float]]:
        if inputs.scores is None:
            raise ValueError("token_selection needs per-token sensitivity scores (configs/sensitivity)")
        keep = self.select(inputs.scores, inputs.response_mask)  # (B, T)
        shaped = token_level_advantages(inputs.advantages, keep, inputs.response_mask)  # (B, T)
        metrics = {
            k: float(v) for k, v in selection_metrics(inputs.scores, inputs.response_mask, keep).items()
        }
        return shaped, metrics

    def __repr__(self) -> str:
        return f"TokenSelection(rule={self.rule!r}, value={self.value})"
