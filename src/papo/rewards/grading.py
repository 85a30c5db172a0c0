"""Answer grading: is an extracted answer equal to the ground truth? Bounded in time, in any thread.

What it implements: :func:`grade_answer` in two stages.

1. Fast path (pure string work, microseconds): :func:`normalize_answer` strips whitespace, surrounding
   ``$...$`` / ``\\(...\\)`` / ``\\[...\\]``, a whole-answer ``\\text{}`` (``\\textbf``, ``\\mathrm``, ...),
   LaTeX thin spaces, a trailing ``.`` and ``(A)`` -> ``A``; then the answers are equal if the strings are
   equal ignoring case, or if both are plain decimal numbers with the same value (``"3.0" == "3"``,
   ``"1,000" == "1000"``; two plain numbers never go to the slow path). A ground truth made only of
   letters (``"red"``, ``"A"``, ``"blue whale"``) is *textual*: it is decided here, never by sympy,
   because math-verify reads ``red`` as the product ``r*e*d`` and would accept ``der``.
2. Slow path: math-verify (``parse`` + ``verify``) for LaTeX / symbolic equivalence
   (``\\frac{1}{2}`` vs ``0.5``, ``\\sqrt{2}/2`` vs ``\\frac{\\sqrt2}{2}``, ``x+1`` vs ``1+x``), run only
   on inputs within the caps below and under a wall-clock deadline.

Safety -- the grader never executes model output. Findings from reading math-verify 0.9.0 and
latex2sympy2_extended 1.11 (``.venv/lib/python3.11/site-packages``):

* ``math_verify.parse`` with ``LatexExtractionConfig`` (the only extraction target used here) runs
  ``latex2sympy2_extended.latex2sympy``: regex normalisation, an ANTLR-generated LaTeX parser, and a
  visitor that builds sympy objects directly (``sympy.Symbol``, ``sympy.Add(..., evaluate=False)``, ...).
  Its only explicit ``parse_expr`` call is for the ``variable_values`` argument, which math-verify never
  passes. One indirect use: numbers are built with ``sympy.Number(text)``, and sympy turns a string into a
  number through ``sympify`` -> ``parse_expr`` -> ``eval`` of generated code such as ``Integer (12 )``. The
  text is a NUMBER token of the ANTLR lexer (digits, ``.``, ``,``), so ``eval`` only ever sees a numeric
  literal, never free text (``tests/test_bad_inputs_security.py`` records every ``parse_expr`` input while
  grading hostile answers).
* ``math_verify.parse`` with ``ExprExtractionConfig`` (part of math-verify's *default* config) calls
  ``sympy.parsing.parse_expr`` on the matched text, and ``parse_expr`` uses Python ``eval``. It is
  therefore never used here.
* ``verify`` compares sympy objects (``simplify``, ``evalf``, ``doit``, set/matrix/relation logic) or
  compares strings for equality; it evaluates nothing textual.

Time bounds -- what math-verify does and why it is not used as is:

* ``math_verify.utils.timeout`` wraps ``parse`` and each ``verify`` comparison in ``signal.alarm``. That
  (a) only works in the main thread: elsewhere ``signal.signal`` raises ``ValueError`` (math-verify
  re-raises it with advice to pass ``parsing_timeout=None``/``timeout_seconds=None``, i.e. no timeout);
  (b) takes integer seconds: a float such as ``2.0`` makes ``signal.alarm`` raise ``TypeError``, which
  ``parse`` swallows (``except Exception: return []``) and ``verify`` turns into ``False``, so every
  answer silently grades wrong; (c) budgets each call separately (one answer can cost several budgets);
  (d) replaces any ``SIGALRM`` handler the host uses.
* Here math-verify runs with its timeouts disabled and the whole slow path (both parses and the verify)
  runs in a short-lived worker thread under one deadline (:func:`run_with_deadline`): at the deadline the
  caller raises an exception inside the worker with ``PyThreadState_SetAsyncExc`` (again every 50 ms, in
  case library code swallows one) and the caller grades the answer wrong. This works whether the caller is
  the main thread or not, never interrupts the caller's own code, and leaves signal handlers alone. The
  price: an asynchronous exception is only delivered between Python bytecodes, never inside one C call,
  and a worker inside a long C call holds the GIL, so the caller waits too. (CPython's big-int power
  polls ``PyErr_CheckSignals``, so math-verify's ``SIGALRM`` can stop ``3**(10**9)`` in the main thread;
  nothing can in another thread.)
* Hence the caps, checked before and after parsing:

  - an answer longer than :data:`MAX_ANSWER_CHARS` or with bracket nesting deeper than
    :data:`MAX_NESTING_DEPTH` is wrong without calling the parser (the ``\\frac{`` x 5000 or ``(`` x 3000
    bombs);
  - after parsing and before ``verify``, :func:`check_expression_size` bounds the size of the exact
    numbers the sympy tree could evaluate to: ``verify`` calls ``doit()``, and for
    ``9^{9^{9^{9}}}`` sympy's ``Integer._eval_power`` runs ``9**(9**(9**9))`` as one CPython big-int
    power, which an asynchronous exception cannot stop (measured: a 0.2 s deadline on ``3**(3*10**7)``
    returns after ~11 s). An expression whose numbers could exceed
    :data:`MAX_EXACT_BITS` bits, with more than :data:`MAX_TREE_NODES` nodes, or that applies a
    combinatorial / special / number-theory function (factorial, binomial, gamma, prime, ...) to an
    argument above :data:`MAX_COMBINATORIAL_ARG` is graded wrong.

  Remaining risk: exotic inputs that make a C routine (regex, big-number arithmetic below the caps) run
  long in one call; for answers of at most 1,000 characters none is known.

Differences from EasyR1 / the paper: EasyR1 grades with ``mathruler.grader.grade_answer`` (string
normalisation + sympy ``simplify`` of the difference, no timeout). The paper's description is
"mathruler / math-verify style grading"; this module uses math-verify's LaTeX path for the symbolic
check. Textual ground truths are compared as strings (case-insensitive) instead of as symbol products.
A ``None`` / empty ground truth raises ``ValueError`` (a dataset error the caller reports with the row).
"""

