"""The whole config of a run: the training run of ``src/train.py`` and the evaluation of ``src/eval.py``.

The groups are fields in the order their problems are reported; the rules between groups (a loss that needs
masked images with masking off, an overlong buffer longer than the responses) are model validators here.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from papo.config.blocks import (
    AdvantageShapingConfig,
    RolloutViewConfig,
    SensitivityConfig,
    TokenSelectionConfig,
)
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

#: a seed numpy accepts (``seed_everything`` seeds numpy with it): [0, 2**32 - 1]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


def _rollouts_sample(rollout: RolloutConfig, why: str) -> None:
    """``rollout.temperature`` divides the logits of every log-prob pass at the rollout temperature: 0 makes
    them non-finite (training: every step skipped; evaluation: ``kl_prcp`` is NaN)."""
    if rollout.temperature <= 0:
        raise rule(
            f"rollout.temperature={rollout.temperature:g} must be > 0: {why} divide the logits by it; greedy "
            "decoding is rollout.val_temperature=0 (validation) or eval.samples=0 (src/eval.py)"
        )


def _check_val_sets(value: Any) -> Any:
    """``val_sets``: every entry's keys, answer format and protocol (papo.evaluation.val_sets.parse_val_sets)."""
    from papo.evaluation.val_sets import parse_val_sets

    if value is None:
        return value
    if not isinstance(value, dict):
        raise rule(f"val_sets must be a mapping {{name: entry}}, got {type(value).__name__}")
    try:
        parse_val_sets(value)
    except ValueError as err:
        raise rule(str(err)) from None
    return value


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
    # the method blocks (docs/methods.md); absent or _target_ null = no block
    sensitivity: SensitivityConfig | None = None
    token_selection: TokenSelectionConfig | None = None
    advantage_shaping: AdvantageShapingConfig | None = None
    rollout_view: RolloutViewConfig | None = None
    seed: Seed
    data_seed: Seed = 0
    ckpt_path: str | None = None
    validate_before: bool = True
    validate_after: bool = True
    num_threads: PositiveInt | None = None
    optimized_metric: str | None = None
    skip_finished: bool = False
    # several named validation sets (configs/val_sets), checked by papo.evaluation.val_sets
    val_sets: dict[str, Any] | None = None

    @field_validator("val_sets", mode="before")
    @classmethod
    def _val_sets(cls, value: Any) -> Any:
        return _check_val_sets(value)

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
    def _shapers_have_a_signal_and_the_signal_a_view(self) -> TrainRunConfig:
        def on(block: ConfigGroup | None) -> bool:
            return block is not None and block.target is not None

        shapers = [g for g in ("token_selection", "advantage_shaping") if on(getattr(self, g))]
        if shapers and not on(self.sensitivity):
            raise rule(
                f"{' and '.join(shapers)} need a visual-sensitivity signal, but sensitivity=none; choose one of "
                "configs/sensitivity (e.g. sensitivity=k3)"
            )
        if shapers and not self.masking_enabled:
            raise rule(
                "sensitivity compares the real image with the masked view, but masking is disabled; choose "
                "masking=random_patch (or another view)"
            )
        return self

    @model_validator(mode="after")
    def _a_clean_response_in_every_group(self) -> TrainRunConfig:
        view, group = self.rollout_view, self.algo.group_size
        noisy = None if view is None or view.target is None else view.num_noisy
        if noisy is not None and not noisy < group:
            raise rule(
                f"rollout_view.num_noisy={noisy} must be below algo.group_size={group}: at least one clean "
                "response per group carries the clean image into the update"
            )
        return self

    @model_validator(mode="after")
    def _every_minibatch_has_rows(self) -> TrainRunConfig:
        """An empty mini-batch still steps the optimiser and the LR schedule (a wasted step counted as one)."""
        ds, prompts = self.algo.dynamic_sampling, self.data.batch_size
        if ds.enabled and ds.batch_prompts is not None:
            prompts = ds.batch_prompts
        if prompts is not None and self.algo.num_minibatches > prompts * self.algo.group_size:
            raise rule(
                f"algo.num_minibatches={self.algo.num_minibatches} must be <= the responses of an update batch "
                f"({prompts} prompts x algo.group_size={self.algo.group_size} = {prompts * self.algo.group_size}"
                " per rank): the extra mini-batches are empty, yet each counts as an optimiser step"
            )
        return self

    @model_validator(mode="after")
    def _rollouts_sample(self) -> TrainRunConfig:
        _rollouts_sample(self.rollout, "the log-prob passes of the update (old, masked, reference)")
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
    seed: Seed
    data_seed: Seed = 0
    ckpt_path: str | None = None
    num_threads: PositiveInt | None = None
    val_sets: dict[str, Any] | None = None

    @field_validator("val_sets", mode="before")
    @classmethod
    def _val_sets(cls, value: Any) -> Any:
        return _check_val_sets(value)

    @model_validator(mode="after")
    def _kl_at_a_sampling_temperature(self) -> EvalRunConfig:
        if self.eval.kl_prcp:
            _rollouts_sample(self.rollout, "the perception-KL passes (eval.kl_prcp=true)")
        return self
