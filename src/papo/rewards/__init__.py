"""Verifiable rewards for PAPO: answer extraction, format check, bounded-time grading, scoring, rewards from
config.

The math reward of the paper (and of EasyR1, which PAPO builds on) is
``0.9 * accuracy + 0.1 * format`` where ``format`` checks ``<think>...</think> ... \\boxed{...}`` and
``accuracy`` grades the last ``\\boxed{}`` against the ground truth. Modules:

* :mod:`~papo.rewards.extract` -- :func:`extract_boxed` (linear time);
* :mod:`~papo.rewards.format` -- :func:`format_reward` (EasyR1's decisions, linear time);
* :mod:`~papo.rewards.grading` -- :func:`grade_answer` (string fast path + math-verify behind input limits
  that do not depend on time, :mod:`~papo.rewards.grading_limits`, in a reused worker process killed at a
  deadline, :mod:`~papo.rewards.grading_worker`; never executes model output);
* :mod:`~papo.rewards.scoring` -- :func:`score_response`, :data:`REWARD_FUNCTIONS`,
  :func:`get_reward_fn`, :func:`score_batch`;
* :mod:`~papo.rewards.components` -- the ``reward`` config group as weighted components
  (:func:`build_reward_fn`, :func:`reward_config_problems`, :func:`row_fields`);
* :mod:`~papo.rewards.user_function` -- user functions named ``path/to/file.py:function`` or
  ``package.module:function``, run in a worker process under a deadline.

Importing this package imports neither torch nor sympy / math-verify: the names of ``scoring`` and
``components`` (whose registry class lives in :mod:`papo.algos`, a torch package) load on first use, so the
worker processes, which import this package, start without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from papo.rewards.extract import extract_boxed
from papo.rewards.format import format_reward, normalize_tag_whitespace
from papo.rewards.grading import (
    MAX_ANSWER_CHARS,
    MAX_NESTING_DEPTH,
    grade_answer,
    normalize_answer,
)
from papo.rewards.user_function import RewardFunctionError

if TYPE_CHECKING:
    from papo.rewards.components import (
        CombinedReward,
        RewardComponent,
        build_reward_fn,
        reward_config_problems,
        row_fields,
    )
    from papo.rewards.scoring import (
        REWARD_FUNCTIONS,
        RewardFn,
        UnknownRewardFunctionError,
        get_reward_fn,
        score_batch,
        score_response,
    )

_LAZY = {
    **dict.fromkeys(
        (
            "REWARD_FUNCTIONS",
            "RewardFn",
            "UnknownRewardFunctionError",
            "get_reward_fn",
            "score_batch",
            "score_response",
        ),
        "papo.rewards.scoring",
    ),
    **dict.fromkeys(
        ("CombinedReward", "RewardComponent", "build_reward_fn", "reward_config_problems", "row_fields"),
        "papo.rewards.components",
    ),
}


def __getattr__(name: str) -> Any:
    """The names of ``scoring`` / ``components``, imported on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'papo.rewards' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "MAX_ANSWER_CHARS",
    "MAX_NESTING_DEPTH",
    "REWARD_FUNCTIONS",
    "CombinedReward",
    "RewardComponent",
    "RewardFn",
    "RewardFunctionError",
    "UnknownRewardFunctionError",
    "build_reward_fn",
    "extract_boxed",
    "format_reward",
    "get_reward_fn",
    "grade_answer",
    "normalize_answer",
    "normalize_tag_whitespace",
    "reward_config_problems",
    "row_fields",
    "score_batch",
    "score_response",
]
