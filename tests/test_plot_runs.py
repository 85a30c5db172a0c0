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
    run_dir: Path, gamma: float, seed: int, steps: int = 30, collapse_at: int | None = None
) -> None:
    """A Lightning-CSVLogger-like file: train rows per step, val rows (before, middle, end) on their own."""
    (run_dir / "csv").mkdir(parents=True)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        f"- loss.gamma={gamma}\n- seed={seed}\n- trainer.max_steps={steps}\n"
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
