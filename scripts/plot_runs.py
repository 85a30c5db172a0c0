#!/usr/bin/env python
"""Plot training runs from their CSV logs (no W&B needed): PNG dashboards for one run, several runs, or a
Hydra sweep (multirun) directory.

    python scripts/plot_runs.py logs/train/runs/<run>                    # one run
    python scripts/plot_runs.py logs/train/runs/<a> logs/train/runs/<b>  # overlaid
    python scripts/plot_runs.py logs/train/multiruns/<sweep>             # every job + sweep summary
    python scripts/plot_runs.py <paths> --out plots/ --sweep-key loss.gamma --metric val/acc

A run is a directory with ``csv/metrics.csv`` (``logger=csv`` or the default logger). A sweep directory
holds job directories (``0/``, ``1/``, ...); each job's parameters come from ``csv/hparams.yaml`` (the
resolved, flattened config), else ``.hydra/overrides.yaml``. Writes into ``--out`` (default:
``<first path>/plots``): ``reward.png``, ``accuracy.png``, ``val_real_vs_masked.png``, ``kl_prcp.png``,
``entropy.png``, ``clipfrac.png``, ``overview.png`` (all panels), and with two or more runs that differ in
``--sweep-key``: ``sweep_summary.png`` / ``sweep_summary.csv`` (final ``--metric`` vs the key, mean and std
over seeds). A step where ``train/collapse/flag`` first turned on is marked with a red line.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import yaml
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter


@dataclass
class Run:
    """One training run: its metrics (one row per step) and its parameters."""

    path: Path
    df: pd.DataFrame
    params: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    label: str = ""  # short: the differing (non-bookkeeping) overrides, seed included
    group: str = ""  # the label without the seed: runs of one group share a colour

    def series(self, key: str) -> pd.Series | None:
        """Non-null values of ``key`` indexed by step, or None when never logged."""
        if key not in self.df.columns:
            return None
        s = self.df[key].dropna()
        return s if len(s) else None


# ------------------------------------------------------------------------------------------------ loading
def read_metrics(csv_path: Path) -> pd.DataFrame:
    """Lightning's CSV (one row per log call) -> one row per step, the last non-null value of each column."""
    df = pd.read_csv(csv_path)
    if "step" not in df.columns:
        raise ValueError(f"{csv_path} has no 'step' column (not a Lightning CSVLogger file?)")
    df = df.drop(columns=[c for c in ("epoch",) if c in df.columns])
    return df.groupby("step", sort=True).last()


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def read_params(run_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """(flat params, Hydra overrides) of a run: csv/hparams.yaml, then .hydra/overrides.yaml on top."""
    params: dict[str, Any] = {}
    hp = run_dir / "csv" / "hparams.yaml"
    if hp.exists():
        try:
            loaded = yaml.safe_load(hp.read_text()) or {}
            params.update({str(k): v for k, v in loaded.items()} if isinstance(loaded, dict) else {})
        except yaml.YAMLError:
            pass
    overrides: list[str] = []
    ov = run_dir / ".hydra" / "overrides.yaml"
    if ov.exists():
        overrides = [str(x) for x in (yaml.safe_load(ov.read_text()) or [])]
        for item in overrides:
            if "=" in item:
                key, value = item.split("=", 1)
                params[key.lstrip("+~")] = _parse_value(value)
    return params, overrides


def find_runs(paths: Sequence[str | Path], seed_key: str = "seed") -> list[Run]:
    """Runs under ``paths`` (run dirs, metrics.csv files, or sweep dirs holding job dirs)."""
    run_dirs: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.name.endswith(".csv"):
            run_dirs.append(p.parent.parent if p.parent.name == "csv" else p.parent)
        elif (p / "csv" / "metrics.csv").exists():
            run_dirs.append(p)
        elif p.is_dir():
            jobs = sorted(
                (d.parent.parent for d in p.glob("*/csv/metrics.csv")),
                key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name),
            )
            if not jobs:
                raise FileNotFoundError(f"{p}: no csv/metrics.csv in it or in its subdirectories")
            run_dirs.extend(jobs)
        else:
            raise FileNotFoundError(f"{p} does not exist")
    runs = []
    for d in run_dirs:
        params, overrides = read_params(d)
        runs.append(Run(d, read_metrics(d / "csv" / "metrics.csv"), params, overrides))
    _set_labels(runs, seed_key)
    return runs


