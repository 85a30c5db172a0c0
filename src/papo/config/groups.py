"""Typed schemas of the groups around the update: ``rollout``, ``reward``, ``masking``, ``data``, ``model``,
``trainer``, ``callbacks``, ``warm_start`` and ``eval`` (configs/eval.yaml).

As in :mod:`papo.config.training`: one definition per key, defaults in the YAML files unless a YAML may leave
the key out. Checks that need the machine (a local data file exists, an optional package is installed) are
validators of the key they concern, so they run with every other check, before anything loads.
"""

from __future__ import annotations

import importlib.util
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from papo.config.types import (
    ConfigGroup,
    Fraction,
    Hint,
    NonNegative,
    NonNegativeInt,
    OpenFraction,
    Positive,
    PositiveInt,
    about,
    choice,
    problem,
    rule,
    target_of,
)

__all__ = [
    "CallbacksConfig",
    "DataConfig",
    "EvalConfig",
    "MaskingConfig",
    "ModelConfig",
    "RewardConfig",
    "RolloutConfig",
    "TrainerConfig",
    "WarmStartConfig",
]


def _available(target: str) -> str:
    """A ``_target_`` whose class needs an optional package: its ``check_available()`` raises the install hint."""
    from hydra.utils import get_object

    try:
        obj = get_object(target)
    except Exception:
        raise problem(" cannot be imported") from None
    check = getattr(obj, "check_available", None)
    if check is not None:
        try:
            check()
        except ImportError as err:
            raise rule(str(err)) from None
    return target


class BackendNode(ConfigGroup):
    """``rollout.backend``: a ``_partial_`` rollout backend (papo.rollout.backends), built with the policy's path."""

    target: Annotated[str, AfterValidator(_available)] = Field(alias="_target_")


def _decoders() -> tuple[str, ...]:
    from papo.rollout.hf_generate import DECODERS

    return DECODERS


class RolloutConfig(ConfigGroup):
    """``configs/rollout``: how responses are sampled in training and in validation."""

    backend: BackendNode
    decoder: choice(_decoders)
    temperature: NonNegative
    top_p: OpenFraction
    top_k: Annotated[NonNegativeInt, Hint("0 disables")]
    max_new_tokens: PositiveInt
    min_new_tokens: NonNegativeInt
    max_prompt_length: PositiveInt
    generation_batch_size: PositiveInt
    val_temperature: NonNegative
    val_samples: PositiveInt
    val_sampled_k: Annotated[NonNegativeInt, Hint("0 disables")]
    val_sampled_temperature: NonNegative
    val_kl_prcp: bool
    val_kl_max_prompts: Annotated[PositiveInt, Hint("null = every val prompt")] | None
    filter_overlong_prompts: bool = True


def _reward_names() -> list[str]:
    from papo.rewards import REWARD_FUNCTIONS

    return list(REWARD_FUNCTIONS.names())


class RewardConfig(ConfigGroup):
    """``configs/reward``: the reward (a registered name, a user function ``fn`` or weighted ``components``;
    papo.rewards.components) and how its failures are handled."""

    name: choice(_reward_names)
    format_weight: Fraction
    timeout_s: Positive
    on_error: Literal["raise", "zero"]

    @model_validator(mode="after")
    def _user_functions_and_components(self) -> RewardConfig:
        from papo.rewards.components import reward_config_problems

        problems = reward_config_problems(self.model_dump())
        if problems:
            raise rule(problems)
        return self

    def reward_fn(self) -> Any:
        """The reward of this group: its weighted components (one when only ``name`` or ``fn`` is set)."""
        from papo.rewards import build_reward_fn

        return build_reward_fn(self.model_dump())


def _masking_views() -> tuple[Any, ...]:
    from papo.data.masking import ImageView, no_masking

    return (ImageView, no_masking)


def _view_names() -> list[str]:
    from papo.data.masking import VIEWS

    return [*sorted(VIEWS), "none"]


