"""An entropy term with a signed coefficient: ``coef * H`` minimised, so coef > 0 keeps the entropy low (VPPO's
entropy penalty, PAPO's eta_real) and coef < 0 raises it (NoisyRollout's entropy bonus, the released
``entropy_coeff`` 1e-3 subtracted from the loss).

``form``: ``sampled`` is the sampled-token surrogate H = aggregate(-l_t) (:func:`papo.algos.sampled_entropy`;
VPPO's released ``entropy_penalty_coef`` term), ``full`` the full-vocabulary entropy of every response position
(:func:`papo.algos.entropy.entropy_from_logits`; NoisyRollout's released bonus), which the module computes in
the same forward as the log-probs when an active component asks for it (``needs_entropy``). Both are reduced
with the shared aggregation (:func:`papo.algos.aggregate_loss`), so they use the same mask and normaliser as
every other term.
"""

from __future__ import annotations

from torch import Tensor

from papo.losses.base import LossComponent, LossInputs, scalar

FORMS = ("sampled", "full")


class EntropyLoss(LossComponent):
    """coef * H (to minimise; a negative coef is an entropy bonus)."""

    name = "entropy"

    def __init__(self, coef: float = 0.0, form: str = "sampled") -> None:
        if form not in FORMS:
            raise ValueError(f"loss entropy.form={form!r} is unknown; valid: {list(FORMS)}")
        self.coef, self.form = float(coef), form
        self.needs_entropy = form == "full"

    @property
    def active(self) -> bool:
        return self.coef != 0.0

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        if self.form == "full":
            if inputs.entropies is None:
                raise ValueError(
                    "EntropyLoss(form='full') needs the full-vocabulary entropies (LossInputs.entropies)"
                )
            per_token = inputs.entropies  # (B, T)
        else:
            per_token = -inputs.logps  # (B, T) sampled-token surrogate
        h = inputs.aggregate(per_token)
        return self.coef * h, {"entropy": scalar(h) * inputs.local_scale, "coef": self.coef}