from __future__ import annotations

import ctypes
import logging
import math
import re
import threading
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from papo.rewards.extract import match_brace

__all__ = [
    "MAX_ANSWER_CHARS",
    "MAX_COMBINATORIAL_ARG",
    "MAX_EXACT_BITS",
    "MAX_NESTING_DEPTH",
    "MAX_TREE_NODES",
    "GradingTimeout",
    "UnsafeExpression",
    "check_expression_size",
    "grade_answer",
    "is_textual",
    "nesting_depth",
    "normalize_answer",
    "parse_plain_number",
    "run_with_deadline",
]

log = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 1000
"""Answers (prediction or ground truth) longer than this never reach the parser."""
MAX_NESTING_DEPTH = 50
"""Answers with ``()[]{}`` nesting deeper than this never reach the parser."""
MAX_EXACT_BITS = 100_000
"""Bound on the bit size of any exact number a parsed expression could evaluate to (~30,000 digits)."""
MAX_COMBINATORIAL_ARG = 10_000
"""Largest argument of factorial / binomial / gamma / prime / ... that is allowed to reach sympy."""
MAX_TREE_NODES = 5_000
"""Parsed expressions with more sympy nodes than this are graded wrong."""
_REFIRE_S = 0.05


# --------------------------------------------------------------------------------------------- deadline
class GradingTimeout(BaseException):
    """Raised inside the grading worker thread when the deadline passes.

    A ``BaseException`` so that library code's ``except Exception`` does not swallow it.
    """


_T = TypeVar("_T")
_SET_ASYNC_EXC = getattr(getattr(ctypes, "pythonapi", None), "PyThreadState_SetAsyncExc", None)
_abandoned = 0  # workers still running after their deadline + grace (stuck in one C call)


def _async_raise(thread_id: int, exc_type: type[BaseException] | None) -> None:
    # exc_type=None passes NULL, which clears a pending asynchronous exception of that thread.
    arg = ctypes.py_object(exc_type) if exc_type is not None else None
    _SET_ASYNC_EXC(ctypes.c_ulong(thread_id), arg)  # type: ignore[misc]


