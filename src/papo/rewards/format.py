"""Format reward: 1.0 iff the response is ``<think>...</think> ... \\boxed{...}``, else 0.0.

What it implements (same decisions as EasyR1's ``examples/reward_function/math.py``, which PAPO uses):

1. :func:`normalize_tag_whitespace` removes the whitespace around every ``<``, ``>`` and ``/`` -- EasyR1
   does ``re.sub(r"\\s*(<|>|/)\\s*", r"\\1", response)`` ("handle qwen2.5vl-32b format"), so
   ``< think >`` counts as ``<think>``;
2. :func:`format_reward` then accepts exactly the strings that EasyR1's
   ``re.fullmatch(r"<think>.*</think>.*\\\\boxed\\{.*\\}.*", s, re.DOTALL)`` accepts: the response starts
   with ``<think>``, a ``</think>`` follows, then ``\\boxed{``, then some ``}``; anything may come in
   between and after (text after the box is fine, the box's braces need not balance).

How it differs: the *decisions* are identical (``tests/test_rewards.py`` checks them against EasyR1's two
regexes on random strings) but neither step uses a backtracking regex. EasyR1's ``\\s*(<|>|/)`` is
quadratic on a long run of whitespace (each start position rescans the run) and its ``.*`` fullmatch
backtracks over every ``</think>`` x ``\\boxed{`` pair (up to cubic); on a 100k-character adversarial
response that is seconds to hours. Here step 1 is one ``re.split`` on a single character class plus
``str.strip`` per piece, and step 2 is three ``str.find`` calls (taking the earliest ``</think>``, then the
earliest ``\\boxed{`` after it, is optimal for the existence question), so both are linear.
"""

from __future__ import annotations

import re

__all__ = ["format_reward", "is_well_formatted", "normalize_tag_whitespace"]

_TAG_CHAR = re.compile(r"([<>/])")
_OPEN, _CLOSE, _BOX = "<think>", "</think>", "\\boxed{"


def normalize_tag_whitespace(text: str) -> str:
    """Remove whitespace adjacent to ``<``, ``>`` or ``/`` (EasyR1's ``re.sub(r"\\s*(<|>|/)\\s*", r"\\1", ...)``).

    Linear time: ``re.split`` on one character class, then a strip of each piece on its delimiter sides.
    "Whitespace" is the same set as the regex ``\\s`` (``str.isspace``).
    """
    if not isinstance(text, str):
        raise TypeError(f"expected a str, got {type(text).__name__}")
    parts = _TAG_CHAR.split(text)  # even indices: text between delimiters; odd: the delimiters
    last = len(parts) - 1
    for i in range(0, len(parts), 2):
        piece = parts[i]
        if i > 0:
            piece = piece.lstrip()
        if i < last:
            piece = piece.rstrip()
        parts[i] = piece
    return "".join(parts)


def is_well_formatted(normalized: str) -> bool:
    """The format decision on text already passed through :func:`normalize_tag_whitespace`."""
    if not normalized.startswith(_OPEN):
        return False
    close = normalized.find(_CLOSE, len(_OPEN))
    if close < 0:
        return False
    box = normalized.find(_BOX, close + len(_CLOSE))
    if box < 0:
        return False
    return normalized.find("}", box + len(_BOX)) >= 0


def format_reward(text: str) -> float:
    """1.0 if ``text`` is ``<think>...</think> ... \\boxed{...} ...`` (tag whitespace ignored), else 0.0.

    Examples::

        format_reward("<think>2+2</think> The answer is \\boxed{4}.")  # 1.0
        format_reward("< think > 2+2 < / think > \\boxed{4}")          # 1.0 (whitespace around tags)
        format_reward("2+2 </think> \\boxed{4}")                       # 0.0 (no opening <think>)
        format_reward("<think>2+2</think> 4")                           # 0.0 (no \\boxed{})
    """
    return 1.0 if is_well_formatted(normalize_tag_whitespace(text)) else 0.0
