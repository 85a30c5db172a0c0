#!/usr/bin/env python
"""The reproduction's report: read every finished run of a reproduction sweep and write the table and plots.

    python scripts/repro_report.py logs/reproduce_quick              # results.md / .csv, runs.csv, plots
    python scripts/repro_report.py logs/reproduce_quick --sft-steps  # print the continued-SFT step count
    python scripts/repro_report.py logs/reproduce_testbed --write docs/testbed.md   # also its docs section

The runs are the jobs of ``python src/train.py -m reproduce=quick|full`` (configs/reproduce,
docs/reproduction.md): ``<sweep dir>/<arm>/seed<k>/``, each with the ``final_metrics.json`` papo.pipeline.train
writes when a run finishes and Hydra's ``.hydra/config.yaml``, whose ``repro`` node (set by the arm's
configs/experiment/repro/<arm>.yaml) names the arm, its group, the claim it tests, the contrasts to print
and its points on the gamma / mask-ratio curves. Nothing about the arms is hard-coded here: a new arm is a
new config file.

Per arm: mean and 95 % t-interval over seeds (papo.utils.seed_stats, scipy.stats.t) of the final val
accuracy under the published protocol, avg@k at T = 1.0 (``val/sampled/*``), overall and per
vision-dependency level, with the masked image, the vision gap, and greedy accuracy (``val/acc``) as a column
of its own; mean RL steps and wall time. "Accuracy with the masked image" is always PAPO's default view: for
arms trained with another view (``repro.standard_view: false``) it comes from the default-view re-evaluation
``<run>/eval/eval_val_last.json`` (configs/reproduce_eval), and is n/a until that exists. The warm-start row
is the grpo arm's validation before RL. Then the paired differences (same seed: same data order and masks).

``--sft-steps``: the continued-SFT control's step count at matched compute, the mean RL wall time of the arms
its config names (``repro.match_time_of``: grpo, papo_g) divided by the SFT seconds per step measured by the
``sft_calibration`` runs of the same sweep (their continuation's ``warm_start.json``).

Outputs in the sweep dir: ``results.md`` (with the runs' date, commit, machine and launch commands, and the
stage times scripts/reproduce.py recorded in ``timing.json``), ``results.csv``, ``runs.csv``,
``differences.csv``, ``acc_by_arm.png``, ``gamma_curve.png``, ``mask_ratio_curve.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from omegaconf import OmegaConf  # noqa: E402

from papo.utils.finished_runs import FINAL_METRICS_FILE, load_final_metrics  # noqa: E402
from papo.utils.provenance import describe_machine, provenance, replace_section  # noqa: E402
from papo.utils.seed_stats import mean_ci  # noqa: E402

#: table rows in this order (calibration runs have no row)
GROUP_ORDER = ("main", "sft", "gamma", "mask", "control")
#: vision-dependency levels reported (a level no run has is left out of the table; the shortcut testbed's rows are
#: high = shortcut-breaking, low = shortcut-consistent: papo.data.shortcut)
VD_LEVELS = ("high", "medium", "low", "none")
EVAL_FILE = Path("eval") / "eval_val_last.json"  # src/eval.py's default-view re-evaluation of a run
SFT_ARM_CONFIG = ROOT / "configs" / "experiment" / "repro" / "sft_continued.yaml"
TIMING_FILE = "timing.json"  # written by scripts/reproduce.py


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class Run:
    """One finished run: its arm (the ``repro`` node of its config) and its final metrics."""

    dir: Path
    repro: dict[str, Any]
    seed: int
    final: dict[str, Any]
    protocol: tuple[int, float]  # (k, T) of its sampled validation
    values: dict[str, float] = field(default_factory=dict)  # table columns
    masked_source: str = "train"  # train: the run's own validation; eval: the default-view re-evaluation

    @property
    def arm(self) -> str:
        return self.repro["arm"]


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def columns_of(metrics: dict[str, float]) -> dict[str, float]:
    """The table's columns from one validation's metrics (``final_metrics.json``'s before / after)."""
    keys = {
        "acc": "val/sampled/acc",
        **{f"acc_vd_{v}": f"val/sampled/acc_by_vd/{v}" for v in VD_LEVELS},
        "acc_masked": "val/sampled/acc_masked",
        "acc_greedy": "val/acc",
    }
    out = {col: float(metrics.get(key, math.nan)) for col, key in keys.items()}
    out["vision_gap"] = out["acc"] - out["acc_masked"]
    return out


def read_run(run_dir: Path) -> Run | None:
    """The run in ``run_dir`` if it finished and belongs to a reproduction arm, else None."""
    final = load_final_metrics(run_dir)
    cfg_file = run_dir / ".hydra" / "config.yaml"
    if final is None or not cfg_file.exists():
        return None
    cfg = OmegaConf.load(cfg_file)
    if not cfg.get("repro"):
        return None
    repro = OmegaConf.to_container(cfg.repro, resolve=True)
    rollout = cfg.get("rollout") or {}
    protocol = (int(rollout.get("val_sampled_k", 0)), float(rollout.get("val_sampled_temperature", 1.0)))
    run = Run(run_dir, repro, int(final.get("seed", cfg.get("seed", -1))), final, protocol)
    run.values = columns_of(final.get("after") or {})
    if not repro.get("standard_view", True):
        ev = _load_json(run_dir / EVAL_FILE) or {}
        masked = (ev.get("metrics") or {}).get(f"avg@{protocol[0]}/acc_masked", math.nan)
        run.values["acc_masked"] = float(masked)
        run.values["vision_gap"] = run.values["acc"] - run.values["acc_masked"]
        run.masked_source = "eval"
    return run


def find_runs(sweep: Path) -> tuple[list[Run], list[Path]]:
    """(finished reproduction runs, run dirs without final_metrics.json) under ``<sweep>/<arm>/seed<k>``."""
    runs, unfinished = [], []
    for d in sorted(p.parent for p in sweep.glob("*/seed*/.hydra")):
        run = read_run(d)
        if run is not None:
            runs.append(run)
        elif not (d / FINAL_METRICS_FILE).exists():
            unfinished.append(d)
    return runs, unfinished


def sft_seconds(run: Run) -> float | None:
    """The continued-SFT wall time of a run (its continuation's ``warm_start.json``)."""
    ws = _load_json(Path(run.final.get("policy_dir", "")) / "warm_start.json")
    return float(ws["seconds"]) if ws and "seconds" in ws else None


# ---------------------------------------------------------------------------------------------- matched SFT


def matched_sft_steps(runs: list[Run], match_time_of: list[str] | None = None) -> tuple[int, dict[str, Any]]:
    """Continued-SFT steps taking as long as the mean RL stage: mean RL seconds of the ``match_time_of`` arms
    / SFT seconds per step of the calibration runs. Returns (steps, the numbers it came from)."""
    if match_time_of is None:
        match_time_of = list(OmegaConf.load(SFT_ARM_CONFIG).repro.match_time_of)
    rl = [float(r.final["rl_seconds"]) for r in runs if r.arm in match_time_of and r.final.get("rl_seconds")]
    cal = []
    for r in runs:
        ws = _load_json(Path(r.final.get("policy_dir", "")) / "warm_start.json") or {}
        if r.repro.get("group") == "calibration" and ws.get("seconds") and ws.get("config"):
            cal.append((float(ws["seconds"]), int(ws["config"]["max_steps"])))
    if not rl or not cal:
        raise SystemExit(
            f"need finished runs of {match_time_of} (RL time) and of sft_calibration (SFT time per step); "
            f"found {len(rl)} and {len(cal)}: run stage 1 first (python src/train.py -m reproduce=...)"
        )
    per_step = sum(s for s, _ in cal) / sum(n for _, n in cal)
    steps = max(1, round(statistics.fmean(rl) / per_step))
    basis = {"rl_seconds_mean": statistics.fmean(rl), "rl_runs": len(rl), "sft_s_per_step": per_step}
    return steps, {**basis, "calibration_runs": len(cal), "steps": steps}


# ---------------------------------------------------------------------------------------------- tables


def _row_key(arm: str, repro: dict[str, Any]) -> tuple:
    group = repro.get("group", "")
    rank = GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER)
    x = min(repro.get("curves", {}).values(), default=0.0) if group in ("gamma", "mask") else 0.0
    return (rank, x, arm)


