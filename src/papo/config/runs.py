"""The whole config of a run: the training run of ``src/train.py`` and the evaluation of ``src/eval.py``.

The groups are fields in the order their problems are reported; the rules between groups (a loss that needs
masked images with masking off, an overlong buffer longer than the responses) are model validators here.
"""

from __future__ import annotations

from pydantic import model_validator

from papo.config.groups import (
    CallbacksConfig,
    DataConfig,
    EvalConfig,
    MaskingConfig,
    ModelConfig,
    RewardConfig,
    RolloutConfig,
    TrainerConfig,
    WarmStartConfig,
)
from papo.config.training import AlgoConfig, LossConfig, OptimConfig
from papo.config.types import ConfigGroup, PositiveInt, rule

__all__ = ["EvalRunConfig", "TrainRunConfig"]


class TrainRunConfig(ConfigGroup):
    """configs/train.yaml, composed."""

    algo: AlgoConfig
    loss: LossConfig
    masking: MaskingConfig | None = None
    rollout: RolloutConfig
    reward: RewardConfig
    optim: OptimConfig
    data: DataConfig
    model: ModelConfig
    trainer: TrainerConfig
    callbacks: CallbacksConfig | None = None
    warm_start: WarmStartConfig
    seed: int
    ckpt_path: str | None = None
    validate_before: bool = True
    validate_after: bool = True
    num_threads: PositiveInt | None = None
    optimized_metric: str | None = None
    skip_finished: bool = False

    @property
    def masking_enabled(self) -> bool:
        return self.masking is not None and self.masking.enabled

    @model_validator(mode="after")
    def _masked_images_for_the_loss(self) -> TrainRunConfig:
        components = self.loss.components or {}
        need = [f"loss.components.{name}" for name, c in components.items() if c.needs_masked]
        if need and not self.masking_enabled:
            raise rule(
                f"{', '.join(need)} (loss={self.loss.name}) needs masked images but masking is disabled; "
                "choose masking=random_patch (or another view), or loss=none"
            )
        return self

    @model_validator(mode="after")
    def _overlong_buffer_inside_the_responses(self) -> TrainRunConfig:
        o, max_new = self.algo.overlong, self.rollout.max_new_tokens
        if o.enabled and not o.buffer_length < max_new:
            raise rule(
                f"algo.overlong.buffer_length={o.buffer_length} must be < rollout.max_new_tokens={max_new}"
            )
        return self


class EvalRunConfig(ConfigGroup):
    """configs/eval.yaml, composed: the groups the evaluation uses (``algo`` / ``loss`` / ``optim`` / ``trainer``
    are composed for the experiment presets, not used, so not checked)."""

    eval: EvalConfig
    rollout: RolloutConfig
    masking: MaskingConfig | None = None
    reward: RewardConfig
    data: DataConfig
    model: ModelConfig
    warm_start: WarmStartConfig
    seed: int
    ckpt_path: str | None = None
    num_threads: PositiveInt | None = None
