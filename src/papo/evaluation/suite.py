"""Averages and the per-benchmark table of an evaluation suite (PAPO's: ``configs/val_sets/papo_eval.yaml``).

PAPO reports avg@8 accuracy per benchmark, with averages over its general benchmarks (Geometry3K, MathVista,
We-Math, MMK12, MathVerse), its vision-dependent ones (LogicVista, Counting, MMMU-Pro, MathVerse_V) and all
of them (docs/algorithm.md, "Evaluation"). :func:`group_averages` computes them from per-benchmark scores:

* ``weighting="benchmark"`` (default): the mean of the benchmark scores of each group, and of all benchmarks
  for ``overall`` (each benchmark counts once, whatever its size);
* ``weighting="question"``: the mean over the questions of the group's benchmarks pooled (each benchmark
  weighted by its question count). This is what PAPO-Eval's ``run_eval.py`` computes when it is given a
  directory ("vision-dependent accuracy"): it concatenates the rows of several benchmark files and averages
  over all of them. Its file list there is Counting, MMMU-Pro and ``AI4Math_MathVerse`` (not
  ``AI4Math_MathVerse_vision_dependent``, and not LogicVista), which does not match the paper's
  vision-dependent group; the groups here are the paper's.

Pure functions on plain numbers: no model, no Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["GROUPS", "WEIGHTINGS", "group_averages", "suite_table"]

#: benchmark groups of PAPO's suite, in table order
GROUPS = ("general", "vision_dependent")
#: how benchmarks are weighted in an average (module docstring)
WEIGHTINGS = ("benchmark", "question")


def _mean(values: Sequence[float], weights: Sequence[float]) -> float:
    total = sum(weights)
    if total <= 0:
        return math.nan
    return sum(v * w for v, w in zip(values, weights, strict=True)) / total


def group_averages(
    scores: Mapping[str, float],
    groups: Mapping[str, str],
    counts: Mapping[str, int] | None = None,
    weighting: str = "benchmark",
) -> dict[str, float]:
    """Averages of per-benchmark ``scores`` per group and ``overall`` (module docstring).

    Args:
        scores: benchmark name -> score (a benchmark without a score is left out of every average).
        groups: benchmark name -> group name (``general`` / ``vision_dependent`` for PAPO's suite).
        counts: benchmark name -> number of questions; needed for ``weighting="question"``.
        weighting: ``benchmark`` (each benchmark once) or ``question`` (pooled questions).

    Returns:
        ``{<group>: average, ..., "overall": average}`` over the groups that have a scored benchmark.

    Raises:
        ValueError: an unknown weighting, a scored benchmark without a group, or missing counts.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r} is unknown; valid: {list(WEIGHTINGS)}")
    ungrouped = sorted(set(scores) - set(groups))
    if ungrouped:
        raise ValueError(f"benchmark(s) {ungrouped} have a score but no group; groups: {dict(groups)}")
    if weighting == "question":
        missing = sorted(set(scores) - set(counts or {}))
        if missing:
            raise ValueError(f"weighting='question' needs the question count of {missing}")

    def weight(name: str) -> float:
        return 1.0 if weighting == "benchmark" else float((counts or {})[name])

    out: dict[str, float] = {}
    order = [g for g in GROUPS if g in groups.values()] + sorted(set(groups.values()) - set(GROUPS))
    for group in order:
        names = [n for n in scores if groups[n] == group]
        if names:
            out[group] = _mean([scores[n] for n in names], [weight(n) for n in names])
    if scores:
        names = list(scores)
        out["overall"] = _mean([scores[n] for n in names], [weight(n) for n in names])
    return out


def suite_table(
    results: Mapping[str, Mapping[str, float]],
    groups: Mapping[str, str],
    counts: Mapping[str, int] | None = None,
    metrics: Sequence[str] = ("acc",),
    weighting: str = "benchmark",
    percent: bool = True,
) -> str:
    """A Markdown table: one row per benchmark (in ``results`` order, grouped), then one per average.

    Args:
        results: benchmark name -> {metric: value}.
        groups / counts / weighting: as :func:`group_averages` (applied to each metric).
        metrics: the columns.
        percent: values x 100 with two decimals (accuracies); False: four decimals as they are.
    """

    def fmt(value: float | None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{100 * value:.2f}" if percent else f"{value:.4f}"

    head = "| benchmark | group | n | " + " | ".join(metrics) + " |"
    lines = [head, "|" + "---|" * (3 + len(metrics))]
    order = [g for g in GROUPS if g in groups.values()] + sorted(set(groups.values()) - set(GROUPS))
    for group in order:
        for name, values in results.items():
            if groups.get(name) == group:
                n = "" if counts is None or name not in counts else str(counts[name])
                cells = " | ".join(fmt(values.get(m)) for m in metrics)
                lines.append(f"| {name} | {group} | {n} | {cells} |")
    averages = {
        m: group_averages({k: v[m] for k, v in results.items() if m in v}, groups, counts, weighting)
        for m in metrics
    }
    for key in [*order, "overall"]:
        if any(key in averages[m] for m in metrics):
            cells = " | ".join(fmt(averages[m].get(key)) for m in metrics)
            lines.append(f"| **{key} average** | | | {cells} |")
    return "\n".join(lines)
