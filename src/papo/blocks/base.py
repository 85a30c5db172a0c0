"""The interfaces of the method blocks that are not loss components (those are :mod:`papo.losses.base`).

Each block is a small object built by Hydra from its config group; it owns its hyperparameters, declares
what it needs from the module, and delegates its maths to a pure function of :mod:`papo.algos`:

* :class:`SensitivitySignal` (``configs/sensitivity``): per-token dependence on the real image, (B, T), from
  the real-image and the altered-view passes (:class:`ModelPasses`: sampled-token log-probs, which the module
  already computes for the masked view, or last hidden states for the full-distribution signals). The module
  computes it once per rollout batch, micro-batch by micro-batch, without gradient, with the rollout
  parameters (VPPO's released code), and hands it to the shapers as ``ShapingInputs.scores``.
* :class:`TokenSelector` (``configs/token_selection``): a keep mask over response tokens from per-token
  scores. As a shaper it zeroes the advantages of the tokens it drops (VPPO's token-level gradient filter).
* :class:`AdvantageShaper` (``configs/advantage_shaping``): rescales advantages per trajectory or per token.
  The module calls :meth:`AdvantageShaper.population` once per update mini-batch and the shaper itself once
  per micro-batch (VPPO takes its min-max range over the mini-batch and its mean scale over the micro-batch).
* :class:`RolloutView` (``configs/rollout_view``): how a prompt's group of responses is sampled; the default
  samples all of them from the real image, NoisyRollout samples part of the group from a distorted copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor

__all__ = [
    "AdvantageShaper",
    "ModelPasses",
    "RolloutView",
    "SampleFn",
    "SensitivitySignal",
    "ShapingInputs",
    "TokenSelector",
]


class ModelPasses(Protocol):
    """The no-grad forwards of one micro-batch with the rollout parameters that a signal may ask for (the
    module provides them, reusing what it has already computed: papo.models.rollout_passes)."""

    #: the sampling temperature the log-probs and distributions use
    temperature: float

    def logps(self, masked: bool) -> Tensor:
        """(B, T) sampled-token log-probs given the real image (``masked=False``) or the altered view."""
        ...

    def hidden(self, masked: bool) -> Tensor:
        """(B, T, H) last hidden states that predict each response token (0 at padding)."""
        ...

    def head(self) -> tuple[Tensor, Tensor | None]:
        """The LM head's (V, H) weight and optional (V,) bias."""
        ...


class SensitivitySignal:
    """Per-token visual sensitivity from the real-image and the altered-view passes."""

    name: str = "sensitivity"
    #: needs the altered (masked) view: the datamodule must make one (``masking``)
    needs_masked: bool = True

    def __call__(self, logps: Tensor, logps_alt: Tensor, mask: Tensor) -> Tensor:
        """(B, T) signal from (B, T) log-probs given the real image and given the altered view; 0 at padding."""
        raise NotImplementedError

    def score(self, passes: ModelPasses, mask: Tensor) -> Tensor:
        """(B, T) signal of one micro-batch from the passes it needs (default: both views' sampled-token
        log-probs, through ``__call__``)."""
        return self(passes.logps(masked=False), passes.logps(masked=True), mask)


class TokenSelector:
    """A keep mask over response tokens from per-token scores."""

    name: str = "token_selection"

    def select(self, scores: Tensor, mask: Tensor) -> Tensor:
        """(B, T) keep mask in ``mask``'s dtype, contained in ``mask``."""
        raise NotImplementedError


@dataclass
class ShapingInputs:
    """What an advantage shaper sees for one micro-batch of B responses, T response positions."""

    advantages: Tensor  # (B, T) advantages per token (the group advantage broadcast, or already shaped)
    response_mask: Tensor  # (B, T)
    scores: Tensor | None = None  # (B, T) visual sensitivity of each response token, no gradient
    population: Any = None  # what the shaper's ``population`` returned for the enclosing mini-batch


class AdvantageShaper:
    """Rescales advantages per trajectory or per token."""

    name: str = "advantage_shaping"
    #: needs per-token sensitivity scores (``ShapingInputs.scores``)
    needs_scores: bool = True

    def population(self, scores: Tensor, mask: Tensor) -> Any:
        """Statistics over the update mini-batch the shaper needs in every micro-batch (None: none)."""
        return None

    def __call__(self, inputs: ShapingInputs) -> tuple[Tensor, dict[str, float]]:
        """(shaped (B, T) advantages, metrics to log under ``train/<name>/``)."""
        raise NotImplementedError


#: ``sample(batch, num_samples)``: ``num_samples`` responses for every prompt of a data batch, scored, as one
#: :class:`papo.rollout.experience.Experience` whose ``group_ids`` name the prompt (the module binds the
#: policy, the generation config and the group offset)
SampleFn = Callable[[dict[str, Any], int], Any]


class RolloutView:
    """How a prompt's group of ``group_size`` responses is sampled (default: all from the real image)."""

    name: str = "rollout_view"

    def rollout(
        self, sample: SampleFn, batch: dict[str, Any], group_size: int, step: int, total_steps: int
    ) -> tuple[Any, dict[str, float]]:
        """The experience of one rollout batch (``group_size`` consecutive rows per prompt) and metrics to log
        under ``train/<name>/``. ``step``: optimiser-step count before this rollout (0-based)."""
        return sample(batch, group_size), {}