def by_arm(runs: list[Run]) -> dict[str, list[Run]]:
    """The table's rows: ``warm_start`` (validation before RL) first, then the arms in group order."""
    arms: dict[str, list[Run]] = {}
    for r in sorted(runs, key=lambda r: (_row_key(r.arm, r.repro), r.seed)):
        if r.repro.get("group") != "calibration":
            arms.setdefault(r.arm, []).append(r)
    # the arm that validated before RL (configs/experiment/repro/grpo.yaml: validate_before) gives the row
    with_before = [r for r in runs if r.final.get("before")]
    before = [
        Run(
            r.dir,
            {"arm": "warm_start", "group": "warm_start", "claim": "the SFT warm start, before RL"},
            r.seed,
            {"rl_steps": 0},
            r.protocol,
            columns_of(r.final["before"]),
        )
        for r in with_before
        if r.arm == with_before[0].arm
    ]
    return ({"warm_start": before} if before else {}) | arms


COLUMNS = ("acc", *(f"acc_vd_{v}" for v in VD_LEVELS), "acc_masked", "vision_gap", "acc_greedy")


def summarize(arms: dict[str, list[Run]]) -> list[dict[str, Any]]:
    """One row per arm: n, seeds, and mean / 95 % interval bounds of every column; RL steps, wall time."""
    rows = []
    for arm, runs in arms.items():
        row: dict[str, Any] = {
            "arm": arm,
            "group": runs[0].repro.get("group"),
            "claim": runs[0].repro.get("claim"),
            "n": len(runs),
            "seeds": " ".join(str(r.seed) for r in runs),
        }
        for key in COLUMNS:
            m, h, _ = mean_ci([r.values.get(key) for r in runs])
            row[f"{key}_mean"], row[f"{key}_ci95_lo"], row[f"{key}_ci95_hi"] = m, m - h, m + h
        steps = [r.final.get("rl_steps") for r in runs if r.final.get("rl_steps") is not None]
        secs = [sft_seconds(r) if r.repro.get("group") == "sft" else r.final.get("rl_seconds") for r in runs]
        secs = [s for s in secs if s is not None]
        row["rl_steps_mean"] = statistics.fmean(steps) if steps else math.nan
        row["wall_s_mean"] = statistics.fmean(secs) if secs and arm != "warm_start" else math.nan
        row["masked_source"] = ",".join(sorted({r.masked_source for r in runs}))
        rows.append(row)
    return rows


