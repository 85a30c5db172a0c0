"""Answer grading: is an extracted answer equal to the ground truth? The same answer always gets the same grade.

What it implements: :func:`grade_answer` in two stages.

1. Fast path (string work in this process, microseconds): :func:`normalize_answer` strips whitespace,
   surrounding ``$...$`` / ``\\(...\\)`` / ``\\[...\\]``, a whole-answer ``\\text{}`` (``\\textbf``,
   ``\\mathrm``, ...), LaTeX thin spaces, a trailing ``.`` and ``(A)`` -> ``A``; then the answers are equal if
   the strings are equal ignoring case, or if both are plain decimal numbers with the same value
   (``"3.0" == "3"``, ``"1,000" == "1000"``). A ground truth made only of letters (``"red"``, ``"A"``) is
   *textual* and decided here: math-verify reads ``red`` as the product ``r*e*d`` and would accept ``der``.
2. Slow path: math-verify's LaTeX parser and ``verify`` (``\\frac{1}{2}`` vs ``0.5``, ``x+1`` vs ``1+x``), only
   for answers within the input limits of :mod:`papo.rewards.grading_limits`, in the reused worker process of
   :mod:`papo.rewards.grading_worker` under a wall-clock deadline (``timeout_s``) that admitted answers do
   not reach, on an idle or a loaded machine alike.

Why (docs/reliability.md, "Grading"): a reward is training data, so a grade must not depend on machine
load; math-verify's own ``signal.alarm`` timeouts only work in the main thread and budget each call
separately, and a thread cannot be stopped inside a C call. Never executes model output: only math-verify's
``LatexExtractionConfig`` is used, never ``ExprExtractionConfig`` (which runs ``sympy.parse_expr``, i.e.
``eval``, on free text).

Differences from EasyR1 / the paper: EasyR1 grades with ``mathruler.grader.grade_answer`` (string
normalisation + sympy ``simplify`` of the difference, no time bound). Textual ground truths are compared as
strings (case-insensitive). A ``None`` / empty ground truth raises ``ValueError`` (a dataset error the caller
reports with the row).
"""

from __future__ import annotations

import logging
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from papo.rewards.extract import match_brace
from papo.rewards.grading_limits import (
    MAX_ANSWER_CHARS,
    MAX_COMBINATORIAL_ARG,
    MAX_EXACT_BITS,
    MAX_EXPANDED_TERMS,
    MAX_NESTING_DEPTH,
    MAX_TREE_NODES,
    UnsafeExpression,
    check_expression_size,
    nesting_depth,
    text_limit_violation,
)
from papo.rewards.grading_worker import run_isolated

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MAX_ANSWER_CHARS",
    "MAX_COMBINATORIAL_ARG",
    "MAX_EXACT_BITS",
    "MAX_EXPANDED_TERMS",
    "MAX_NESTING_DEPTH",
    "MAX_TREE_NODES",
    "UnsafeExpression",
    "check_expression_size",
    "grade_answer",
    "is_textual",
    "nesting_depth",
    "normalize_answer",
    "parse_plain_number",
    "symbolic_outcome",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
"""Deadline of one symbolic check; answers within the input limits finish far inside it, under load too."""


# ----------------------------------------------------------------------------------- string fast path
_WRAPPERS = ("\\text", "\\textbf", "\\textit", "\\textrm", "\\mathrm", "\\mathbf", "\\mbox", "\\boxed")
_THIN_SPACES = re.compile(r"\\[,!;:]")
_TEX_SPACES = re.compile(r"\\ |~")
_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[+-]?\.\d+")
_LETTERS = re.compile(r"[^\W\d_]+(?:[ \-'][^\W\d_]+)*")
_CHOICE = re.compile(r"\(([A-Za-z])\)")


def _unwrap_once(s: str) -> str:
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left) : len(s) - len(right)]
    for cmd in _WRAPPERS:
        if s.startswith(cmd):
            rest = s[len(cmd) :].lstrip()
            brace = len(s) - len(rest)
            if rest.startswith("{") and match_brace(s, brace) == len(s) - 1:
                return s[brace + 1 : -1]
    if s.endswith(".") and not s.endswith(".."):
        return s[:-1]
    m = _CHOICE.fullmatch(s)
    if m:
        return m.group(1)
    return s


def normalize_answer(answer: str) -> str:
    """Canonical string form of an answer for the fast path.

    Strips whitespace, surrounding ``$``/``$$``/``\\(\\)``/``\\[\\]``, a whole-answer ``\\text{...}``-like
    wrapper, LaTeX spacing (``\\,`` ``\\!`` ``\\;`` ``\\:`` removed, ``\\ `` and ``~`` -> space), a trailing ``.``, ``(A)`` -> ``A``;
    collapses whitespace runs. Case is kept (the comparison decides about case). Linear time.
    """
    s = _TEX_SPACES.sub(" ", _THIN_SPACES.sub("", answer))
    for _ in range(8):  # wrappers can nest: "$\text{red}$."
        t = _unwrap_once(s)
        if t == s:
            break
        s = t
    return " ".join(s.split()).replace("{,}", ",")