class MaskingConfig(ConfigGroup):
    """``configs/masking``: the masked view of each image (an :class:`papo.data.masking.ImageView`)."""

    target: target_of(
        _masking_views,
        "valid masking views (masking=...):",
        "an ImageView; valid masking views:",
        _view_names,
    ) = Field(alias="_target_")
    mask_prob: Fraction = None  # type: ignore[assignment]
    ratio: Fraction = None  # type: ignore[assignment]
    patch_size: PositiveInt = None  # type: ignore[assignment]
    std: NonNegative = None  # type: ignore[assignment]
    # one view per response (the group size per prompt) instead of one per prompt
    per_response: bool = False

    @property
    def enabled(self) -> bool:
        """False for ``masking=none`` (no masked view is built)."""
        return not self.target.endswith("no_masking")


def _local_source(value: Any, info: ValidationInfo) -> Any:
    """A local file, glob or folder must exist and hold data (hub ids are left to the loader); a source that
    several splits share is checked once."""
    from papo.data.hub import resolve_source

    if value is None:
        return value
    seen = (info.context or {}).setdefault("sources", set())
    if str(value) in seen:
        return value
    seen.add(str(value))
    try:
        resolve_source(value)
    except (FileNotFoundError, ValueError) as err:
        raise problem(f": {err}") from None
    return value


class SplitConfig(ConfigGroup):
    """``data.<split>_dataset``: a dataset builder (Hydra target); ``source`` for hub / local data."""

    target: str | None = Field(default=None, alias="_target_")
    source: Annotated[str | list[str], AfterValidator(_local_source)] | None = None

    @field_validator("source", mode="before")
    @classmethod
    def _given(cls, value: Any) -> Any:
        if value == "???":
            raise about(" is required: a local file, glob or folder (or a hub dataset id)")
        return value


class TrainSplitConfig(SplitConfig):
    """The train split: a hub / local loader (``load_split``) needs its ``source``."""

    @model_validator(mode="after")
    def _source_required(self) -> TrainSplitConfig:
        if self.source is None and str(self.target or "").endswith("load_split"):
            raise rule(
                "data.train_dataset.source is required: a local file, glob or folder (or a hub dataset id)"
            )
        return self


class DataConfig(ConfigGroup):
    """``configs/data``: the datamodule (a Hydra target); the keys checked here are the ones every dataset has."""

    train_dataset: TrainSplitConfig | None = None
    val_dataset: SplitConfig | None = None
    test_dataset: SplitConfig | None = None
    batch_size: PositiveInt = None  # type: ignore[assignment]
    val_batch_size: PositiveInt = None  # type: ignore[assignment]
    num_workers: NonNegativeInt = None  # type: ignore[assignment]
    max_pixels: PositiveInt = None  # type: ignore[assignment]
    max_aspect_ratio: Annotated[float, Field(gt=1)] | None = None
    on_bad_row: Literal["error", "skip"] = None  # type: ignore[assignment]


def _families() -> tuple[str, ...]:
    from papo.models.stand_in import FAMILIES

    return FAMILIES


class LoraConfig(ConfigGroup):
    """``model.lora``: rank > 0 trains LoRA adapters (needs peft) instead of every weight."""

    rank: Annotated[NonNegativeInt, Hint("0 = full fine-tune")] | None = None

    @model_validator(mode="after")
    def _peft_installed(self) -> LoraConfig:
        if (self.rank or 0) > 0 and importlib.util.find_spec("peft") is None:
            raise rule("model.lora.rank > 0 needs peft, which is not installed: pip install 'papo[peft]'")
        return self


