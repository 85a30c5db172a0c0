"""Verifiable rewards for PAPO: answer extraction, format check, bounded-time grading, scoring.

The math reward of the paper (and of EasyR1, which PAPO builds on) is
``0.9 * accuracy + 0.1 * format`` where ``format`` checks ``<think>...</think> ... \\boxed{...}`` and
``accuracy`` grades the last ``\\boxed{}`` against the ground truth. Modules:

* :mod:`~papo.rewards.extract` -- :func:`extract_boxed` (linear time);
* :mod:`~papo.rewards.format` -- :func:`format_reward` (EasyR1's decisions, linear time);
* :mod:`~papo.rewards.grading` -- :func:`grade_answer` (string fast path + math-verify behind input limits
  that do not depend on time, :mod:`~papo.rewards.grading_limits`, in a reused worker process killed at a
  deadline, :mod:`~papo.rewards.grading_worker`; never executes model output);
* :mod:`~papo.rewards.scoring` -- :func:`score_response`, :data:`REWARD_FUNCTIONS`,
  :func:`get_reward_fn`, :func:`score_batch`.

Importing this package does not import sympy / math-verify; they load on the first symbolic check.
"""

from papo.rewards.extract import extract_boxed
from papo.rewards.format import format_reward, normalize_tag_whitespace
from papo.rewards.grading import (
    MAX_ANSWER_CHARS,
    MAX_NESTING_DEPTH,
    grade_answer,
    normalize_answer,
)
from papo.rewards.scoring import (
    REWARD_FUNCTIONS,
    RewardFn,
    UnknownRewardFunctionError,
    get_reward_fn,
    score_batch,
    score_response,
)

__all__ = [
    "MAX_ANSWER_CHARS",
    "MAX_NESTING_DEPTH",
    "REWARD_FUNCTIONS",
    "RewardFn",
    "UnknownRewardFunctionError",
    "extract_boxed",
    "format_reward",
    "get_reward_fn",
    "grade_answer",
    "normalize_answer",
    "normalize_tag_whitespace",
    "score_batch",
    "score_response",
]