# overrides that name, tag or route a run without changing what it trains: never in labels
BOOKKEEPING_PREFIXES = ("logger.", "hydra.", "paths.", "extras.", "wandb.", "callbacks.")
BOOKKEEPING_KEYS = {
    "tags",
    "task_name",
    "name",
    "run_name",
    "notes",
    "num_threads",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "logger",
    "callbacks",
}
MAX_LABEL = 48  # characters of a legend label
MAX_VALUE = 24  # characters of one value in a label


def is_bookkeeping(key: str) -> bool:
    """True for overrides that are only run bookkeeping (logger names, tags, Hydra / path settings)."""
    key = key.lstrip("+~")
    return key in BOOKKEEPING_KEYS or key.startswith(BOOKKEEPING_PREFIXES)


def _short(key: str, value: Any) -> str:
    text = str(value)
    if len(text) > MAX_VALUE:
        text = text[: MAX_VALUE - 3] + "..."
    return f"{key}={text}"


def _cap(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 3] + "..."


def _set_labels(runs: list[Run], seed_key: str = "seed") -> None:
    """Label each run by the non-bookkeeping overrides that differ between runs (else by its directory);
    ``group`` is the same without ``seed_key``, so the seeds of one configuration share a colour."""
    keys = sorted(
        {o.split("=", 1)[0].lstrip("+~") for r in runs for o in r.overrides if "=" in o} - {""},
        key=lambda k: (k == seed_key, k),  # the seed last
    )
    varying = [k for k in keys if not is_bookkeeping(k) and len({str(r.params.get(k)) for r in runs}) > 1]
    for r in runs:
        parts = [_short(k, r.params.get(k)) for k in varying]
        group = [_short(k, r.params.get(k)) for k in varying if k != seed_key]
        fallback = f"{r.path.parent.name}/{r.path.name}" if len(runs) > 1 else r.path.name
        r.label = _cap(", ".join(parts)) if parts else _cap(fallback)
        if group:
            r.group = _cap(", ".join(group))
        elif seed_key in varying:  # only the seed differs: one configuration, one colour
            r.group = "all runs"
        else:
            r.group = r.label


def _groups(runs: list[Run]) -> dict[str, list[int]]:
    """Group label -> indices of its runs, in first-seen order."""
    out: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        out.setdefault(r.group or r.label, []).append(i)
    return out


def run_colors(runs: list[Run]) -> list[Any]:
    """A colour per run: one per group (the swept configuration), shared by its seeds."""
    groups = list(_groups(runs))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(groups) > len(palette):  # more groups than the cycle: spread them over a colour map
        palette = [plt.get_cmap("turbo")(j / (len(groups) - 1)) for j in range(len(groups))]
    color_of = {g: palette[j] for j, g in enumerate(groups)}
    return [color_of[r.group or r.label] for r in runs]


def run_legend_handles(runs: list[Run], max_entries: int = 12) -> list[Line2D]:
    """One legend entry per group (``<group> (N runs)`` when seeds share it), at most ``max_entries``."""
    colors = run_colors(runs)
    handles = []
    for g, idx in _groups(runs).items():
        label = g if len(idx) == 1 else f"{g} ({len(idx)} runs)"
        handles.append(Line2D([], [], color=colors[idx[0]], label=label))
    if len(handles) > max_entries:
        more = len(handles) - max_entries + 1
        handles = [*handles[: max_entries - 1], Line2D([], [], color="none", label=f"... {more} more")]
    return handles


# ------------------------------------------------------------------------------------------------ panels
def ema(values: pd.Series, weight: float) -> pd.Series:
    """TensorBoard-style smoothing (``weight`` in [0, 1); 0 = none)."""
    return values.ewm(alpha=1 - weight, adjust=True).mean() if weight > 0 else values


def _collapse_step(run: Run) -> float | None:
    s = run.series("train/collapse/flag")
    if s is None or not (s > 0).any():
        return None
    return float(s[s > 0].index[0])


