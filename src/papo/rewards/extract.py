"""Answer extraction: the content of the last ``\\boxed{...}`` in a response.

What it implements: :func:`extract_boxed` returns the text between the braces of the *last* ``\\boxed{``
(``\\boxed {x}`` with whitespace before the brace is accepted) with braces balanced, nested braces
included; ``None`` when there is no ``\\boxed{`` or the last one is never closed. Escaped braces
(``\\{``, ``\\}``, e.g. ``\\boxed{\\left\\{ x \\right.}``) do not count towards the balance, and ``\\\\``
(a LaTeX line break) escapes nothing.

Complexity: linear in ``len(text)`` and regex-free in the scan (``str.rfind`` to locate the last
``\\boxed``, one compiled ``finditer`` over ``\\\\.|[{}]`` whose alternatives are single fixed-width
tokens, so there is no backtracking); a 100k-character response takes well under a millisecond to a few
milliseconds.

Differences from EasyR1 / the paper: EasyR1 calls ``mathruler.grader.extract_boxed_content``, which also
takes the last ``\\boxed{`` but returns the string ``"None"`` (not ``None``) when nothing is found, counts
escaped braces, and does not accept whitespace between ``\\boxed`` and ``{``. Here a missing answer is a
real ``None`` (graded wrong), and the two LaTeX forms above are handled.
"""

from __future__ import annotations

import re

__all__ = ["extract_boxed", "match_brace"]

_BOXED = "\\boxed"
# One token per match: a backslash with the character it escapes, or a brace. Fixed width -> linear.
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)
_SPACES = re.compile(r"\s*")


def match_brace(text: str, open_index: int) -> int | None:
    """Index of the ``}`` that closes the ``{`` at ``text[open_index]``; ``None`` if it is never closed.

    Backslash escapes (``\\{``, ``\\}``, ``\\\\``) are skipped. Linear in the scanned length.
    """
    if open_index >= len(text) or text[open_index] != "{":
        raise ValueError(f"text[{open_index}] is not '{{'")
    depth = 0
    for m in _BRACE_TOKEN.finditer(text, open_index):
        tok = m.group()
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth == 0:
                return m.start()
    return None


def _last_boxed_open_brace(text: str) -> int | None:
    """Index of the ``{`` of the last ``\\boxed{`` (optional whitespace before the brace), or None."""
    end = len(text)
    while True:
        start = text.rfind(_BOXED, 0, end)
        if start < 0:
            return None
        i = _SPACES.match(text, start + len(_BOXED)).end()
        if i < len(text) and text[i] == "{":
            return i
        # "\boxed" not followed by "{" (e.g. "\boxedtext", "\boxed 5"): look further left.
        end = start


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text``, or ``None`` if absent or unbalanced.

    Examples::

        extract_boxed(r"so \\boxed{1} or \\boxed{\\frac{1}{2}}")  # -> "\\frac{1}{2}"
        extract_boxed(r"\\boxed {x}")                           # -> "x"
        extract_boxed(r"\\boxed{\\frac{1}{2}")                   # -> None (never closed)
        extract_boxed("no answer")                            # -> None
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_boxed expects a str, got {type(text).__name__}")
    brace = _last_boxed_open_brace(text)
    if brace is None:
        return None
    close = match_brace(text, brace)
    if close is None:
        return None
    return text[brace + 1 : close]
