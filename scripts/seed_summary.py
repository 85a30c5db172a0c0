"""Summarise a multirun over RL seeds: val metrics before and after RL, mean / std / 95% interval.

    python scripts/seed_summary.py logs/<task>/multiruns/<time>      # reads <job>/final_metrics.json

Prints a Markdown table (the one in the README's results section comes from this script).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

KEYS = (
    "val/acc",
    "val/acc_masked",
    "val/vision_gap",
    "val/sampled/acc",
    "val/sampled/acc_masked",
    "val/sampled/vision_gap",
    "val/acc_by_vd/high",
)
# two-sided 95% t quantiles for n - 1 degrees of freedom
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _ci(values: list[float]) -> str:
    m = statistics.mean(values)
    if len(values) < 2:
        return f"{100 * m:.1f}"
    s = statistics.stdev(values)
    half = T95.get(len(values) - 1, 1.96) * s / math.sqrt(len(values))
    return f"{100 * m:.1f} ± {100 * half:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", type=Path)
    args = ap.parse_args()
    runs = [json.loads(p.read_text()) for p in sorted(args.sweep_dir.glob("*/final_metrics.json"))]
    if not runs:
        raise SystemExit(f"no */final_metrics.json under {args.sweep_dir}")
    seeds = [r.get("seed") for r in runs]
    print(
        f"{len(runs)} runs, seeds {seeds}; RL steps {[r.get('rl_steps') for r in runs]}; "
        f"RL seconds {[round(r.get('rl_seconds') or 0) for r in runs]}\n"
    )
    print("| metric (%) | before RL | after RL | change | per-seed change |")
    print("|---|---|---|---|---|")
    for k in KEYS:
        if not all(k in r["after"] and k in r["before"] for r in runs):
            continue
        before = [r["before"][k] for r in runs]
        after = [r["after"][k] for r in runs]
        diff = [a - b for a, b in zip(after, before, strict=True)]
        per = ", ".join(f"{100 * d:+.1f}" for d in diff)
        print(f"| `{k}` | {_ci(before)} | {_ci(after)} | {_ci(diff)} | {per} |")
    print("\n(mean ± half-width of the 95% t-interval over seeds)")


if __name__ == "__main__":
    main()
