"""Typed schemas of the groups that define the RL update: ``algo``, ``loss`` (and its components), ``optim``.

One definition per key: its type, range or valid names. The defaults live in the YAML files of ``configs/``
(commented there); a key that a YAML may leave out has its default here. Rules that tie keys together are
model validators, named after what they check.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

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
    rule,
    target_of,
)

__all__ = [
    "GROUP_NORMALISED_ADVANTAGES",
    "SCHEDULER_NAMES",
    "SPLIT_INDEPENDENT_NORMALIZERS",
    "AlgoConfig",
    "DynamicSamplingConfig",
    "LossComponentConfig",
    "LossConfig",
    "OptimConfig",
    "OverlongConfig",
]


def _registry(name: str) -> Any:
    def names() -> list[str]:
        import papo.algos as algos

        return sorted(getattr(algos, name).names())

    return choice(names)


def _tuple(module: str, name: str) -> Any:
    def names() -> tuple[str, ...]:
        import importlib

        return getattr(importlib.import_module(module), name)

    return choice(names)


#: advantage estimators that normalise within a group of responses (they need >= 2 per prompt)
GROUP_NORMALISED_ADVANTAGES = ("grpo", "rloo", "dr_grpo")
#: ``algo.loss_normalizer`` values under which the update does not depend on how a mini-batch is split into
#: micro-batches. Token-budget micro-batches (``algo.micro_batch_tokens``) are allowed only with these: under a
#: per-micro-batch mean the budget's split would change the update.
SPLIT_INDEPENDENT_NORMALIZERS: tuple[str, ...] = ("global_token_mean",)


class DynamicSamplingConfig(ConfigGroup):
    """``algo.dynamic_sampling``: DAPO's filter and refill (papo.rollout.dynamic_sampling)."""

    enabled: bool
    low: Fraction
    high: Fraction
    max_tries: PositiveInt
    batch_prompts: Annotated[PositiveInt, Hint("null = one data batch")] | None
    keep_all_when_none_pass: bool = False

    @model_validator(mode="after")
    def _low_below_high(self) -> DynamicSamplingConfig:
        if not self.low < self.high:
            raise rule(f"algo.dynamic_sampling low={self.low}, high={self.high}: need 0 <= low < high <= 1")
        return self


class OverlongConfig(ConfigGroup):
    """``algo.overlong``: DAPO's soft overlong penalty."""

    enabled: bool
    buffer_length: PositiveInt
    penalty_factor: NonNegative


class AlgoConfig(ConfigGroup):
    """``configs/algo``: advantage estimator, policy loss, reference KL and the update's batching."""

    name: str
    advantage: _registry("ADVANTAGE_ESTIMATORS")
    policy_loss: _registry("POLICY_LOSSES")
    clip_low: Annotated[float, Field(ge=0, lt=1)]
    clip_high: NonNegative
    dual_clip: Annotated[float, Field(gt=1), Hint("null disables")] | None
    agg_mode: _tuple("papo.algos", "AGG_MODES")
    loss_normalizer: _tuple("papo.algos", "LOSS_NORMALIZERS")
    norm_len: Annotated[PositiveInt, Hint("null = rollout.max_new_tokens")] | None
    group_size: PositiveInt
    kl_coef: NonNegative
    kl_estimator: _registry("KL_ESTIMATORS")
    kl_in: Literal["loss", "reward"]
    dynamic_sampling: DynamicSamplingConfig
    overlong: OverlongConfig
    ppo_epochs: PositiveInt
    num_minibatches: PositiveInt
    shuffle_minibatches: bool
    micro_batch_size: PositiveInt
    micro_batch_tokens: Annotated[PositiveInt, Hint("null = algo.micro_batch_size rows at a time")] | None
    logprob_chunk_tokens: Annotated[PositiveInt, Hint("null = the model's full-logits forward")] | None

    @model_validator(mode="after")
    def _groups_of_two(self) -> AlgoConfig:
        if self.group_size < 2 and self.advantage in GROUP_NORMALISED_ADVANTAGES:
            raise rule(
                f"algo.group_size={self.group_size}: group-normalised advantages need >= 2 responses per prompt"
            )
        return self

    @model_validator(mode="after")
    def _token_budget_needs_a_split_independent_normalizer(self) -> AlgoConfig:
        budget, normalizer = self.micro_batch_tokens, self.loss_normalizer
        if budget is not None and normalizer not in SPLIT_INDEPENDENT_NORMALIZERS:
            raise rule(
                f"algo.micro_batch_tokens={budget} with algo.loss_normalizer={normalizer!r}: that normaliser "
                "averages each micro-batch on its own, so a token-budget split would change the update; set "
                "algo.micro_batch_tokens=null, or algo.loss_normalizer to one of "
                f"{list(SPLIT_INDEPENDENT_NORMALIZERS)}"
            )
        return self

    @property
    def kl_in_reward(self) -> bool:
        """The reference KL is a penalty on the reward (``kl_in: reward`` with a positive coefficient)."""
        return self.kl_in == "reward" and self.kl_coef > 0


