"""Scoring: the PAPO/EasyR1 math reward, the reward-function registry, and the batch scorer.

What it implements:

* :func:`score_response` -- ``{"overall": (1 - w) * accuracy + w * format, "accuracy": ..., "format": ...}``
  with ``w = format_weight = 0.1`` (the paper's ``0.9 accuracy + 0.1 format``). As in EasyR1, tag
  whitespace is normalised once (:func:`~papo.rewards.format.normalize_tag_whitespace`) and that text
  serves both the format check and the answer extraction; accuracy is
  :func:`~papo.rewards.grading.grade_answer` of the last ``\\boxed{}``.
* :data:`REWARD_FUNCTIONS` -- name -> reward function (``fn(response, truth, **kwargs) -> dict`` with at
  least ``"overall"``), a :class:`~papo.algos.registry.Registry`; an unknown name raises
  :class:`UnknownRewardFunctionError` (a ``KeyError`` and a ``ValueError``) whose message lists the valid
  names. :func:`get_reward_fn` looks names up (and binds
  keyword arguments from the config, e.g. ``format_weight``/``timeout_s``).
* :func:`score_batch` -- applies a reward function to (response, truth) pairs. A failing item either
  stops the batch with a ``RuntimeError`` naming the index and previews of the response and the truth
  (``on_error="raise"``), or scores 0 on every key and is counted (``on_error="zero"``; the count is
  returned for the caller to log). A non-finite score counts as a failure too (a NaN reward would
  poison the group's advantages).

Differences from EasyR1: EasyR1's ``compute_score`` has no error policy (one bad ground truth crashes the
run with no row information), no NaN check, and grades with mathruler; see
:mod:`papo.rewards.grading` for the grader differences.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from papo.algos.registry import Registry, UnknownNameError
from papo.rewards.extract import extract_boxed
from papo.rewards.format import is_well_formatted, normalize_tag_whitespace
from papo.rewards.grading import DEFAULT_TIMEOUT_S, grade_answer

__all__ = [
    "ON_ERROR_MODES",
    "REWARD_FUNCTIONS",
    "RewardFn",
    "RewardRegistry",
    "UnknownRewardFunctionError",
    "get_reward_fn",
    "score_batch",
    "score_response",
]

RewardFn = Callable[..., dict[str, float]]
"""``fn(response: str, truth: str, **kwargs) -> dict[str, float]`` with at least the key ``"overall"``."""

ON_ERROR_MODES = ("raise", "zero")
_DEFAULT_KEYS = ("overall", "accuracy", "format")
_PREVIEW_CHARS = 200


def score_response(
    response: str,
    truth: str | int | float,
    format_weight: float = 0.1,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, float]:
    """The math reward of one response.

    Args:
        response: the decoded model response.
        truth: the ground-truth answer (``int``/``float`` accepted).
        format_weight: weight ``w`` of the format reward, in ``[0, 1]``.
        timeout_s: deadline of the symbolic answer check (a last resort, see :func:`grade_answer`).

    Returns:
        ``{"overall": (1 - w) * accuracy + w * format, "accuracy": 0.0 or 1.0, "format": 0.0 or 1.0}``.

    Raises:
        ValueError: empty/``None`` ``truth``, ``format_weight`` outside ``[0, 1]``, ``timeout_s <= 0``.
        TypeError: ``response`` is not a ``str``.
    """
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    if not 0.0 <= format_weight <= 1.0:
        raise ValueError(f"format_weight must be in [0, 1], got {format_weight!r}")
    normalized = normalize_tag_whitespace(response)
    fmt = 1.0 if is_well_formatted(normalized) else 0.0
    acc = 1.0 if grade_answer(extract_boxed(normalized), truth, timeout_s=timeout_s) else 0.0
    return {"overall": (1.0 - format_weight) * acc + format_weight * fmt, "accuracy": acc, "format": fmt}


class UnknownRewardFunctionError(UnknownNameError):
    """Unknown reward-function name (a ``KeyError`` and a ``ValueError``); the message lists the valid names."""


class RewardRegistry(Registry[RewardFn]):
    """The reward-function table: the project's one :class:`~papo.algos.registry.Registry` class, whose
    unknown names raise :class:`UnknownRewardFunctionError`."""

    def __init__(self) -> None:
        super().__init__("reward function", error=UnknownRewardFunctionError)


REWARD_FUNCTIONS = RewardRegistry()
REWARD_FUNCTIONS.register("math")(score_response)


def get_reward_fn(name: str, **kwargs: Any) -> RewardFn:
    """The reward function registered as ``name``; with ``kwargs``, a ``functools.partial`` binding them.

    Raises:
        UnknownRewardFunctionError: unknown ``name`` (message lists the valid names).
    """
    fn = REWARD_FUNCTIONS[name]
    return functools.partial(fn, **kwargs) if kwargs else fn


def _takes_kwargs(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _preview(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    if len(text) > _PREVIEW_CHARS:
        return repr(text[:_PREVIEW_CHARS]) + f"... ({len(text)} chars)"
    return repr(text)


def score_batch(
    responses: Sequence[str],
    truths: Sequence[Any],
    reward_fn: RewardFn,
    on_error: str = "raise",
    fields: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[dict[str, list[float]], int]:
    """Score ``reward_fn(responses[i], truths[i])`` for every ``i``.

    Args:
        responses: decoded responses.
        truths: ground truths, same length.
        reward_fn: returns a dict of finite floats with at least ``"overall"``; every item must return
            the same keys.
        on_error: ``"raise"``: a failing item (exception or non-finite score) raises ``RuntimeError``
            naming its index with 200-character previews of the response and the truth (the original
            exception chained); ``"zero"``: the item scores 0.0 on every key and is counted.
        fields: per item, the row's other fields (:func:`papo.rewards.components.row_fields`), passed as
            keyword arguments to a ``reward_fn`` that takes ``**kwargs`` (e.g.
            :class:`~papo.rewards.components.CombinedReward`); other functions get ``(response, truth)``.

    Returns:
        ``(scores, n_errors)``: ``scores[key]`` is a list aligned with ``responses`` (keys of the
        successful items; ``overall``/``accuracy``/``format`` if none succeeded), ``n_errors`` the number
        of items zeroed (always 0 with ``on_error="raise"``).

    Raises:
        ValueError: unknown ``on_error``, length mismatch, or a reward function whose results lack
            ``"overall"`` or change keys between items (a bug, raised in both modes).
    """
    if on_error not in ON_ERROR_MODES:
        raise ValueError(f"on_error must be one of {list(ON_ERROR_MODES)}, got {on_error!r}")
    if len(responses) != len(truths):
        raise ValueError(f"{len(responses)} responses but {len(truths)} ground truths")
    if fields is not None and len(fields) != len(responses):
        raise ValueError(f"{len(responses)} responses but {len(fields)} rows of fields")
    if fields is None or not _takes_kwargs(reward_fn):
        fields = [{}] * len(responses)

    results: list[dict[str, float] | None] = []
    keys: list[str] | None = None
    n_errors = 0
    for i, (response, truth) in enumerate(zip(responses, truths, strict=True)):
        try:
            scores = reward_fn(response, truth, **fields[i])
            bad = [k for k, v in scores.items() if not math.isfinite(v)]
            if bad:
                raise ValueError(f"non-finite score(s) {[(k, scores[k]) for k in bad]}")
            scores = {k: float(v) for k, v in scores.items()}
        except Exception as e:
            if on_error == "raise":
                raise RuntimeError(
                    f"reward function failed on item {i}: {type(e).__name__}: {e}; "
                    f"response={_preview(response)}; truth={_preview(truth)}"
                ) from e
            n_errors += 1
            results.append(None)
            continue
        if keys is None:
            if "overall" not in scores:
                raise ValueError(f"reward function must return an 'overall' score, got keys {sorted(scores)}")
            keys = list(scores)
        elif set(scores) != set(keys):
            raise ValueError(
                f"reward function returned keys {sorted(scores)} on item {i}, {sorted(keys)} before"
            )
        results.append(scores)

    out_keys = keys if keys is not None else list(_DEFAULT_KEYS)
    batch = {k: [r[k] if r is not None else 0.0 for r in results] for k in out_keys}
    return batch, n_errors