def paired_differences(arms: dict[str, list[Run]], key: str | None = None) -> list[dict[str, Any]]:
    """``a - b`` of a column over the seeds both arms finished, for every contrast an arm's config declares:
    of ``key``, or (None) of every column the arm's ``repro.difference_keys`` names (default: ``acc``)."""
    out = []
    for a, runs in arms.items():
        keys = [key] if key else list(runs[0].repro.get("difference_keys") or ["acc"])
        for b, question in (runs[0].repro.get("contrasts") or {}).items():
            if b not in arms:
                continue
            for col in keys:
                va = {r.seed: r.values.get(col, math.nan) for r in runs}
                vb = {r.seed: r.values.get(col, math.nan) for r in arms[b]}
                m, h, n = mean_ci([va[k] - vb[k] for k in sorted(set(va) & set(vb))])
                out.append(
                    {"a": a, "b": b, "question": question, "metric": col, "n": n, "mean": m}
                    | {"ci95_lo": m - h, "ci95_hi": m + h}
                )
    return out


def _pm(mean: float, lo: float, hi: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.3f}" if not math.isfinite(lo) else f"{mean:.3f} ± {(hi - lo) / 2:.3f}"


def _num(x: float, fmt: str = ".0f") -> str:
    return "n/a" if not math.isfinite(x) else format(x, fmt)


