#!/usr/bin/env python
"""Summarise a multirun over RL seeds: val metrics before and after RL, mean and 95% t-interval over seeds.

    python src/train.py -m seed=1,2,3                                   # the main command, 3 RL seeds
    python scripts/seed_summary.py logs/train/multiruns/<time>          # print the table
    python scripts/seed_summary.py logs/train/multiruns/<time> --write docs/results.md

Reads each job's ``final_metrics.json`` (papo.pipeline.train: val metrics before and after RL, RL steps and
seconds, and where the run was made: date, commit, machine, command) and the sweep's ``multirun.yaml`` (the
multirun's overrides). Intervals: papo.utils.seed_stats (scipy.stats.t). ``--write`` replaces the
``results`` section of the given Markdown file (between ``<!-- results:begin -->`` and
``<!-- results:end -->``): docs/results.md's table is this output, never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from papo.utils.finished_runs import FINAL_METRICS_FILE  # noqa: E402
from papo.utils.provenance import describe_machine, provenance, replace_section  # noqa: E402
from papo.utils.seed_stats import mean_ci  # noqa: E402

KEYS = (
    ("val/sampled/acc", "avg@k, T = 1.0"),
    ("val/sampled/acc_masked", ""),
    ("val/sampled/vision_gap", ""),
    ("val/acc", "greedy"),
    ("val/acc_masked", "greedy"),
    ("val/vision_gap", "greedy"),
    ("val/acc_by_vd/high", "greedy"),
)
SECTION = "results"


def _ci(values: list[float]) -> str:
    """``mean ± half-width`` in percent (the mean alone for one value)."""
    m, h, n = mean_ci(values)
    return f"{100 * m:.1f}" if n < 2 else f"{100 * m:.1f} ± {100 * h:.1f}"


def sweep_command(sweep: Path) -> str:
    """The multirun's command from Hydra's ``<sweep>/multirun.yaml`` (``python src/train.py -m <overrides>``)."""
    import yaml

    try:
        task = yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]
    except (OSError, KeyError, TypeError):
        return "unknown (no multirun.yaml)"
    return " ".join(["python src/train.py -m", *task])


def summary(sweep: Path) -> str:
    """The Markdown table with where its numbers come from."""
    runs = [json.loads(p.read_text()) for p in sorted(sweep.glob(f"*/{FINAL_METRICS_FILE}"))]
    if not runs:
        raise SystemExit(f"no */{FINAL_METRICS_FILE} under {sweep}")
    prov: list[dict[str, Any]] = [r.get("provenance") or {} for r in runs]
    dates = sorted(p["date"] for p in prov if p.get("date"))
    commits = sorted({p.get("commit", "not recorded") for p in prov})
    machines = sorted({describe_machine(p["machine"]) for p in prov if p.get("machine")})
    lines = [
        f"Command: `{sweep_command(sweep)}` ({len(runs)} runs, RL seeds {[r.get('seed') for r in runs]}; "
        f"RL steps {[r.get('rl_steps') for r in runs]}; RL seconds {[round(r.get('rl_seconds') or 0) for r in runs]}).",
        f"Finished {dates[0] if dates else '?'} .. {dates[-1] if dates else '?'}, commit "
        f"{', '.join(commits)}, on {'; '.join(machines) or 'not recorded'}.",
        "",
        "| metric (%) | protocol | before RL | after RL | change | per-seed change |",
        "|---|---|---|---|---|---|",
    ]
    for key, protocol in KEYS:
        if not all(key in r.get("after", {}) and key in r.get("before", {}) for r in runs):
            continue
        before = [r["before"][key] for r in runs]
        after = [r["after"][key] for r in runs]
        diff = [a - b for a, b in zip(after, before, strict=True)]
        per = ", ".join(f"{100 * d:+.1f}" for d in diff)
        lines.append(f"| `{key}` | {protocol} | {_ci(before)} | {_ci(after)} | {_ci(diff)} | {per} |")
    lines += [
        "",
        "Mean ± half-width of the 95% t-interval over the seeds (scipy.stats.t, n - 1 degrees of freedom).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument(
        "--write", type=Path, default=None, help=f"Markdown file whose '{SECTION}' section to replace"
    )
    args = ap.parse_args(argv)
    table = summary(args.sweep_dir)
    print(table)
    if args.write:
        gen = provenance(f"python scripts/seed_summary.py {args.sweep_dir} --write {args.write}")
        header = (
            f"Generated {gen['date']} by `{gen['command']}` (commit {gen['commit']}) from the runs' "
            f"{FINAL_METRICS_FILE}; regenerate it the same way, never edit it by hand.\n\n"
        )
        replace_section(args.write, SECTION, header + table)
        print(f"wrote the '{SECTION}' section of {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
