"""scripts/plot_runs.py on synthetic CSV logs: one run, and a sweep directory (3 gammas x 2 seeds)."""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plot_runs():
    spec = importlib.util.spec_from_file_location("plot_runs", ROOT / "scripts" / "plot_runs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["plot_runs"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def write_run(
    run_dir: Path,
    gamma: float,
    seed: int,
    steps: int = 30,
    collapse_at: int | None = None,
    extra_overrides: tuple[str, ...] = (),
) -> None:
    """A Lightning-CSVLogger-like file: train rows per step, val rows (before, middle, end) on their own."""
    (run_dir / "csv").mkdir(parents=True)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        f"- loss.gamma={gamma}\n- seed={seed}\n- trainer.max_steps={steps}\n"
        + "".join(f"- {o}\n" for o in extra_overrides)
    )
    cols = [
        "epoch",
        "step",
        "train/reward/mean",
        "train/reward/accuracy",
        "train/reward/format",
        "train/perception_kl/kl",
        "train/response/entropy",
        "train/pg/clipfrac_high",
        "train/pg/clipfrac_low",
        "train/collapse/flag",
        "val/acc",
        "val/acc_masked",
        "val/kl_prcp",
    ]
    rows = []
    final = 0.5 + 5 * gamma + 0.01 * seed
    for step in range(steps):
        if step in (0, steps // 2):
            acc = 0.45 if step == 0 else (0.45 + final) / 2
            rows.append(
                {"epoch": 0, "step": step, "val/acc": acc, "val/acc_masked": acc - 0.2, "val/kl_prcp": 0.05}
            )
        bad = collapse_at is not None and step >= collapse_at
        rows.append(
            {
                "epoch": 0,
                "step": step,
                "train/reward/mean": 0.4 + step / 100,
                "train/reward/accuracy": 0.35 + step / 100 - (0.2 if bad else 0),
                "train/reward/format": 1.0,
                "train/perception_kl/kl": 0.9 if bad else 0.03 + gamma * math.sin(step) ** 2,
                "train/response/entropy": 1.0 - step / 100 + (0.5 if bad else 0),
                "train/pg/clipfrac_high": 0.1 if bad else 0.01,
                "train/pg/clipfrac_low": 0.005,
                "train/collapse/flag": 1.0 if bad and step >= collapse_at + 2 else 0.0,
            }
        )
    rows.append(
        {"epoch": 0, "step": steps, "val/acc": final, "val/acc_masked": final - 0.25, "val/kl_prcp": 0.06}
    )
    with (run_dir / "csv" / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)


def test_single_run_writes_every_panel(plot_runs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_run(run, 0.02, 42, collapse_at=20)
    written = plot_runs.main([str(run)], printer=lambda s: None)
    names = {p.name for p in written}
    for name in ("reward", "accuracy", "val_real_vs_masked", "kl_prcp", "entropy", "clipfrac", "overview"):
        assert f"{name}.png" in names
        assert (run / "plots" / f"{name}.png").stat().st_size > 5000
    assert "sweep_summary.png" not in names  # one run: no sweep
    runs = plot_runs.find_runs([run / "csv" / "metrics.csv"])
    assert plot_runs._collapse_step(runs[0]) == 22.0
    assert runs[0].series("val/acc").index.tolist() == [0, 15, 30]  # val rows merged per step


def test_sweep_dir_summary_averages_seeds(plot_runs, tmp_path: Path) -> None:
    sweep = tmp_path / "multirun"
    job = 0
    for gamma in (0.005, 0.01, 0.02):
        for seed in (1, 2):
            write_run(sweep / str(job), gamma, seed)
            job += 1
    (sweep / "multirun.yaml").write_text("{}\n")
    out = tmp_path / "plots"
    written = plot_runs.main([str(sweep), "--out", str(out)], printer=lambda s: None)
    assert out / "sweep_summary.png" in written and (out / "sweep_summary.png").stat().st_size > 5000
    runs = plot_runs.find_runs([sweep])
    assert [r.path.name for r in runs] == ["0", "1", "2", "3", "4", "5"]
    assert runs[2].label == "loss.gamma=0.01, seed=1"
    table = plot_runs.sweep_table(runs, "loss.gamma", ["val/acc"])
    assert table["loss.gamma"].tolist() == [0.005, 0.01, 0.02]
    assert table["val/acc count"].tolist() == [2, 2, 2]
    assert table["val/acc mean"].tolist() == pytest.approx([0.5 + 5 * g + 0.015 for g in (0.005, 0.01, 0.02)])
    assert table["val/acc std"].iloc[0] == pytest.approx(0.00707, abs=1e-4)
    assert table["val/acc (before RL) mean"].tolist() == pytest.approx([0.45] * 3)
    assert "val/acc_masked mean" in (out / "sweep_summary.csv").read_text()


def test_missing_path_is_an_error(plot_runs, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        plot_runs.find_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no csv/metrics\.csv"):
        plot_runs.find_runs([tmp_path / "empty"])
    # the command line: a usage error (exit 2, the message on stderr), not a traceback
    with pytest.raises(SystemExit) as exit_:
        plot_runs.main([str(tmp_path / "nope")], printer=lambda s: None)
    assert exit_.value.code == 2


def test_many_runs_labels_skip_bookkeeping_and_seeds_share_a_colour(plot_runs, tmp_path: Path) -> None:
    """4 gamma arms x 3 seeds launched with explicit overrides (logger names, tags, hydra dirs per run):
    short labels by the swept key and the seed only, one colour and one legend entry per gamma."""
    paths = []
    for gamma in (0.005, 0.01, 0.02, 0.04):
        for seed in (0, 1, 2):
            run = tmp_path / f"papo_g_gamma{gamma}" / f"seed{seed}"
            write_run(
                run,
                gamma,
                seed,
                steps=12,
                extra_overrides=(
                    f"logger.wandb.group=reproduce-papo_g_gamma{gamma}",
                    f"logger.wandb.name=papo_g_gamma{gamma}-seed$\\{{seed\\}}",
                    f"tags=[reproduce,{'main' if gamma == 0.02 else 'gamma'}]",
                    f"hydra.run.dir=logs/reproduce/papo_g_gamma{gamma}/seed{seed}",
                    f"paths.output_dir=/tmp/x{gamma}{seed}",
                    "num_threads=1",
                    "task_name=reproduce",
                ),
            )
            paths.append(run)
    runs = plot_runs.find_runs(paths)
    assert runs[4].label == "loss.gamma=0.01, seed=1" and runs[4].group == "loss.gamma=0.01"
    for r in runs:
        assert not any(
            k in r.label for k in ("logger.", "tags", "hydra.", "paths.", "num_threads", "task_name")
        )
        assert len(r.label) <= plot_runs.MAX_LABEL
    colors = plot_runs.run_colors(runs)
    assert len({str(c) for c in colors}) == 4
    assert all(colors[i] == colors[i - i % 3] for i in range(12))  # the seeds of one gamma share a colour
    handles = plot_runs.run_legend_handles(runs)
    assert [h.get_label() for h in handles] == [f"loss.gamma={g} (3 runs)" for g in (0.005, 0.01, 0.02, 0.04)]
    assert len(plot_runs.run_legend_handles(runs * 5, max_entries=3)) <= 3
    assert plot_runs.overview_title(runs).startswith("12 runs (4 configurations x 3 seeds)")
    out = tmp_path / "plots"
    plot_runs.main([str(p) for p in paths] + ["--out", str(out)], printer=lambda s: None)
    assert (out / "overview.png").stat().st_size > 5000 and (out / "sweep_summary.png").exists()


def test_reproduction_runs_are_labelled_by_arm_and_seed(plot_runs, tmp_path: Path) -> None:
    """Runs of a reproduction preset (``python src/train.py -m reproduce=full``, configs/reproduce): each
    job's overrides name its arm (``experiment=repro/<arm>``) and seed; the arm labels and colours a run."""
    paths = []
    for arm in ("grpo", "papo_g", "papo_g_gamma0.1"):
        for seed in (0, 1):
            run = tmp_path / arm / f"seed{seed}"
            write_run(run, 0.02, seed, steps=8, extra_overrides=(f"experiment=repro/{arm}", "reproduce=full"))
            paths.append(run)
    runs = plot_runs.find_runs(paths)
    assert runs[5].label == "experiment=repro/papo_g_gamma0.1, seed=1"
    assert runs[5].group == "experiment=repro/papo_g_gamma0.1"
    colors = plot_runs.run_colors(runs)
    assert len({str(c) for c in colors}) == 3 and colors[4] == colors[5]
    labels = [h.get_label() for h in plot_runs.run_legend_handles(runs)]
    assert labels == [f"experiment=repro/{a} (2 runs)" for a in ("grpo", "papo_g", "papo_g_gamma0.1")]


def test_only_bookkeeping_differs_falls_back_to_directories(plot_runs, tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_run(tmp_path / name, 0.02, 1, steps=6, extra_overrides=(f"logger.wandb.name={name}",))
    runs = plot_runs.find_runs([tmp_path / "a", tmp_path / "b"])
    assert [r.label for r in runs] == [f"{tmp_path.name}/a", f"{tmp_path.name}/b"]
    assert len({str(c) for c in plot_runs.run_colors(runs)}) == 2
