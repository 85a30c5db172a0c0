"""Real multiruns of ``python src/train.py -m`` (subprocesses, tiny budgets of conftest.TINY_OVERRIDES):

* the gamma sweep with Hydra's basic launcher, one job made to fail after its W&B run started: every job
  has its own output dir, CSV log and W&B offline run; the failed job is listed in ``failed_jobs.txt`` and
  the job after it still runs; the command exits non-zero;
* a 2-trial Optuna search (``hparams_search=optuna_gamma``) over the value ``train()`` returns;
* the reproduction's preset (``reproduce=quick``, configs/reproduce) cut to 2 arms x 1 seed x 2 steps on the
  joblib launcher (2 streams): launch, a re-run that skips the finished job and restarts the unfinished one,
  the default-view re-evaluation (``src/eval.py -m reproduce_eval=quick``) and scripts/repro_report.py.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import yaml

from conftest import TINY_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


class FailForValue(L.Callback):
    """Test-only: raises when training starts (W&B run already open) if ``value == fail_on``."""

    def __init__(self, value: float, fail_on: float) -> None:
        self.value, self.fail_on = float(value), float(fail_on)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if math.isclose(self.value, self.fail_on):
            raise RuntimeError(f"injected failure for value={self.value}")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env.update(
        WANDB_MODE="offline",
        HF_HUB_OFFLINE="1",
        PROJECT_ROOT=str(ROOT),
        PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src"), env.get("PYTHONPATH", "")]),
    )
    return env


def _multirun(
    args: list[str], sweep_dir: Path, cache_dir: Path, validate_before: bool = False
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "src" / "train.py"), "-m", *args, *TINY_OVERRIDES]
    cmd += [f"hydra.sweep.dir={sweep_dir}", f"paths.cache_dir={cache_dir}"]
    cmd += [] if validate_before else ["validate_before=false"]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)


def test_gamma_sweep_basic_launcher(tmp_path: Path, cache_dir: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _multirun(
        [
            "loss=papo_d",
            "algo=dapo",
            # the tiny 3-step warm start never succeeds: DAPO's filter would drop every group
            "algo.dynamic_sampling.enabled=false",
            "loss.gamma=0.005,0.01,0.02",
            "+callbacks.inject_failure._target_=test_sweeps.FailForValue",
            "+callbacks.inject_failure.value=${loss.gamma}",
            "+callbacks.inject_failure.fail_on=0.01",
        ],
        sweep,
        cache_dir,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out  # the failure is reported ...
    assert "injected failure for value=0.01" in out
    run_ids = set()
    for job, gamma in ((0, 0.005), (1, 0.01), (2, 0.02)):
        d = sweep / str(job)
        runs = list((d / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, (job, runs)  # one W&B run per job, in the job's own dir
        files = list(runs[0].glob("run-*.wandb"))
        assert len(files) == 1 and files[0].stat().st_size > 0
        run_ids.add(runs[0].name.rsplit("-", 1)[-1])
        hparams = yaml.safe_load((d / "csv" / "hparams.yaml").read_text())
        assert hparams["loss.gamma"] == gamma
    assert len(run_ids) == 3
    # ... and does not corrupt the others: the job after the failed one trains and validates
    for job in (0, 2):
        d = sweep / str(job)
        assert (d / "final_metrics.json").exists(), job
        metrics = (d / "csv" / "metrics.csv").read_text()
        assert "train/loss/total" in metrics.splitlines()[0] and "val/acc" in metrics.splitlines()[0]
    assert not (sweep / "1" / "final_metrics.json").exists()
    failed = (sweep / "failed_jobs.txt").read_text().splitlines()
    assert len(failed) == 1
    assert "job 1" in failed[0] and "loss.gamma=0.01" in failed[0]
    assert "RuntimeError: injected failure" in failed[0] and str(sweep / "1") in failed[0]


def test_optuna_search(tmp_path: Path, cache_dir: Path) -> None:
    sweep = tmp_path / "optuna"
    proc = _multirun(
        ["hparams_search=optuna_gamma", "hydra.sweeper.n_trials=2", "logger=csv"], sweep, cache_dir
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {
        "loss.gamma",
        "loss.eta_real",
        "loss.eta_masked",
        "masking.mask_prob",
    }
    values = []
    for job in (0, 1):
        final = json.loads((sweep / str(job) / "final_metrics.json").read_text())
        values.append(final["after"]["val/acc"])
    assert result["best_value"] == pytest.approx(max(values))
    assert not (sweep / "failed_jobs.txt").exists()


def test_reproduction_preset_launches_resumes_and_reports(tmp_path: Path, cache_dir: Path) -> None:
    sweep = tmp_path / "repro"
    args = ["reproduce=quick", "experiment=repro/grpo,repro/papo_g_mask1.0", "seed=0"]
    proc = _multirun(args, sweep, cache_dir, validate_before=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    grpo, mask = sweep / "grpo" / "seed0", sweep / "papo_g_mask1.0" / "seed0"
    for run in (grpo, mask):  # <sweep dir>/<arm>/seed<k>, CSV only (the quick preset), on the joblib launcher
        assert (run / "final_metrics.json").exists() and (run / "csv" / "metrics.csv").exists()
        assert not (run / "wandb").exists()
    hydra_cfg = yaml.safe_load((grpo / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra_cfg["launcher"]["_target_"].endswith("JoblibLauncher")
    assert json.loads((grpo / "final_metrics.json").read_text())["before"]  # the warm-start row
    # re-run: the finished job returns its saved metrics, the unfinished one starts over (its outputs set aside)
    done = (grpo / "final_metrics.json").read_text()
    (mask / "final_metrics.json").unlink()
    proc = _multirun(args, sweep, cache_dir, validate_before=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (grpo / "final_metrics.json").read_text() == done
    assert not list(grpo.glob("incomplete-*"))
    (aside,) = mask.glob("incomplete-*")
    assert (aside / "checkpoints" / "last.ckpt").exists() and (mask / "final_metrics.json").exists()
    # the default-view re-evaluation of the arm trained with another view, then the report
    cmd = [
        sys.executable,
        str(ROOT / "src" / "eval.py"),
        "-m",
        "reproduce_eval=quick",
        "repro_arm=papo_g_mask1.0",
    ]
    cmd += ["seed=0", f"repro_dir={sweep}", f"paths.cache_dir={cache_dir}", "data.val_dataset.size=8"]
    cmd += ["data.val_batch_size=8", "rollout.max_new_tokens=8"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (mask / "eval" / "eval_val_last.json").exists()
    report = [sys.executable, str(ROOT / "scripts" / "repro_report.py"), str(sweep)]
    proc = subprocess.run(report, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["arm"]: r for r in csv.DictReader((sweep / "results.csv").open())}
    assert list(rows) == ["warm_start", "grpo", "papo_g_mask1.0"]
    assert rows["papo_g_mask1.0"]["masked_source"] == "eval" and rows["grpo"]["rl_steps_mean"] == "2.0"
    assert (sweep / "acc_by_arm.png").exists()
