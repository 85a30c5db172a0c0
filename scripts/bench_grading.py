"""Per-response cost of the math reward, and the grading time of deep/long/hostile answers.

What it measures: ``score_response`` (format check + extraction + grading, what the RL loop calls for every
response) on a fixed set of typical responses, split into answers the string fast path decides (numbers,
words) and answers that need the symbolic check (LaTeX), each set graded twice in a row (the second pass
shows the cost once math-verify's caches are warm); and ``grade_answer`` on every answer of
``tests/data/hostile_answers.json`` (the slowest one bounds how far admitted answers stay from the
deadline). Writes JSON with date, commit, machine and command, and prints a Markdown table.

    python scripts/bench_grading.py --out docs/measurements/grading_cost.json

It only uses ``papo.rewards.score_response`` / ``grade_answer``, so the same command measures an older
source tree (``PYTHONPATH=<old tree>/src``) for a before/after comparison.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAST = [
    (f"<think>count</think> The answer is \\boxed{{{k}}}.", str(k if k % 3 else k + 1)) for k in range(40)
]
FAST += [("<think>look</think> \\boxed{red}", "red"), ("<think>x</think> \\boxed{B}", "(B)")] * 10
SYMBOLIC = [
    ("<think>x</think> \\boxed{\\frac{1}{2}}", "0.5"),
    ("<think>x</think> \\boxed{\\frac{2}{3}}", "0.5"),
    ("<think>x</think> \\boxed{\\dfrac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}"),
    ("<think>x</think> \\boxed{(1, 2]}", "(1,2]"),
    ("<think>x</think> \\boxed{x+1}", "1+x"),
    ("<think>x</think> \\boxed{2\\pi}", "2 \\pi"),
    ("<think>x</think> \\boxed{\\left(\\frac{1}{2}, 3\\right)}", "(0.5, 3)"),
    ("<think>x</think> \\boxed{3\\sqrt{3}}", "\\sqrt{27}"),
    ("<think>x</think> \\boxed{45^\\circ}", "45"),
    ("<think>x</think> \\boxed{\\frac{\\pi}{4}}", "\\frac{\\pi}{3}"),
]


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
        return sha.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def per_response_ms(items: list[tuple[str, str]]) -> dict[str, float]:
    from papo.rewards import score_response

    times = []
    for response, truth in items:
        t0 = time.perf_counter()
        score_response(response, truth)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {
        "n": len(times),
        "mean_ms": statistics.fmean(times),
        "median_ms": statistics.median(times),
        "p95_ms": times[int(0.95 * (len(times) - 1))],
        "max_ms": times[-1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    ap.add_argument("--label", default="", help="a name for this measurement (e.g. before / after)")
    args = ap.parse_args()

    from papo.rewards import grade_answer, score_response

    t0 = time.perf_counter()
    score_response(SYMBOLIC[0][0], SYMBOLIC[0][1])  # first symbolic check: imports (and starts a worker)
    first_call_s = time.perf_counter() - t0
    results = {
        "first_symbolic_call_s": first_call_s,
        "fast_path": per_response_ms(FAST),
        "symbolic_first_pass": per_response_ms(SYMBOLIC),
        "symbolic_second_pass": per_response_ms(SYMBOLIC),
    }
    hostile = json.loads((ROOT / "tests" / "data" / "hostile_answers.json").read_text())
    rows = []
    for r in hostile:
        t0 = time.perf_counter()
        grade = grade_answer(r["answer"], r["truth"])
        rows.append(
            {"what": r["what"], "grade": grade, "expected": r["expected"], "s": time.perf_counter() - t0}
        )
    results["hostile"] = rows
    results["hostile_max_s"] = max(r["s"] for r in rows)
    report = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "label": args.label,
        "papo_source": str(Path(sys.modules["papo"].__file__).parent),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_avg_before": os.getloadavg(),
        },
        "results": results,
    }
    print("| set | responses | mean ms | median ms | p95 ms | max ms |\n|---|---|---|---|---|---|")
    for key in ("fast_path", "symbolic_first_pass", "symbolic_second_pass"):
        m = results[key]
        print(
            f"| {key} | {m['n']} | {m['mean_ms']:.2f} | {m['median_ms']:.2f} | {m['p95_ms']:.2f} | {m['max_ms']:.2f} |"
        )
    print(
        f"\nfirst symbolic call {first_call_s:.2f} s; hostile answers: slowest {results['hostile_max_s']:.2f} s"
    )
    for r in rows:
        flag = "" if r["grade"] == r["expected"] else "  (expected " + str(r["expected"]) + ")"
        print(f"  {r['s']:7.3f} s  {r['grade']!s:5}  {r['what']}{flag}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