def _loss_components() -> type:
    from papo.losses.base import LossComponent

    return LossComponent


BUILTIN_COMPONENTS = [
    "papo.losses.perception_kl.PerceptionKLLoss",
    "papo.losses.double_entropy.DoubleEntropyLoss",
]
Schedule = Literal["fixed", "linear"]


class LossComponentConfig(ConfigGroup):
    """``loss.components.<name>``: a :class:`papo.losses.base.LossComponent` built by Hydra; the keys the
    built-in components share are checked here, any other key goes to the class as it is."""

    target: target_of(
        _loss_components,
        "valid loss components:",
        "a LossComponent subclass; e.g.",
        lambda: BUILTIN_COMPONENTS,
    ) = Field(alias="_target_")
    gamma: NonNegative = None  # type: ignore[assignment]
    eta_real: NonNegative = None  # type: ignore[assignment]
    eta_masked: NonNegative = None  # type: ignore[assignment]
    anneal_fraction: OpenFraction = None  # type: ignore[assignment]
    token_clip: Positive | None = None
    top_fraction: OpenFraction | None = None
    gamma_start: NonNegative | None = None
    gamma_end: NonNegative = None  # type: ignore[assignment]
    kind: _registry("KL_ESTIMATORS") = None  # type: ignore[assignment]
    direction: Literal["masked_as_ref", "real_as_ref"] = None  # type: ignore[assignment]
    top_fraction_scope: _tuple("papo.algos.perception", "TOP_FRACTION_SCOPES") = None  # type: ignore[assignment]
    schedule: Schedule = None  # type: ignore[assignment]

    @model_validator(mode="before")
    @classmethod
    def _has_a_target(cls, data: Any) -> Any:
        if isinstance(data, dict) and "_target_" not in data:
            raise about(f" has no _target_; e.g. {BUILTIN_COMPONENTS}")
        return data

    @property
    def needs_masked(self) -> bool:
        """Whether the component's class declares that it needs the masked-image log-probs."""
        from hydra.utils import get_class

        return bool(getattr(get_class(self.target), "needs_masked", False))


class LossConfig(ConfigGroup):
    """``configs/loss``: the loss-level coefficients the components copy, and the components themselves."""

    name: str
    gamma: NonNegative = None  # type: ignore[assignment]
    eta_real: NonNegative = None  # type: ignore[assignment]
    eta_masked: NonNegative = None  # type: ignore[assignment]
    schedule: Schedule = None  # type: ignore[assignment]
    gamma_start: Annotated[NonNegative, Hint("null = loss.gamma")] | None = None
    gamma_end: NonNegative = None  # type: ignore[assignment]
    anneal_fraction: OpenFraction = None  # type: ignore[assignment]
    mask_branch_grad: bool = None  # type: ignore[assignment]
    components: dict[str, LossComponentConfig] | None = None

    @field_validator("components", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


SCHEDULER_NAMES = ("constant", "constant_with_warmup", "linear", "cosine")


class OptimizerNode(ConfigGroup):
    """``optim.optimizer``: a ``_partial_`` optimiser class, called with the trainable parameters."""

    target: str = Field(alias="_target_")


class SchedulerNode(ConfigGroup):
    """``optim.scheduler``: a ``_partial_`` LR-scheduler factory, called with the optimiser
    (``transformers.get_scheduler`` by name)."""

    target: str = Field(alias="_target_")
    name: Literal[SCHEDULER_NAMES] | None = None  # type: ignore[valid-type]


class OptimConfig(ConfigGroup):
    """``optim``: the optimiser and LR schedule of the RL stage, gradient clipping, the non-finite-step guard."""

    lr: Positive
    weight_decay: NonNegative
    betas: list[Annotated[float, Field(ge=0, lt=1)]]
    grad_clip: Positive
    max_consecutive_skips: Annotated[PositiveInt, Hint("null = never stop")] | None
    warmup_steps: NonNegativeInt
    optimizer: OptimizerNode
    scheduler: SchedulerNode