class _Worker(threading.Thread):
    """Runs ``fn`` once; only this thread is ever interrupted, never the caller."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(name="papo-grading", daemon=True)
        self._fn = fn
        self.lock = threading.Lock()
        self.finished = False  # set under ``lock``; no interruption is sent once it is True
        self.outcome: tuple[str, Any] = ("timeout", None)

    def run(self) -> None:
        try:
            outcome: tuple[str, Any] = ("ok", self._fn())
        except GradingTimeout:
            outcome = ("timeout", None)
        except BaseException as e:
            outcome = ("error", e)
        while True:  # hand over the outcome; retry if an interruption lands in between
            try:
                with self.lock:
                    self.finished = True
                    self.outcome = outcome
                    _async_raise(threading.get_ident(), None)  # drop one not yet delivered
                return
            except GradingTimeout:
                continue

    def interrupt(self) -> None:
        with self.lock:
            if not self.finished and self.ident is not None:
                _async_raise(self.ident, GradingTimeout)


def run_with_deadline(fn: Callable[[], _T], timeout_s: float, grace_s: float = 1.0) -> tuple[bool, _T | None]:
    """Run ``fn()`` with a wall-clock budget of ``timeout_s`` seconds; any calling thread (no signals).

    ``fn`` runs in a short-lived worker thread while the caller waits. At the deadline the caller raises
    :class:`GradingTimeout` inside the worker (``PyThreadState_SetAsyncExc``), again every 50 ms for up to
    ``grace_s`` seconds in case ``fn`` swallows it; then the caller gives up on the worker (a daemon thread,
    counted and logged). The caller itself is never interrupted. Interruption happens between Python
    bytecodes, so a worker inside one long C call finishes that call first (and, holding the GIL, blocks
    the caller as well) -- the reason for the input caps of :func:`grade_answer`.

    Returns ``(True, result)``, or ``(False, None)`` on timeout. Exceptions of ``fn`` are re-raised.
    """
    global _abandoned
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    if _SET_ASYNC_EXC is None:  # not CPython: no way to interrupt; rely on the input caps
        return True, fn()
    worker = _Worker(fn)
    worker.start()
    worker.join(timeout_s)
    waited = 0.0
    while worker.is_alive() and waited < grace_s:
        worker.interrupt()
        worker.join(_REFIRE_S)
        waited += _REFIRE_S
    with worker.lock:
        kind, value = worker.outcome
        if not worker.finished and not worker.is_alive():  # interrupted while handing over
            return False, None
        if not worker.finished:
            _abandoned += 1
            log.warning(
                "grading worker still running %.1fs after its %.1fs deadline (stuck in a C call?); "
                "abandoned (%d so far)",
                grace_s,
                timeout_s,
                _abandoned,
            )
            return False, None
    if kind == "ok":
        return True, value
    if kind == "error":
        raise value
    return False, None


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


def nesting_depth(s: str) -> int:
    """Maximum nesting depth of ``()``, ``[]`` and ``{}`` in ``s`` (closing brackets just decrement)."""
    depth = best = 0
    for ch in s:
        if ch in "([{":
            depth += 1
            if depth > best:
                best = depth
        elif ch in ")]}":
            depth = max(depth - 1, 0)
    return best


def _within_caps(s: str) -> bool:
    return len(s) <= MAX_ANSWER_CHARS and nesting_depth(s) <= MAX_NESTING_DEPTH


# ------------------------------------------------------------------------------- expression size guard
class UnsafeExpression(ValueError):
    """A parsed expression that could make sympy compute astronomically large exact numbers."""


_BOUNDED_FUNCS = frozenset(
    {"sin", "cos", "tanh", "sech", "atan", "acot", "asin", "acos", "sign", "erf", "erfc", "Heaviside"}
)
_PASS_THROUGH_FUNCS = frozenset(
    {"floor", "ceiling", "frac", "Abs", "re", "im", "conjugate", "Max", "Min", "Mod"}
)
_DANGEROUS_MODULES = (
    "sympy.functions.combinatorial",
    "sympy.functions.special",
    "sympy.ntheory",
    "sympy.concrete",
)
_SMALL_ARG_BITS = MAX_COMBINATORIAL_ARG.bit_length()


def _number_bits(node: Any) -> float:
    """Bit size bound of a sympy number (both |x| and 1/|x| are below 2**bits)."""
    import sympy

    if isinstance(node, sympy.Integer):
        return max(1, int(node.p).bit_length())
    if isinstance(node, sympy.Rational):
        return max(int(node.p).bit_length(), int(node.q).bit_length())
    if isinstance(node, sympy.Float):
        mpf = node._mpf_
        if mpf[1] == 0:  # zero, or inf / nan (special mpf values)
            return 1
        return abs(int(mpf[2]) + int(mpf[3])) + 1
    return 2  # pi, E, I, oo, zoo, nan, ...


def check_expression_size(expr: Any) -> None:
    """Raise :class:`UnsafeExpression` if evaluating ``expr`` could create huge exact numbers.

    Computes, bottom-up, an upper bound on the bit size of every subexpression (symbols count as small):
    ``bits(a*b) <= bits(a) + bits(b)``, ``bits(a**e) <= bits(a) * |e|``, ``bits(exp(x)) <= 1.45 |x|``,
    ... A node whose bound exceeds :data:`MAX_EXACT_BITS`, a combinatorial / special / number-theory /
    summation node with an argument above :data:`MAX_COMBINATORIAL_ARG`, or a tree with more than
    :data:`MAX_TREE_NODES` nodes is rejected. Iterative (no recursion limit issues); only reads the tree.
    """
    import sympy
    from sympy.matrices import MatrixBase

    bits: dict[int, float] = {}
    stack: list[tuple[Any, bool]] = [(expr, False)]
    seen = 0
    while stack:
        node, expanded = stack.pop()
        if isinstance(node, MatrixBase):
            children = list(node)
        elif isinstance(node, sympy.Basic):
            children = list(node.args)
        elif isinstance(node, tuple | list):
            children = list(node)
        else:  # str, int, ... : nothing sympy could blow up
            bits[id(node)] = 2.0
            continue
        if not expanded:
            seen += 1
            if seen > MAX_TREE_NODES:
                raise UnsafeExpression(f"expression has more than {MAX_TREE_NODES} nodes")
            stack.append((node, True))
            stack.extend((c, False) for c in children)
            continue
        child_bits = [bits[id(c)] for c in children]
        value = _node_bits(node, child_bits)
        if value > MAX_EXACT_BITS:
            raise UnsafeExpression(f"{type(node).__name__} node could need ~{value:.3g} bits")
        bits[id(node)] = value


def _node_bits(node: Any, child_bits: list[float]) -> float:
    import sympy

    if not child_bits:
        return float(_number_bits(node)) if isinstance(node, sympy.Number) else 2.0
    biggest = max(child_bits)
    if isinstance(node, sympy.Pow):
        base_bits, exp_bits = child_bits
        if exp_bits > 60:
            return math.inf
        return base_bits * 2.0**exp_bits
    if isinstance(node, sympy.Mul):
        return sum(child_bits)
    if isinstance(node, sympy.Add):
        return biggest + math.log2(len(child_bits)) + 1
    name = type(node).__name__
    module = type(node).__module__
    if name == "exp":
        return math.inf if biggest > 60 else 1.45 * 2.0**biggest + 2
    if name == "log":
        return math.log2(biggest + 1) + 2
    if name in _BOUNDED_FUNCS:
        return 2.0
    if name in _PASS_THROUGH_FUNCS:
        return biggest + 1
    if module.startswith(_DANGEROUS_MODULES):
        if biggest > _SMALL_ARG_BITS:
            raise UnsafeExpression(f"{name} applied to an argument of ~{biggest:.3g} bits")
        return (2.0**biggest + 1) * (biggest + 1)  # ~ n log2 n, the size of n!
    return biggest + 1  # relations, sets, tuples, other functions: no growth of their own


# ------------------------------------------------------------------------------------ math-verify path
_MV: dict[str, Any] = {}


class _DropTimeoutDisabledWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


def _math_verify() -> dict[str, Any]:
    """Import math-verify once, outside any deadline (an interrupted import would leave broken modules)."""
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


def _symbolic_equal(pred: str, truth: str) -> bool:
    mv = _math_verify()

    def parse(s: str) -> list[Any]:
        out = mv["parse"](
            "\\boxed{" + s + "}",
            extraction_config=mv["config"],
            fallback_mode="no_fallback",
            parsing_timeout=None,  # our deadline covers it
        )
        for expr in out:
            check_expression_size(expr)
        return out

    gold = parse(truth)
    if not gold:
        return False
    target = parse(pred)
    if not target:
        return False
    return bool(mv["verify"](gold, target, timeout_seconds=None))


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


def grade_answer(pred: str | None, truth: str | int | float, timeout_s: float = 2.0) -> bool:
    """True if ``pred`` (an extracted answer, ``None`` if there was none) equals ``truth``.

    Args:
        pred: the model's answer, e.g. the content of its last ``\\boxed{}``; ``None`` grades wrong.
        truth: the ground truth; ``int``/``float`` are converted with ``str()``.
        timeout_s: wall-clock budget for the symbolic check (both parses and the comparison together);
            past it the answer grades wrong. Bounded in the main thread and in worker threads.

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
    if not _within_caps(pred):
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
    if not (_within_caps(t) and _balanced(p) and _balanced(t)):
        return False

    try:
        finished, equal = run_with_deadline(lambda: _symbolic_equal(p, t), timeout_s)
    except UnsafeExpression as e:
        log.debug("grading: refused to evaluate %.80r: %s", pred, e)
        return False
    except Exception:  # a parser / sympy failure on odd input: not equal
        log.debug("grading: symbolic comparison failed for %.80r vs %.80r", pred, truth, exc_info=True)
        return False
    if not finished:
        log.debug("grading: timed out after %.2fs on %.80r", timeout_s, pred)
        return False
    return bool(equal)
