"""Rewards from config: one reward or several weighted ones, each logged under its own name.

What it implements:

* :func:`component_specs` -- the ``reward`` config group as a list of :class:`RewardComponent`: the
  registered reward ``reward.name`` (the built-in ``math`` by default), or the user function ``reward.fn``
  (``path/to/file.py:function`` / ``package.module:function``), or every entry of ``reward.components``
  (``name -> {fn, weight, images, timeout_s, kwargs}``, where ``fn`` is either of the above).
* :class:`CombinedReward` -- the reward function the rollout calls per response:
  ``overall = sum_k weight_k * score_k``; every component's score is also returned under its name (and a
  dict-returning component's other entries as ``<name>/<entry>``), which the trainer logs as
  ``train/reward/<name>`` and ``val/reward/<name>``. ``accuracy`` and ``format`` (what DAPO's filter and the
  ``val/acc`` / ``val/format`` metrics read) come from the first component that reports them; without one,
  ``accuracy`` is the combined ``overall`` and ``format`` the built-in ``<think>``/``\\boxed{}`` check.
* :func:`row_fields` -- the per-response fields a reward function may take by name: ``question`` (the
  dataset's problem text), ``prompt`` (the templated prompt), ``uid``, ``task_type``,
  ``vision_dependency``, any other per-prompt column of the batch, and ``images`` (passed only to components
  with ``images: true``).
* :func:`reward_config_problems` -- the config check (one line per problem, before any model loads).

Registered rewards (package code, e.g. ``math``) run in the trainer's process and receive
``format_weight``/``timeout_s`` as today; user functions run in the ``user_reward`` worker process of
:mod:`papo.rewards.grading_worker` under a deadline (``timeout_s``, default ``reward.timeout_s``): past it, or
when the function raises or returns something that is not a number / a dict with ``overall``, the item fails
and ``reward.on_error`` decides (``raise``: the run stops naming the item; ``zero``: it scores 0, counted).

Differences from EasyR1 / verl / TRL: EasyR1 and verl load one ``file.py:function`` (EasyR1's returns a dict
with ``overall``, verl's a float or a dict with ``score``), TRL takes a list of functions with
``reward_weights``; here one config does both, per response (no batch-level functions), with a deadline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from papo.rewards.format import format_reward
from papo.rewards.grading_worker import run_isolated
from papo.rewards.scoring import REWARD_FUNCTIONS
from papo.rewards.user_function import (
    SPEC_FORMS,
    RewardFunctionError,
    as_scores,
    call_user_function,
    function_name,
    is_user_spec,
    load_function,
    signature_problems,
)

__all__ = [
    "RESERVED_NAMES",
    "ROW_FIELDS",
    "USER_POOL",
    "CombinedReward",
    "RewardComponent",
    "build_reward_fn",
    "component_specs",
    "reward_config_problems",
    "row_fields",
]

ROW_FIELDS = ("question", "prompt", "uid", "task_type", "vision_dependency")
"""Row fields every batch carries (``question`` is the dataset's ``problem`` column)."""
RESERVED_NAMES = ("overall", "accuracy", "format", "mean", "errors")
"""Names a component cannot take: they are keys of the combined result or of ``train/reward/*``."""
USER_POOL = "user_reward"
"""The worker pool of user functions (:func:`papo.rewards.grading_worker.run_isolated`)."""

_NOT_FIELDS = ("answer", "images_masked", "images_masked_rows", "skipped_rows")
_COMPONENT_KEYS = ("fn", "weight", "images", "timeout_s", "kwargs")


class RewardComponentError(RuntimeError):
    """A reward component failed on one response (the message names the component and the cause)."""


@dataclass(frozen=True)
class RewardComponent:
    """One weighted reward: a registered function (in this process) or a user function (worker process).

    ``accepts`` is the set of row-field names the function takes (``None``: all of them, it has ``**kwargs``).
    A user function is held by its spec only, so the component pickles (spawned processes).
    """

    name: str
    weight: float
    fn: Callable[..., Any] | None  # a registered reward; None for a user function (loaded in its worker)
    spec: str | None = None  # user function spec; None for a registered reward
    kwargs: dict[str, Any] = field(default_factory=dict)
    images: bool = False
    timeout_s: float = 10.0
    accepts: frozenset[str] | None = None

    def score(self, response: str, truth: Any, fields: Mapping[str, Any]) -> dict[str, float]:
        """The component's scores of one response (``{"overall": ..., ...}``, unweighted)."""
        call = dict(self.kwargs)
        for key, value in fields.items():
            if key == "images" and not self.images:
                continue
            if self.accepts is None or key in self.accepts:
                call[key] = value
        if self.fn is not None:  # registered reward: package code, in this process
            return as_scores(self.fn(response, truth, **call))
        try:
            finished, scores = run_isolated(
                call_user_function, (self.spec, response, truth, call), self.timeout_s, pool=USER_POOL
            )
        except Exception as err:
            raise RewardComponentError(
                f"reward component {self.name!r} ({self.spec}): {type(err).__name__}: {err}"
            ) from err
        if not finished:
            raise RewardComponentError(
                f"reward component {self.name!r} ({self.spec}) ran past its {self.timeout_s:g} s deadline "
                "(timeout_s) or its worker process died"
            )
        assert scores is not None
        return scores


class CombinedReward:
    """``fn(response, truth, **fields) -> {"overall", "accuracy", "format", <name>, <name>/<entry>, ...}``.

    ``overall = sum_k weight_k * score_k`` (with one component of weight 1: that component's own result).
    """

    def __init__(self, components: Sequence[RewardComponent]) -> None:
        if not components:
            raise ValueError("a reward needs at least one component")
        self.components = list(components)

    @property
    def names(self) -> list[str]:
        """The components' names, in config order."""
        return [c.name for c in self.components]

    def __call__(self, response: str, truth: Any, **fields: Any) -> dict[str, float]:
        overall = 0.0
        accuracy: float | None = None
        fmt: float | None = None
        terms: dict[str, float] = {}
        for component in self.components:
            scores = component.score(response, truth, fields)
            overall += component.weight * scores["overall"]
            terms[component.name] = scores["overall"]
            terms.update({f"{component.name}/{k}": v for k, v in scores.items() if k != "overall"})
            if accuracy is None and "accuracy" in scores:
                accuracy = scores["accuracy"]
            if fmt is None and "format" in scores:
                fmt = scores["format"]
        return {
            "overall": overall,
            "accuracy": overall if accuracy is None else accuracy,
            "format": format_reward(response) if fmt is None else fmt,
            **terms,
        }

    def __repr__(self) -> str:
        parts = [f"{c.weight:g} * {c.name}" for c in self.components]
        return f"CombinedReward({' + '.join(parts)})"


def row_fields(batch: Mapping[str, Any], prompt_index: Sequence[int]) -> list[dict[str, Any]]:
    """The fields a reward function may take, one dict per response (``prompt_index[i]``: its prompt).

    Every per-prompt list of the batch except the answer and the masked images, ``problem`` under the name
    ``question``; ``images`` is passed on only to components that ask for it.
    """
    n = len(batch["answer"])
    columns = {
        ("question" if key == "problem" else key): value
        for key, value in batch.items()
        if key not in _NOT_FIELDS and isinstance(value, list) and len(value) == n
    }
    return [{key: value[i] for key, value in columns.items()} for i in prompt_index]


def _container(cfg: Mapping[str, Any] | DictConfig | None) -> dict[str, Any]:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
    return dict(cfg)


def _missing(value: Any) -> bool:
    return value is None or value == "???"


def _accepts(fn: Callable[..., Any]) -> frozenset[str] | None:
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


def _component(
    name: str, fn_name: str, entry: Mapping[str, Any], reward: Mapping[str, Any]
) -> RewardComponent:
    """One component from its config entry (``fn`` = ``fn_name``); raises RewardFunctionError/ValueError."""
    timeout_s = float(entry.get("timeout_s") or reward.get("timeout_s") or 10.0)
    kwargs = dict(entry.get("kwargs") or {})
    images = bool(entry.get("images", False))
    weight = float(entry.get("weight", 1.0))
    if is_user_spec(fn_name):
        accepts = _accepts(load_function(fn_name))  # loaded here for its signature; called in the worker
        return RewardComponent(name, weight, None, fn_name, kwargs, images, timeout_s, accepts)
    fn = REWARD_FUNCTIONS[fn_name]
    # registered rewards receive the reward group's options, as the built-in math reward always has
    base = {"format_weight": reward.get("format_weight", 0.1), "timeout_s": timeout_s}
    return RewardComponent(name, weight, fn, None, {**base, **kwargs}, images, timeout_s, _accepts(fn))


def _entries(reward: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(component name, fn, entry)`` for each component the reward config describes."""
    components = reward.get("components") or {}
    if components:
        return [
            (str(name), str((entry or {}).get("fn")), dict(entry or {})) for name, entry in components.items()
        ]
    fn = reward.get("fn")
    if not _missing(fn):
        entry = {"images": reward.get("images", False), "kwargs": reward.get("kwargs") or {}}
        return [(function_name(str(fn)), str(fn), entry)]
    return [(str(reward.get("name", "math")), str(reward.get("name", "math")), {})]


def component_specs(reward_cfg: Mapping[str, Any] | DictConfig) -> list[RewardComponent]:
    """The components of the ``reward`` config group (see the module docstring).

    Raises:
        RewardFunctionError: a user function that cannot be loaded.
        papo.rewards.UnknownRewardFunctionError: an unknown registered name.
    """
    reward = _container(reward_cfg)
    return [_component(name, fn, entry, reward) for name, fn, entry in _entries(reward)]


def build_reward_fn(reward_cfg: Mapping[str, Any] | DictConfig) -> CombinedReward:
    """The reward function of the ``reward`` config group (what the rollout calls per response)."""
    return CombinedReward(component_specs(reward_cfg))


def _number_problem(key: str, value: Any, lo_open: bool = False) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and (value > 0 if lo_open else True):
        return None
    return f"{key}={value!r} must be a number" + (" > 0" if lo_open else "")


def reward_config_problems(reward_cfg: Mapping[str, Any] | DictConfig | None) -> list[str]:
    """Every problem of the ``reward`` config group, one line each, naming the key (empty when valid).

    Checks the registered name, the user function (file, module, function, signature), the components
    (names, weights, options). Loads user files/modules (the user's own, trusted code), never calls them.
    """
    if isinstance(reward_cfg, DictConfig):
        try:
            reward = _container(reward_cfg)
        except MissingMandatoryValue:  # pragma: no cover - to_container keeps '???' as a string
            reward = {}
    else:
        reward = _container(reward_cfg)
    problems: list[str] = []
    components = reward.get("components") or {}
    fn = reward.get("fn")
    if "fn" in reward and fn == "???":
        problems.append(f"reward.fn is required with reward=custom: {SPEC_FORMS}")
        return problems
    if components and not _missing(fn):
        problems.append(
            "reward.fn and reward.components are both set; set one (add the function as a component)"
        )
        return problems
    if not isinstance(components, Mapping):
        return [
            f"reward.components must be a mapping name -> {{fn, weight, ...}}, got {type(components).__name__}"
        ]
    if components:
        for name, entry in components.items():
            problems += _component_problems(f"reward.components.{name}", str(name), entry, reward)
    elif not _missing(fn):
        problems += _fn_problems(
            "reward.fn", str(fn), reward.get("images", False), reward.get("kwargs") or {}
        )
        if not problems:
            name = function_name(str(fn))
            if name in RESERVED_NAMES:
                problems.append(
                    f"reward.fn={fn!r}: the function's name {name!r} is reserved ({list(RESERVED_NAMES)}); "
                    "name it through reward.components"
                )
    else:
        name = reward.get("name", "math")
        if name not in REWARD_FUNCTIONS:
            problems.append(f"reward.name={name!r} is unknown; valid: {REWARD_FUNCTIONS.names()}")
    return problems


def _fn_problems(key: str, spec: str, images: Any, kwargs: Any) -> list[str]:
    """Problems of a user function spec: loading, then the signature."""
    if not isinstance(kwargs, Mapping):
        return [f"{key.rpartition('.')[0] or 'reward'}.kwargs must be a mapping, got {type(kwargs).__name__}"]
    try:
        fn = load_function(spec)
    except RewardFunctionError as err:
        return [f"{key}={spec!r}: {err}"]
    return [
        f"{key}={spec!r} {problem}"
        for problem in signature_problems(fn, ROW_FIELDS, list(kwargs), bool(images))
    ]


def _component_problems(key: str, name: str, entry: Any, reward: Mapping[str, Any]) -> list[str]:
    if not isinstance(entry, Mapping):
        return [f"{key} must be a mapping with keys {list(_COMPONENT_KEYS)}, got {entry!r}"]
    problems = []
    if name in RESERVED_NAMES or "/" in name:
        problems.append(
            f"{key}: the name {name!r} is reserved or has a '/' (reserved: {list(RESERVED_NAMES)})"
        )
    unknown = sorted(set(entry) - set(_COMPONENT_KEYS))
    if unknown:
        problems.append(f"{key} has unknown keys {unknown}; valid: {list(_COMPONENT_KEYS)}")
    for sub, lo_open in (("weight", False), ("timeout_s", True)):
        if sub in entry and not (sub == "timeout_s" and entry[sub] is None):
            problem = _number_problem(f"{key}.{sub}", entry[sub], lo_open)
            if problem:
                problems.append(problem)
    if not isinstance(entry.get("images", False), bool):
        problems.append(f"{key}.images={entry['images']!r} must be true or false")
    fn = entry.get("fn")
    if _missing(fn):
        problems.append(
            f"{key}.fn is required: a registered reward {REWARD_FUNCTIONS.names()} or {SPEC_FORMS}"
        )
    elif is_user_spec(str(fn)):
        problems += _fn_problems(f"{key}.fn", str(fn), entry.get("images", False), entry.get("kwargs") or {})
    elif str(fn) not in REWARD_FUNCTIONS:
        problems.append(
            f"{key}.fn={fn!r} is unknown; valid: registered rewards {REWARD_FUNCTIONS.names()} or {SPEC_FORMS}"
        )
    return problems
