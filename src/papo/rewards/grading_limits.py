"""Input limits of the symbolic answer check: what math-verify may be asked to parse and compare.

What it implements: limits that depend only on the answer, never on time, so that the same answer is always
admitted or always refused, and every admitted answer is graded far inside the deadline of
:mod:`papo.rewards.grading_worker` (the limits and the costs they bound are measured by
``scripts/bench_grading.py``; docs/reliability.md, "Grading", explains them).

* Before parsing (:func:`text_limit_violation`): the length (:data:`MAX_ANSWER_CHARS`), the bracket nesting
  depth (:data:`MAX_NESTING_DEPTH`; math-verify's ANTLR parser falls back to full-context prediction at every
  nested ``(``/``[``/``{``, so its time grows steeply with depth), and the LaTeX commands that
  latex2sympy2 evaluates *while parsing*: matrix functions (``\\det``, ``\\operatorname{eye|rank|rref|...}``)
  are refused, and ``\\binom`` / ``\\choose`` / ``\\Gamma`` only take integer literals up to
  :data:`MAX_COMBINATORIAL_ARG`.
* After parsing, before ``verify`` (:func:`check_expression_size`): the tree size
  (:data:`MAX_TREE_NODES`), a bound on the bit size of every exact number the tree could evaluate to
  (:data:`MAX_EXACT_BITS`; ``verify`` calls ``doit()``, and ``9^{9^{9^{9}}}`` would be one CPython big-int
  power), the arguments of combinatorial / special / number-theory functions, and a bound on the number of
  terms a polynomial expansion could produce (:data:`MAX_EXPANDED_TERMS`; ``simplify((x+y+z)^{50} - 1)``
  expands to 1,326 terms and runs for seconds).
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = [
    "MAX_ANSWER_CHARS",
    "MAX_COMBINATORIAL_ARG",
    "MAX_EXACT_BITS",
    "MAX_EXPANDED_TERMS",
    "MAX_NESTING_DEPTH",
    "MAX_TREE_NODES",
    "UnsafeExpression",
    "check_expression_size",
    "nesting_depth",
    "text_limit_violation",
]

MAX_ANSWER_CHARS = 200
"""Answers (prediction or ground truth) longer than this never reach the parser."""
MAX_NESTING_DEPTH = 4
"""Answers with ``()[]{}`` nesting deeper than this never reach the parser."""
MAX_EXACT_BITS = 100_000
"""Bound on the bit size of any exact number a parsed expression could evaluate to (~30,000 digits)."""
MAX_COMBINATORIAL_ARG = 10_000
"""Largest argument of factorial / binomial / gamma / prime / ... that is allowed to reach sympy."""
MAX_TREE_NODES = 400
"""Parsed expressions with more sympy nodes than this are graded wrong."""
MAX_EXPANDED_TERMS = 64
"""Bound on the number of terms the expansion of a parsed polynomial expression could have."""

_MATRIX_COMMANDS = re.compile(
    r"\\det\b|\\operatorname\s*\{\s*(?:eye|rank|trace|tr|rref|nullspace|norm|eig\w*|diagonalize|svd|SVD)\s*\}"
)
_CALCULUS = re.compile(r"\\(?:i{1,3}nt|oint|lim|sum|prod|partial)(?![A-Za-z])")
_EVALUATED_AT_PARSE = re.compile(r"\\[dt]?binom\b|\\choose\b|\\Gamma\b|\\gamma\b")
_INTEGER = re.compile(r"\d+")


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


def text_limit_violation(s: str) -> str | None:
    """Why ``s`` must not reach the parser, or None. Linear in ``len(s)`` (checked in that order)."""
    if len(s) > MAX_ANSWER_CHARS:
        return f"{len(s)} characters > {MAX_ANSWER_CHARS}"
    depth = nesting_depth(s)
    if depth > MAX_NESTING_DEPTH:
        return f"bracket nesting {depth} > {MAX_NESTING_DEPTH}"
    m = _MATRIX_COMMANDS.search(s)
    if m:
        return f"{m.group()!r} is evaluated while parsing"
    m = _CALCULUS.search(s)
    if m:
        return f"{m.group()!r}: verify would evaluate it (integrals, limits, sums have no cost bound)"
    if _EVALUATED_AT_PARSE.search(s):
        big = [n for n in _INTEGER.findall(s) if len(n) > 6 or int(n) > MAX_COMBINATORIAL_ARG]
        if big:
            return (
                f"integer {big[0][:20]} > {MAX_COMBINATORIAL_ARG} next to a command evaluated while parsing"
            )
    return None


class UnsafeExpression(ValueError):
    """A parsed expression that could make sympy compute astronomically large numbers or expansions."""


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
    """Raise :class:`UnsafeExpression` if comparing ``expr`` could create huge numbers or expansions.

    Computes, bottom-up, an upper bound on the bit size of every subexpression (symbols count as small):
    ``bits(a*b) <= bits(a) + bits(b)``, ``bits(a**e) <= bits(a) * |e|``, ``bits(exp(x)) <= 1.45 |x|``, ...
    and an upper bound on the number of terms its expansion could have (``terms(a+b) = terms(a) + terms(b)``,
    ``terms(a*b) = terms(a) * terms(b)``, ``terms(a**n) = terms(a)**|n|`` for a base with symbols). A node
    over :data:`MAX_EXACT_BITS` bits or :data:`MAX_EXPANDED_TERMS` terms, a combinatorial / special /
    number-theory / summation node with an argument above :data:`MAX_COMBINATORIAL_ARG`, or a tree with more
    than :data:`MAX_TREE_NODES` nodes is rejected. Iterative (no recursion limit issues); only reads the tree.
    """
    import sympy
    from sympy.matrices import MatrixBase

    sizes: dict[int, tuple[float, float, bool]] = {}  # id -> (bits, terms, has symbols)
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
            sizes[id(node)] = (2.0, 1.0, False)
            continue
        if not expanded:
            seen += 1
            if seen > MAX_TREE_NODES:
                raise UnsafeExpression(f"expression has more than {MAX_TREE_NODES} nodes")
            stack.append((node, True))
            stack.extend((c, False) for c in children)
            continue
        child = [sizes[id(c)] for c in children]
        bits = _node_bits(node, [c[0] for c in child])
        if bits > MAX_EXACT_BITS:
            raise UnsafeExpression(f"{type(node).__name__} node could need ~{bits:.3g} bits")
        terms, symbolic = _node_terms(node, child)
        if terms > MAX_EXPANDED_TERMS:
            raise UnsafeExpression(f"{type(node).__name__} node could expand to ~{terms:.3g} terms")
        sizes[id(node)] = (bits, terms, symbolic)


def _node_terms(node: Any, child: list[tuple[float, float, bool]]) -> tuple[float, bool]:
    """(bound on the terms of ``node`` brought over a common denominator and expanded, whether it contains
    symbols). A child's bound counts the terms of its numerator times those of its denominator."""
    import sympy

    if not child:
        return 1.0, isinstance(node, sympy.Symbol)
    symbolic = any(c[2] for c in child)
    if isinstance(node, sympy.Add | sympy.Mul):
        # a sum over a common denominator multiplies every term by the other terms' denominators: the
        # product bounds both the sum and the product
        if isinstance(node, sympy.Add) and not any(_has_symbolic_denominator(a) for a in node.args):
            return sum(c[1] for c in child), symbolic
        return math.prod(c[1] for c in child) * (len(child) if isinstance(node, sympy.Add) else 1), symbolic
    if isinstance(node, sympy.Pow):
        (_, base_terms, base_symbolic), _ = child
        exponent = node.args[1]
        if base_symbolic and base_terms > 1 and isinstance(exponent, sympy.Integer):
            n = abs(int(exponent))
            return (math.inf if n > 64 else base_terms**n), symbolic
        return base_terms, symbolic
    return max(c[1] for c in child), symbolic


def _has_symbolic_denominator(term: Any) -> bool:
    import sympy

    factors = term.args if isinstance(term, sympy.Mul) else (term,)
    return any(
        isinstance(f, sympy.Pow) and f.args[1].is_negative and bool(f.args[0].free_symbols) for f in factors
    )


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
