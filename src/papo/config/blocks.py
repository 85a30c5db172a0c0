"""Typed schemas of the method-block groups (``configs/sensitivity``, ``configs/token_selection``,
``configs/advantage_shaping``, ``configs/rollout_view``; docs/methods.md). Each option is a ``_target_`` (null in
``none.yaml``: no block) and its keys; the rules that tie a block to other groups (a shaper needs a signal, a
signal needs the masked view, the noisy part of a group must leave a clean response) are validators of the run
config (:class:`papo.config.runs.TrainRunConfig`).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from papo.config.types import (
    ConfigGroup,
    Fraction,
    Hint,
    NonNegative,
    PositiveInt,
    choice,
    rule,
    target_of,
)

__all__ = [
    "BUILTIN_BLOCKS",
    "AdvantageShapingConfig",
    "RolloutViewConfig",
    "SensitivityConfig",
    "TokenSelectionConfig",
]


#: the built-in block classes of each group (the examples an invalid ``_target_``'s error lists)
BUILTIN_BLOCKS: dict[str, list[str]] = {
    "sensitivity": [
        "papo.blocks.sensitivity_sampled.SampledTokenSensitivity",
        "papo.blocks.sensitivity_distribution.DistributionSensitivity",
    ],
    "token_selection": ["papo.blocks.token_selection.TokenSelection"],
    "advantage_shaping": [
        "papo.blocks.shaping_vppo.VppoTrajectoryShaping",
        "papo.blocks.shaping_fixed_range.FixedRangeTrajectoryShaping",
    ],
    "rollout_view": ["papo.blocks.base.RolloutView", "papo.blocks.rollout_view_noisy.NoisyRolloutView"],
}


def _base(name: str) -> Any:
    def base() -> type:
        import papo.blocks.base as blocks

        return getattr(blocks, name)

    return base


def _block_target(base: str, group: str) -> Any:
    return target_of(
        _base(base), f"built-in {group} blocks:", f"a {base}; built-in:", lambda: BUILTIN_BLOCKS[group]
    )


def _signal_names() -> list[str]:
    from papo.algos.visual_sensitivity import DISTRIBUTION_SIGNALS, SAMPLED_SIGNALS

    return [*SAMPLED_SIGNALS, *sorted(DISTRIBUTION_SIGNALS.names())]


def _selection_rules() -> list[str]:
    from papo.algos.token_selection import TOKEN_SELECTIONS

    return sorted(TOKEN_SELECTIONS.names())


def _decay_modes() -> tuple[str, ...]:
    from papo.algos.image_distortion import DECAY_MODES

    return DECAY_MODES


class SensitivityConfig(ConfigGroup):
    """``configs/sensitivity``: the per-token visual-sensitivity signal (a :class:`papo.blocks.base.SensitivitySignal`)."""

    target: _block_target("SensitivitySignal", "sensitivity") | None = Field(alias="_target_")
    kind: choice(_signal_names) = None  # type: ignore[assignment]
    chunk_size: PositiveInt = None  # type: ignore[assignment]


class TokenSelectionConfig(ConfigGroup):
    """``configs/token_selection``: which tokens keep their advantage (a :class:`papo.blocks.base.TokenSelector`)."""

    target: _block_target("TokenSelector", "token_selection") | None = Field(alias="_target_")
    rule: choice(_selection_rules) = None  # type: ignore[assignment]
    value: float = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _a_fraction_for_the_top_rules(self) -> TokenSelectionConfig:
        if self.rule and self.rule != "threshold" and self.value is not None and not 0 < self.value <= 1:
            raise rule(
                f"token_selection.value={self.value} must be a fraction in (0, 1] for rule {self.rule!r}"
            )
        return self


class AdvantageShapingConfig(ConfigGroup):
    """``configs/advantage_shaping``: the trajectory scale of the advantages (a :class:`papo.blocks.base.AdvantageShaper`)."""

    target: _block_target("AdvantageShaper", "advantage_shaping") | None = Field(alias="_target_")
    beta_min: Fraction = None  # type: ignore[assignment]
    beta_max: NonNegative = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _min_below_max(self) -> AdvantageShapingConfig:
        if self.beta_min is not None and self.beta_max is not None and self.beta_min > self.beta_max:
            raise rule(
                f"advantage_shaping.beta_min={self.beta_min} must be <= advantage_shaping.beta_max={self.beta_max}"
            )
        return self


class RolloutViewConfig(ConfigGroup):
    """``configs/rollout_view``: how a group of responses is sampled (a :class:`papo.blocks.base.RolloutView`)."""

    target: _block_target("RolloutView", "rollout_view") | None = Field(alias="_target_")
    num_noisy: Annotated[PositiveInt, Hint("null = half of the group")] | None = None
    initial_step: Annotated[int, Field(ge=0, le=999)] = None  # type: ignore[assignment]
    decay: choice(_decay_modes) = None  # type: ignore[assignment]
    coef: float = None  # type: ignore[assignment]
    mid_step: NonNegative = None  # type: ignore[assignment]
    mid_fraction: Annotated[Fraction, Hint("null = rollout_view.mid_step")] | None = None
    seed: int = None  # type: ignore[assignment]