def parse_plain_number(s: str) -> Decimal | None:
    """``Decimal`` value of a plain decimal number (``-3``, ``3.0``, ``.5``, ``1,000.5``), else None."""
    if len(s) > 100 or not _NUMBER.fullmatch(s):
        return None
    try:
        return Decimal(s.replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the regex admits only valid literals
        return None


def is_textual(s: str) -> bool:
    """True if ``s`` is only letters, as words separated by single spaces / hyphens / apostrophes."""
    return bool(_LETTERS.fullmatch(s))


# ------------------------------------------------------------------------------------ math-verify path
_MV: dict[str, Any] = {}


class _DropTimeoutDisabledWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


def _math_verify() -> dict[str, Any]:
    """Import math-verify once (in the grading worker: by its initializer, outside any deadline)."""
    if not _MV:
        from math_verify import LatexExtractionConfig, parse, verify

        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropTimeoutDisabledWarning())
        _MV.update(
            parse=parse,
            verify=verify,
            config=[LatexExtractionConfig(boxed_match_priority=0)],
        )
    return _MV


_WARM_UP = [
    ("((((1))))", "1"),
    ("[[[[1]]]]", "1"),
    ("{{{{1}}}}", "1"),
    (r"\frac{1}{2}", "0.5"),
    ("(1, 2]", "(1,2]"),
    (r"\sqrt{2}/2", r"\frac{\sqrt2}{2}"),
    ("x+1", "1+x"),
]


def warm_up() -> None:
    """Import math-verify and parse a few common shapes (the worker's initializer, outside any deadline)."""
    for pred, truth in _WARM_UP:
        symbolic_outcome(pred, truth)


def symbolic_outcome(pred: str, truth: str) -> bool | str:
    """math-verify's verdict on two normalised answers: True / False, or a string saying why the answer is
    refused (an expression over the limits, or a parser failure). Runs in the grading worker; plain
    results only, so nothing unpicklable crosses the process boundary."""
    mv = _math_verify()

    def parse(s: str) -> list[Any]:
        out = mv["parse"](
            "\\boxed{" + s + "}",
            extraction_config=mv["config"],
            fallback_mode="no_fallback",
            parsing_timeout=None,  # the worker's deadline covers it
        )
        for expr in out:
            check_expression_size(expr)
        return out

    try:
        gold = parse(truth)
        if not gold:
            return False
        target = parse(pred)
        if not target:
            return False
        return bool(mv["verify"](gold, target, timeout_seconds=None))
    except UnsafeExpression as e:
        return f"refused: {e}"
    except Exception as e:  # a parser / sympy failure on odd input: not equal
        return f"failed: {type(e).__name__}: {e}"[:300]


def _balanced(s: str) -> bool:
    depth = 0
    for m in re.finditer(r"\\.|[{}]", s, re.DOTALL):
        tok = m.group()
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def grade_answer(pred: str | None, truth: str | int | float, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """True if ``pred`` (an extracted answer, ``None`` if there was none) equals ``truth``.

    Args:
        pred: the model's answer, e.g. the content of its last ``\\boxed{}``; ``None`` grades wrong.
        truth: the ground truth; ``int``/``float`` are converted with ``str()``.
        timeout_s: wall-clock deadline of the symbolic check in the grading worker (a last resort: answers
            within the input limits finish far inside it); past it the answer grades wrong and the worker is
            restarted.

    Raises:
        ValueError: ``truth`` is ``None`` or empty (a dataset error; the caller names the row), or
            ``timeout_s <= 0``.
        TypeError: ``pred`` is neither a ``str`` nor ``None``, or ``truth`` is not str/int/float.
    """
    if truth is None or isinstance(truth, bool):
        raise ValueError(f"ground truth must be a non-empty string or a number, got {truth!r}")
    if isinstance(truth, int | float):
        truth = str(truth)
    if not isinstance(truth, str):
        raise TypeError(f"ground truth must be str, int or float, got {type(truth).__name__}")
    if not truth.strip():
        raise ValueError("ground truth is empty")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    if pred is None:
        return False
    if not isinstance(pred, str):
        raise TypeError(f"pred must be str or None, got {type(pred).__name__}")
    if len(pred) > MAX_ANSWER_CHARS:
        return False

    p = normalize_answer(pred)
    t = normalize_answer(truth)
    if not p:
        return False
    if p == t or p.casefold() == t.casefold():
        return True
    p_num, t_num = parse_plain_number(p), parse_plain_number(t)
    if p_num is not None and t_num is not None:
        return p_num == t_num
    if is_textual(t):  # a word / letter answer: sympy would read it as a product of symbols
        return False
    why = text_limit_violation(p) or text_limit_violation(t)
    if why is not None or not (_balanced(p) and _balanced(t)):
        log.debug("grading: %.80r vs %.80r not parsed: %s", pred, truth, why or "unbalanced braces")
        return False
    finished, outcome = run_isolated(symbolic_outcome, (p, t), timeout_s, warm_up=warm_up)
    if not finished:  # past the deadline, or the worker died (both logged by run_isolated): graded wrong
        return False
    if isinstance(outcome, str):
        log.debug("grading: %.80r vs %.80r: %s", pred, truth, outcome)
        return False
    return bool(outcome)