def _line(
    ax: Any,
    run: Run,
    key: str,
    color: Any,
    smooth: float,
    style: str = "-",
    label: str | None = None,
    raw_alpha: float = 0.25,
) -> bool:
    s = run.series(key)
    if s is None:
        return False
    if smooth > 0 and len(s) > 3:
        ax.plot(s.index, s.values, style, color=color, alpha=raw_alpha, linewidth=0.8)
        ax.plot(s.index, ema(s, smooth).values, style, color=color, linewidth=1.6, label=label)
    else:
        ax.plot(s.index, s.values, style, color=color, linewidth=1.6, label=label)
    return True


def _points(ax: Any, run: Run, key: str, color: Any, style: str, marker: str, label: str | None) -> bool:
    s = run.series(key)
    if s is None:
        return False
    ax.plot(
        s.index,
        s.values,
        linestyle=style or ":",
        marker=marker,
        color=color,
        linewidth=1.4,
        markersize=5,
        label=label,
    )
    return True


@dataclass
class Panel:
    """One plot: which series to draw (``(key, style, what)`` per run), titles, axis labels."""

    name: str
    title: str
    ylabel: str
    series: list[tuple[str, str, str]]  # (metric key, line style, legend suffix)
    points: bool = False  # validation metrics: markers, no smoothing
    logy: bool | None = None  # None: log scale when positive values span > 30x
    fallback: list[tuple[str, str, str]] | None = None  # used when no run logged ``series``
    note: str = ""
    zero_note: str = ""  # shown when every logged value is exactly 0


PANELS = [
    Panel(
        "reward",
        "Training reward (0.9 accuracy + 0.1 format)",
        "mean reward",
        [("train/reward/mean", "-", "")],
    ),
    Panel(
        "accuracy",
        "Training accuracy and format rate",
        "fraction of responses",
        [("train/reward/accuracy", "-", "accuracy"), ("train/reward/format", ":", "format")],
    ),
    Panel(
        "val_real_vs_masked",
        "Validation accuracy: real vs masked image",
        "val accuracy (greedy)",
        [("val/acc", "-", "real image"), ("val/acc_masked", "--", "masked image")],
        points=True,
        note="gap = how much the policy relies on the image",
    ),
    Panel(
        "kl_prcp",
        "Perception KL (KL_prcp, real vs masked image)",
        "kl_prcp (token mean)",
        [("train/perception_kl/kl", "-", "train"), ("val/kl_prcp", "o", "val (held-out)")],
    ),
    Panel(
        "entropy",
        "Sampled-token entropy of both branches",
        "token-mean -log p",
        [
            ("train/double_entropy/entropy_real", "-", "real image"),
            ("train/double_entropy/entropy_masked", "--", "masked image"),
        ],
        fallback=[("train/response/entropy", "-", "real image (double entropy off)")],
    ),
    Panel(
        "clipfrac",
        "PPO clip fractions",
        "fraction of response tokens",
        [
            ("train/pg/clipfrac_high", "-", "high side (r > 1+eps_high, A>0)"),
            ("train/pg/clipfrac_low", "--", "low side"),
        ],
        logy=False,
        zero_note="all 0: one on-policy update per rollout batch (ratio = 1);\n"
        "clipping needs algo.num_minibatches > 1 or algo.ppo_epochs > 1",
    ),
]