class ModelConfig(ConfigGroup):
    """``configs/model``: which policy is loaded and how."""

    family: choice(_families) = "qwen2_5_vl"
    path: str | None = None
    stand_in: Literal["tiny", "small"] | None = None
    size: str = "tiny"
    seed: int = 0
    dtype: str = "float32"
    attn_implementation: str | None = "sdpa"
    gradient_checkpointing: bool = False
    freeze_vision_tower: bool = False
    min_pixels: PositiveInt | None = None
    max_pixels: PositiveInt | None = None
    trust_remote_code: bool = False
    lora: LoraConfig | None = None
    cache_dir: str | None = None

    def load_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`papo.models.loading.load_policy`."""
        lora = self.lora.model_dump(by_alias=True) if self.lora is not None else None
        return dict(
            dtype=self.dtype,
            attn_implementation=self.attn_implementation,
            trust_remote_code=self.trust_remote_code,
            gradient_checkpointing=self.gradient_checkpointing,
            freeze_vision_tower=self.freeze_vision_tower,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            lora=lora,
        )


def _strategy_available(strategy: Any) -> Any:
    from papo.utils.distributed import check_strategy_available

    try:
        check_strategy_available(strategy)
    except ImportError as err:
        raise rule(str(err)) from None
    return strategy


def _not_zero(value: Any) -> Any:
    if value is not None and not isinstance(value, bool) and value == 0:
        raise problem(" must be an integer >= 1, a fraction in (0, 1] or a duration 'DD:HH:MM:SS', or null")
    return value


class TrainerConfig(ConfigGroup):
    """``configs/trainer``: Lightning's Trainer (a Hydra target); the RL step count and the strategy."""

    max_steps: PositiveInt
    strategy: Annotated[Any, AfterValidator(_strategy_available)] = None
    # 0 passes Lightning's own check, then divides by zero at the first step; other values: Lightning's check
    val_check_interval: Annotated[Any, AfterValidator(_not_zero)] = None


class ModelCheckpointConfig(ConfigGroup):
    """``callbacks.model_checkpoint``: Lightning's ModelCheckpoint."""

    every_n_train_steps: Annotated[NonNegativeInt, Hint("0 = off")] = None  # type: ignore[assignment]
    save_top_k: Annotated[int, Field(ge=-1), Hint("-1 = keep all")] = None  # type: ignore[assignment]


class CallbacksConfig(ConfigGroup):
    """``configs/callbacks``: each entry a Hydra target; the checkpoint callback's counts are checked."""

    model_checkpoint: ModelCheckpointConfig | None = None


class WarmStartConfig(ConfigGroup):
    """``configs/warm_start``: the supervised warm start before RL (papo.warm_start)."""

    enabled: bool
    max_steps: PositiveInt = None  # type: ignore[assignment]
    batch_size: PositiveInt = None  # type: ignore[assignment]
    lr: Positive = None  # type: ignore[assignment]
    data_fraction: OpenFraction = None  # type: ignore[assignment]
    continue_steps: NonNegativeInt = None  # type: ignore[assignment]


class EvalConfig(ConfigGroup):
    """``eval`` of configs/eval.yaml: the protocols of ``src/eval.py``."""

    split: Literal["train", "val", "test"]
    samples: Annotated[NonNegativeInt, Hint("0 = greedy only")]
    temperature: Positive
    top_p: OpenFraction
    top_k: Annotated[NonNegativeInt, Hint("0 disables")]
    greedy: bool
    masked: bool
    kl_prcp: bool
    limit: Annotated[PositiveInt, Hint("null = all")] | None
    max_new_tokens: Annotated[PositiveInt, Hint("null = rollout.max_new_tokens")] | None
    num_samples_shown: NonNegativeInt
    device: str
    output_dir: str | None
    write_to_run_dir: bool

    @model_validator(mode="after")
    def _something_to_evaluate(self) -> EvalConfig:
        if not self.greedy and self.samples == 0:
            raise rule(
                f"eval.greedy={self.greedy} with eval.samples={self.samples}: nothing to evaluate; "
                "set eval.greedy=true and/or eval.samples >= 1"
            )
        return self