def format_markdown(rows: list[dict], diffs: list[dict], protocol: tuple[int, float]) -> str:
    """The results table (mean ± 95 % t-interval half-width over seeds) and the paired differences."""
    k, t = protocol
    heads = [f"val acc avg@{k}", *(f"acc vd={v}" for v in VD_LEVELS), "acc masked image", "vision gap"]
    heads += ["greedy acc"]
    # a vision-dependency level that no arm's data has is left out
    shown = [
        (c, h)
        for c, h in zip(COLUMNS, heads, strict=True)
        if not c.startswith("acc_vd_") or any(math.isfinite(r[f"{c}_mean"]) for r in rows)
    ]
    cols = ["arm", "n", *(h for _, h in shown), "RL steps", "wall s", "tests"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["arm"], str(r["n"])]
        cells += [_pm(r[f"{c}_mean"], r[f"{c}_ci95_lo"], r[f"{c}_ci95_hi"]) for c, _ in shown]
        cells += [_num(r["rl_steps_mean"]), _num(r["wall_s_mean"]), str(r["claim"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Mean ± half-width of the 95 % t-interval over seeds. Accuracies are avg@{k} at T = {t} (the published",
        "protocol, with k = 8 there) except 'greedy acc'. 'acc masked image': PAPO's default view (random 14 px",
        "patches, p = 0.6) for every arm, re-evaluated for arms trained with another view (n/a until that",
        "re-evaluation exists); 'vision gap' = acc - acc masked. 'wall s': the RL stage (continued SFT: its SFT",
        "stage). 'RL steps' below the configured steps: the run stopped early (collapse detector).",
    ]
    if diffs:
        lines += ["", "Paired differences (a - b over the seeds both finished, mean ± 95 % t-interval):", ""]
        lines += ["| a - b | question | metric | n | difference |", "|---|---|---|---|---|"]
        lines += [
            f"| {d['a']} - {d['b']} | {d['question']} | {d.get('metric', 'acc')} | {d['n']} | "
            f"{_pm(d['mean'], d['ci95_lo'], d['ci95_hi'])} |"
            for d in diffs
        ]
    return "\n".join(lines) + "\n"


def format_provenance(runs: list[Run], unfinished: list[Path], sweep: Path) -> str:
    """Where the numbers come from: the runs' dates, commits, machines and commands; stage times; gaps."""
    prov = [r.final.get("provenance") or {} for r in runs]
    dates = sorted(p["date"] for p in prov if p.get("date"))
    commits = sorted({p.get("commit", "unknown") for p in prov})
    machines = sorted({describe_machine(p["machine"]) for p in prov if p.get("machine")})
    lines = [
        f"Runs: {len(runs)} finished under `{shown(sweep)}`, finished {dates[0] if dates else '?'} .. "
        f"{dates[-1] if dates else '?'}; commit(s) {', '.join(commits) or 'not recorded'}; "
        f"machine(s): {'; '.join(machines) or 'not recorded'}.",
    ]
    variants = launch_variants(runs)
    if len(variants) > 1:  # e.g. a re-run with other steps or sizes into the same sweep dir
        lines += [
            "",
            "**The runs were launched with different settings** (overrides besides arm and seed):",
            "",
        ]
        lines += [f"- {n} run(s): `{' '.join(v) or '(none)'}`" for v, n in variants.items()]
    for inv in (_load_json(sweep / TIMING_FILE) or {}).get("invocations", []):
        total = sum(s["seconds"] for s in inv.get("stages", []))
        lines += [
            "",
            f"`{inv.get('command')}` on {inv.get('date')} (commit {inv.get('commit')}; "
            f"{describe_machine(inv.get('machine') or {})}): {total / 60:.1f} min in all",
            "",
        ]
        lines += [
            f"- `{s['command']}`: {s['seconds'] / 60:.1f} min, exit {s['returncode']}" for s in inv["stages"]
        ]
    if unfinished:
        lines += ["", f"Unfinished runs (no {FINAL_METRICS_FILE}; re-run the same command to resume):", ""]
        lines += [f"- `{d.relative_to(sweep)}`" for d in unfinished]
    return "\n".join(lines) + "\n"


#: overrides that differ between the runs of one reproduction by design
PER_RUN_KEYS = ("seed", "experiment", "warm_start.continue_steps")


def launch_variants(runs: list[Run]) -> dict[tuple[str, ...], int]:
    """The distinct launch settings of ``runs`` (their recorded overrides without arm and seed) and how many
    runs each has: more than one means the sweep dir mixes runs made with other steps, sizes or overrides."""
    out: dict[tuple[str, ...], int] = {}
    for r in runs:
        cmd = (r.final.get("provenance") or {}).get("command")
        if not cmd:
            continue
        rest = tuple(
            sorted(o for o in cmd.split()[1:] if o.split("=", 1)[0].lstrip("+~") not in PER_RUN_KEYS)
        )
        out[rest] = out.get(rest, 0) + 1
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows (dicts) as CSV, columns in first-seen order."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


# ---------------------------------------------------------------------------------------------- plots


def _err(r: dict[str, Any], key: str) -> float:
    h = (r[f"{key}_ci95_hi"] - r[f"{key}_ci95_lo"]) / 2
    return h if math.isfinite(h) else 0.0


def make_plots(
    rows: list[dict], arms: dict[str, list[Run]], out: Path, protocol: tuple[int, float]
) -> list[Path]:
    """``acc_by_arm.png`` (real and masked image per arm) and, with >= 2 points, ``gamma_curve.png`` and
    ``mask_ratio_curve.png`` (overall and vision-dependency-high accuracy; GRPO and warm start as lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    ylabel = f"final val accuracy (avg@{protocol[0]}, T={protocol[1]:g})"
    written = []
    if rows:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(rows) + 2), 4.2))
        xs = range(len(rows))
        for off, key, label in ((-0.2, "acc", "real image"), (0.2, "acc_masked", "masked image (p=0.6)")):
            ys = [r[f"{key}_mean"] for r in rows]
            ax.bar([x + off for x in xs], ys, 0.4, yerr=[_err(r, key) for r in rows], capsize=3, label=label)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f"{r['arm']}\n(n={r['n']})" for r in rows], rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title("Final val accuracy per arm (mean, 95% t-interval over seeds)", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "acc_by_arm.png", dpi=120)
        plt.close(fig)
        written.append(out / "acc_by_arm.png")
    by_name = {r["arm"]: r for r in rows}
    for curve, fname, xlabel, logx in (
        ("gamma", "gamma_curve.png", "gamma (PAPO-G)", True),
        ("mask", "mask_ratio_curve.png", "mask ratio (PAPO-G)", False),
    ):
        pts = sorted(
            (float(runs[0].repro["curves"][curve]), by_name[a])
            for a, runs in arms.items()
            if curve in (runs[0].repro.get("curves") or {})
        )
        if len(pts) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for key, label in (("acc", "real image"), ("acc_vd_high", "vision-dependency high")):
            ys = [r[f"{key}_mean"] for _, r in pts]
            ax.errorbar(
                [x for x, _ in pts],
                ys,
                yerr=[_err(r, key) for _, r in pts],
                marker="o",
                capsize=3,
                label=label,
            )
        for arm, ls, label in (("grpo", "--", "GRPO (overall)"), ("warm_start", ":", "warm start (overall)")):
            if arm in by_name:
                ax.axhline(by_name[arm]["acc_mean"], color="grey", ls=ls, label=label)
        if logx:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks([x for x, _ in pts], [f"{x:g}" for x, _ in pts])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
        written.append(out / fname)
    return written


# ---------------------------------------------------------------------------------------------- CLI


def shown(path: Path) -> str:
    """``path`` as the report names it: relative to the repository when inside it (logs/...), else as is."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def report(sweep: Path, write: Path | None = None) -> str:
    """Write results.md / results.csv / runs.csv / differences.csv and the plots into ``sweep``; return the
    Markdown. ``write``: also replace the ``<sweep name>`` section of that Markdown file by it (its title
    left out)."""
    runs, unfinished = find_runs(sweep)
    if not runs:
        raise SystemExit(f"no finished reproduction runs (<arm>/seed<k>/{FINAL_METRICS_FILE}) under {sweep}")
    protocol = runs[0].protocol
    arms = by_arm(runs)
    rows = summarize(arms)
    diffs = paired_differences(arms)
    command = f"python scripts/repro_report.py {shown(sweep)}" + (f" --write {shown(write)}" if write else "")
    gen = provenance(command)
    body = (
        f"Generated {gen['date']} by `{gen['command']}` (commit {gen['commit']}) from the runs' saved metrics; "
        "do not edit by hand.\n\n"
        + format_provenance(runs, unfinished, sweep)
        + "\n"
        + format_markdown(rows, diffs, protocol)
    )
    md = f"# Reproduction on the embedded task: {sweep.name}\n\n{body}"
    (sweep / "results.md").write_text(md)
    if write is not None:
        replace_section(write, sweep.name, body)
    write_csv(sweep / "results.csv", rows)
    if diffs:
        write_csv(sweep / "differences.csv", diffs)
    write_csv(
        sweep / "runs.csv",
        [
            {
                "arm": r.arm,
                "seed": r.seed,
                **r.values,
                "rl_steps": r.final.get("rl_steps"),
                "wall_s": sft_seconds(r) if r.repro.get("group") == "sft" else r.final.get("rl_seconds"),
                "masked_source": r.masked_source,
                "dir": str(r.dir),
            }
            for rs in arms.values()
            for r in rs
            if r.arm != "warm_start"
        ],
    )
    make_plots(rows, arms, sweep, protocol)
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "sweep_dir", type=Path, help="the reproduction's hydra.sweep.dir, e.g. logs/reproduce_quick"
    )
    ap.add_argument(
        "--sft-steps",
        action="store_true",
        help="print the continued-SFT step count at matched compute and exit",
    )
    ap.add_argument(
        "--write",
        type=Path,
        default=None,
        help="Markdown file whose '<sweep dir name>' section (<!-- NAME:begin/end --> markers) to replace",
    )
    args = ap.parse_args(argv)
    sweep = args.sweep_dir.resolve()
    if args.sft_steps:
        steps, basis = matched_sft_steps(find_runs(sweep)[0])
        print(steps)
        print(json.dumps(basis), file=sys.stderr)
        return 0
    md = report(sweep, args.write.resolve() if args.write else None)
    print(md)
    print(
        f"wrote {sweep / 'results.md'}, results.csv, runs.csv and the plots"
        + (f"; {args.write}" if args.write else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