def draw_panel(ax: Any, panel: Panel, runs: list[Run], smooth: float, run_legend: bool = True) -> bool:
    """Draw ``panel`` on ``ax``; returns False when no run logged any of its series. Several runs: a colour
    per group (seeds share it), a line style per metric; the legend (groups, then metric styles) goes
    outside the axes, on the right; ``run_legend=False`` leaves the groups out (a figure-level legend)."""
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    run_color = run_colors(runs) if len(runs) > 1 else None
    series = panel.series
    if not any(r.series(k) is not None for r in runs for k, _, _ in series) and panel.fallback:
        series = panel.fallback
    drawn, positives, nonzero = False, [], False
    flagged: list[float] = []
    for i, run in enumerate(runs):
        for j, (key, style, what) in enumerate(series):
            # one run: a colour per metric; several runs: a colour per run, a line style per metric
            color = run_color[i] if run_color is not None else colors[j % len(colors)]
            label = (what or None) if len(runs) == 1 else None  # several runs: legend built below
            if style == "o":  # validation values on a train panel: markers only
                ok = _points(ax, run, key, color, "", "o", label)
            elif panel.points:
                ok = _points(ax, run, key, color, style, "o" if style == "-" else "s", label)
            else:
                # many runs: fainter raw curves (the smoothed ones carry the comparison)
                ok = _line(ax, run, key, color, smooth, style, label, 0.25 if len(runs) <= 3 else 0.08)
            drawn |= ok
            s = run.series(key)
            if s is not None:
                positives.extend(float(v) for v in s.values if v > 0)
                nonzero |= bool((s != 0).any())
        step = _collapse_step(run)
        if step is not None:
            ax.axvline(step, color="red", linestyle=":", linewidth=1.2)
            flagged.append(step)
    if flagged:  # one note, not one per run
        ax.annotate(
            "collapse flagged" + (f" ({len(flagged)} of {len(runs)} runs)" if len(runs) > 1 else ""),
            (min(flagged), 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            color="red",
            fontsize=8,
        )
    if not drawn:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    elif not nonzero and panel.zero_note:
        ax.text(
            0.5,
            0.3,
            panel.zero_note,
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="grey",
            fontsize=8,
        )
    logy = panel.logy
    if logy is None:
        logy = len(positives) > 1 and max(positives) / max(min(positives), 1e-12) > 30
    if logy and drawn:
        ax.set_yscale("log")
    title = panel.title + (f"\n({panel.note})" if panel.note else "")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("RL step")
    ax.set_ylabel(panel.ylabel)
    ax.grid(alpha=0.3)
    if drawn and len(runs) > 1:  # one entry per group (colour) + one per metric (line style)
        handles = run_legend_handles(runs) if run_legend else []
        if len(series) > 1:
            handles += [
                Line2D(
                    [],
                    [],
                    color="black",
                    linestyle=":" if style == "o" else style,
                    marker=("o" if style in ("o", "-") else "s") if (style == "o" or panel.points) else None,
                    label=what,
                )
                for _, style, what in series
            ]
        if run_legend:
            ax.legend(
                handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
            )
        elif handles:
            ax.legend(handles=handles, fontsize=7, loc="best")
    elif drawn and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    return drawn


def overview_title(runs: list[Run]) -> str:
    """``<n> runs (<k> configurations x <m> seeds) under <common dir>``, or the run's directory."""
    if len(runs) == 1:
        return str(runs[0].path)
    try:
        common = os.path.commonpath([str(r.path.resolve()) for r in runs])
        rel = os.path.relpath(common)
        common = common if rel.startswith("..") else rel
    except ValueError:  # different drives
        common = ""
    groups = _groups(runs)
    sizes, n_groups = {len(idx) for idx in groups.values()}, len(groups)
    if n_groups < len(runs):
        what = (
            f"{n_groups} configurations x {sizes.pop()} seeds"
            if len(sizes) == 1
            else f"{n_groups} configurations"
        )
        head = f"{len(runs)} runs ({what})"
    else:
        head = f"{len(runs)} runs"
    return head + (f" under {common}" if common else "")


def plot_panels(runs: list[Run], out: Path, smooth: float) -> list[Path]:
    """One PNG per panel (skipped when not logged by any run) and ``overview.png`` with all of them."""
    written = []
    for panel in PANELS:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        if draw_panel(ax, panel, runs, smooth):
            fig.tight_layout()
            path = out / f"{panel.name}.png"
            fig.savefig(path, dpi=120, bbox_inches="tight")  # keeps the legend outside the axes
            written.append(path)
        plt.close(fig)
    fig, axes = plt.subplots(2, 3, figsize=(18, 9))
    for ax, panel in zip(axes.flat, PANELS, strict=True):
        draw_panel(ax, panel, runs, smooth, run_legend=False)
    if len(runs) > 1:  # the groups once, below the panels
        handles = run_legend_handles(runs)
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=min(len(handles), 4),
            fontsize=9,
            frameon=False,
            bbox_to_anchor=(0.5, 0.0),
        )
    title = overview_title(runs)
    fig.suptitle(title, fontsize=12)
    rows = math.ceil(len(run_legend_handles(runs)) / 4) if len(runs) > 1 else 0
    fig.tight_layout(rect=(0, 0.03 * rows, 1, 1))
    path = out / "overview.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written


# ------------------------------------------------------------------------------------------------ sweep
def final_value(run: Run, key: str) -> float:
    s = run.series(key)
    return float(s.iloc[-1]) if s is not None else math.nan


def initial_value(run: Run, key: str) -> float:
    s = run.series(key)
    return float(s.iloc[0]) if s is not None and len(s) > 1 else math.nan


def sweep_table(runs: list[Run], key: str, metrics: Sequence[str], seed_key: str = "seed") -> pd.DataFrame:
    """One row per value of ``key``: mean / std / n over runs (seeds) of each metric's final value."""
    rows = []
    for r in runs:
        if key not in r.params:
            continue
        row = {key: r.params[key], seed_key: r.params.get(seed_key)}
        for m in metrics:
            row[m] = final_value(r, m)
            row[f"{m} (before RL)"] = initial_value(r, m)
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    value_cols = [c for c in df.columns if c not in (key, seed_key)]
    agg = df.groupby(key)[value_cols].agg(["mean", "std", "count"])
    agg.columns = [f"{a} {b}" for a, b in agg.columns]
    return agg.reset_index().sort_values(key)


def plot_sweep(runs: list[Run], out: Path, key: str, metric: str, seed_key: str = "seed") -> list[Path]:
    """``sweep_summary.png`` / ``.csv``: final ``metric`` (and its masked counterpart) vs ``key``."""
    metrics = [metric]
    if metric.startswith("val/acc") and not metric.endswith("_masked"):
        metrics.append(metric + "_masked")
    table = sweep_table(runs, key, metrics, seed_key)
    if table.empty or len(table) < 2:
        return []
    path_csv = out / "sweep_summary.csv"
    table.to_csv(path_csv, index=False)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = pd.to_numeric(table[key], errors="coerce")
    numeric = x.notna().all()
    xs = x if numeric else range(len(table))
    for m, style, what in zip(metrics, ("o-", "s--"), ("real image", "masked image"), strict=False):
        ax.errorbar(
            xs,
            table[f"{m} mean"],
            yerr=table[f"{m} std"].fillna(0),
            fmt=style,
            capsize=4,
            linewidth=1.6,
            label=f"{m} ({what})",
        )
    before = table[f"{metric} (before RL) mean"].mean()
    if not math.isnan(before):
        ax.axhline(before, color="grey", linestyle=":", label=f"{metric} before RL")
    if numeric and (x > 0).all() and x.max() / x.min() >= 4:
        ax.set_xscale("log")
        ax.set_xticks(list(x))
        ax.set_xticklabels([f"{v:g}" for v in x])
        ax.xaxis.set_minor_formatter(NullFormatter())
    elif not numeric:
        ax.set_xticks(list(xs))
        ax.set_xticklabels([str(v) for v in table[key]])
    n = table[f"{metric} count"]
    seeds = f"{int(n.min())}" if n.min() == n.max() else f"{int(n.min())}-{int(n.max())}"
    ax.set_title(f"Final {metric} vs {key}\n(mean ± std over {seeds} seed(s) per value)", fontsize=10)
    ax.set_xlabel(key)
    ax.set_ylabel(f"final {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "sweep_summary.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path, path_csv]


# ------------------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None, printer: Callable[[str], None] = print) -> list[Path]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", help="run dirs, metrics.csv files or sweep (multirun) dirs")
    parser.add_argument("--out", default=None, help="output folder (default: <first path>/plots)")
    parser.add_argument(
        "--smooth", type=float, default=0.6, help="EMA smoothing weight of train curves (0-0.99)"
    )
    parser.add_argument("--sweep-key", default="loss.gamma", help="config key on the sweep summary's x axis")
    parser.add_argument("--seed-key", default="seed", help="config key of the seed (averaged over)")
    parser.add_argument("--metric", default="val/acc", help="metric of the sweep summary (its final value)")
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.paths, args.seed_key)
    except FileNotFoundError as err:  # a path with no run in it: a usage error (exit 2), not a traceback
        parser.error(str(err))
    first = Path(args.paths[0])
    out = Path(args.out) if args.out else (first.parent if first.is_file() else first) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = plot_panels(runs, out, args.smooth)
    written += plot_sweep(runs, out, args.sweep_key, args.metric, args.seed_key)
    printer(f"{len(runs)} run(s): " + "; ".join(f"{r.label} ({r.path})" for r in runs))
    for p in written:
        printer(f"wrote {p}")
    return written


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
