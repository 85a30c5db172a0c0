#!/usr/bin/env python
"""One-command reproduction of PAPO's claims on the embedded task (tiny Qwen2.5-VL, synthetic scenes, CPU).

    python scripts/reproduce.py              # full: 15 arms x 3 seeds, ~1.8 h on 2 quiet CPU cores
    python scripts/reproduce.py --quick      # 6 arms x 3 seeds, ~15 min (<= 20 min) on 2 CPU cores
    python scripts/reproduce.py --dry-run    # print the commands and the expected time, run nothing
    python scripts/reproduce.py --report-only  # rebuild the table and plots from the finished runs
    # --seeds 0 1 2 3 (>= 3), --arms grpo papo_g ..., --out DIR, --steps N, --val-size N,
    # --streams N (parallel processes, default 2 with one torch thread each; docs/reproduction.md),
    # --override K=V (every training run; model/data/rollout/... ones also reach the re-evaluations),
    # --eval-override K=V (the src/eval.py re-evaluations only)

Every arm runs ``python src/train.py`` (a Hydra multirun over the arm's missing seeds, ``-m seed=0,1,2``: one
process per arm, one job per seed) into ``<out>/<arm>/seed<k>/`` (its own CSV log, W&B offline run and
checkpoints). RL seeds are ``seed=``; the data (``data_seed``) and the warm start (SFT, cached under
``paths.cache_dir``) are shared by all runs. A run is finished when the pipeline wrote its
``final_metrics.json`` (val metrics after RL, and before RL for the ``grpo`` arm: the warm-start row):
re-running the script skips finished runs and restarts unfinished ones (their directory is moved to
``<out>/_incomplete/``), so an interrupted reproduction resumes where it stopped.

Arms (docs/algorithm.md's claims; docs/reproduction.md says what each one tests):
  main     grpo, papo_g (GRPO + KL_prcp, gamma 0.02), dapo, papo_d (DAPO + KL_prcp 0.01 + double entropy)
  gamma    PAPO-G with gamma in {0.005, 0.01, 0.02 (= papo_g), 0.04, 0.1}: sweet spot, collapse when large
  mask     PAPO-G with mask ratio in {0.4, 0.6 (= papo_g), 0.8, 1.0}
  control  PAPO-G's KL against another image of the batch (control_shuffled) or a noised image
           (control_noise); DAPO + double entropy alone (double_entropy, to compare with papo_d)
  sft      continued SFT: the warm start fine-tuned further for as long as the RL stage takes, then
           validated (no RL). Its step count comes from measured times: the mean RL wall time of the grpo
           and papo_g runs divided by the SFT time per step of a short calibration run (``<out>/_calibration``).

Accuracy is the published protocol, avg@k at temperature 1.0 (k = 4 here: ``SAMPLED_K``; docs/algorithm.md uses 8), on
the val split; greedy accuracy is a column of its own (RL mostly sharpens the sampled policy, README).
"Accuracy with the masked image" is always measured with PAPO's default view (random 14 px patches, p = 0.6,
masks seeded by the run's seed): arms trained with another view (mask ratios != 0.6, control_shuffled,
control_noise) are re-evaluated on the val split with ``src/eval.py`` (avg@k, masked image).

Outputs in ``<out>``: ``results.md`` and ``results.csv`` (per arm: mean and 95 % t-interval over seeds of final
val accuracy overall, per vision-dependency level, with the masked image, the vision gap, greedy; paired
differences between arms), ``runs.csv`` (one row per run), ``acc_by_arm.png``, ``gamma_curve.png``,
``mask_ratio_curve.png``.

``--quick`` cuts, to finish in <= 20 minutes on 2 CPU cores, while keeping 3 seeds per arm: 40 RL steps
instead of 150; 500 val prompts instead of 1000; the CSV logger only (no W&B); 6 arms instead of 15
(grpo, papo_g, sft_continued, papo_g_gamma0.1, papo_g_mask1.0, control_shuffled: one contrast per claim,
no DAPO arms). It writes to ``logs/reproduce_quick`` so it never mixes with the full run. Expected times:
:func:`estimate_seconds` (figures measured by the quick run, two streams on a quiet 2-core machine).

Not the paper's protocol: the embedded task is a synthetic CLEVR-like task for a 0.4M-parameter model; the
numbers test whether the mechanisms behave as claimed at this scale, not the published accuracies.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------- the arms


@dataclass(frozen=True)
class Arm:
    """One experimental condition, run with every seed."""

    name: str  # directory name and row label
    group: str  # main | gamma | mask | control | sft
    overrides: tuple[str, ...]  # Hydra overrides of src/train.py
    tests: str  # the claim or question it addresses (one line, for the table)
    x: float | None = None  # gamma (group gamma) or mask ratio (group mask) for the curves
    standard_view: bool = True  # trained with PAPO's default masked view (random patches, p = 0.6)
    before: bool = False  # also validate before RL (the warm-start baseline row)


STANDARD_GAMMA, STANDARD_MASK = 0.02, 0.6  # papo_g's values: its point on the gamma and mask-ratio curves

ARMS: tuple[Arm, ...] = (
    Arm("grpo", "main", ("algo=grpo", "loss=none"), "baseline (GRPO)", before=True),
    Arm("papo_g", "main", ("algo=grpo", "loss=papo_g"), "PAPO-G > GRPO, more on vision-dependent"),
    Arm("dapo", "main", ("algo=dapo", "loss=none"), "baseline (DAPO)"),
    Arm("papo_d", "main", ("algo=dapo", "loss=papo_d"), "PAPO-D > DAPO"),
    Arm(
        "sft_continued",
        "sft",
        ("algo=grpo", "loss=none", "+trainer.limit_train_batches=0"),
        "RL beats the same compute spent on SFT",
    ),
    *(
        Arm(f"papo_g_gamma{g}", "gamma", ("algo=grpo", "loss=papo_g", f"loss.gamma={g}"), t, x=g)
        for g, t in (
            (0.005, "gamma sweep (small)"),
            (0.01, "gamma sweep"),
            (0.04, "gamma sweep: paper collapses at 0.04"),
            (0.1, "gamma sweep: KL_prcp hacking / collapse"),
        )
    ),
    *(
        Arm(
            f"papo_g_mask{r}",
            "mask",
            ("algo=grpo", "loss=papo_g", f"masking.mask_prob={r}"),
            f"mask ratio {r} (paper: 0.6 best)",
            x=r,
            standard_view=False,
        )
        for r in (0.4, 0.8, 1.0)
    ),
    Arm(
        "control_shuffled",
        "control",
        ("algo=grpo", "loss=control_shuffled"),
        "KL to another image: is it perception?",
        standard_view=False,
    ),
    Arm(
        "control_noise",
        "control",
        ("algo=grpo", "loss=control_noise"),
        "KL to a noised image: is it perception?",
        standard_view=False,
    ),
    Arm(
        "double_entropy",
        "control",
        ("algo=dapo", "loss=double_entropy"),
        "double entropy alone (vs papo_d, dapo)",
    ),
)
ARMS_BY_NAME = {a.name: a for a in ARMS}
QUICK_ARMS = ("grpo", "papo_g", "sft_continued", "papo_g_gamma0.1", "papo_g_mask1.0", "control_shuffled")
# RL arms whose mean RL wall time the continued-SFT control matches
SFT_MATCH = ("grpo", "papo_g")
# paired differences reported (a - b over the seeds both have), with the question each answers
CONTRASTS: tuple[tuple[str, str, str], ...] = (
    ("papo_g", "grpo", "PAPO-G vs GRPO"),
    ("papo_d", "dapo", "PAPO-D vs DAPO"),
    ("papo_g", "sft_continued", "PAPO-G vs continued SFT"),
    ("grpo", "sft_continued", "GRPO vs continued SFT"),
    ("control_shuffled", "papo_g", "KL to another image vs PAPO-G"),
    ("control_noise", "papo_g", "KL to a noised image vs PAPO-G"),
    ("double_entropy", "dapo", "double entropy alone vs DAPO"),
    ("papo_d", "double_entropy", "PAPO-D vs double entropy alone"),
    ("papo_g_gamma0.1", "papo_g", "gamma 0.1 vs 0.02"),
    ("papo_g_mask1.0", "papo_g", "mask ratio 1.0 vs 0.6"),
)

# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """What differs between the full and the quick reproduction (stored in ``<out>/plan.json``)."""

    quick: bool
    steps: int  # RL steps per run
    val_size: int  # val prompts (each evaluated with the real and the masked image)
    arms: tuple[str, ...]
    seeds: tuple[int, ...]
    extra: tuple[str, ...] = ()  # overrides appended to every training command (e.g. trainer=gpu)
    eval_extra: tuple[str, ...] = ()  # overrides appended to the src/eval.py commands (configs/eval.yaml)
    calibration_steps: int = 100  # SFT steps of the timing calibration (~15 s)

    def plan(self) -> dict[str, Any]:
        """The settings that must not change within one output directory."""
        return {
            "quick": self.quick,
            "steps": self.steps,
            "val_size": self.val_size,
            "extra": list(self.extra),
        }


FULL_STEPS, FULL_VAL = 150, 1000
QUICK_STEPS, QUICK_VAL = 40, 500
# the validation protocol of every run and re-evaluation: avg@k at temperature T (docs/algorithm.md: k = 8, T = 1.0;
# k = 4 here, the default of rollout.val_sampled_k), plus greedy
SAMPLED_K, SAMPLED_T = 4, 1.0

# expected-time model: seconds in ONE of two processes sharing a quiet 2-core machine (--streams 2, one torch
# thread each), measured with --quick on 2026-11-30 (logs/reproduce_quick/*/seed*/: RL 52 s per 40 PAPO-G
# steps, ~19 s per validation of 500 prompts, calibration 0.354 s per SFT step)
STEP_S = 1.3  # one RL step, batch 16 prompts x G 8 (GRPO; PAPO's masked forward is included)
DAPO_FACTOR = 1.3  # dynamic sampling's extra rollouts
VAL_S_PER_PROMPT = 19.0 / 500  # one validation: greedy + avg@4, real + masked image
SFT_S_PER_STEP = 0.354  # warm-start SFT, batch 64
WARM_START_S = 200.0  # the warm start, once, when not cached
PROCESS_S = 12.0  # python + imports per process
JOB_S = 8.0  # per job: datasets, model load, loggers
ONE_PROCESS_FACTOR = 0.6  # --streams 1: one process with 2 threads runs an arm in ~0.6x the time above


def settings_for(
    quick: bool,
    seeds: Sequence[int],
    arms: Sequence[str] | None = None,
    extra: Sequence[str] = (),
    steps: int | None = None,
    val_size: int | None = None,
    eval_extra: Sequence[str] = (),
) -> Settings:
    """Full or quick settings, optionally restricted to some arms or with other step / val budgets."""
    chosen = tuple(arms) if arms else (QUICK_ARMS if quick else tuple(a.name for a in ARMS))
    unknown = [a for a in chosen if a not in ARMS_BY_NAME]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; valid: {list(ARMS_BY_NAME)}")
    return Settings(
        quick=quick,
        steps=steps or (QUICK_STEPS if quick else FULL_STEPS),
        val_size=val_size or (QUICK_VAL if quick else FULL_VAL),
        arms=chosen,
        seeds=tuple(int(s) for s in seeds),
        extra=tuple(extra),
        eval_extra=tuple(eval_extra),
    )


# ---------------------------------------------------------------------------------------------- commands


def run_dir(out: Path, arm: str, seed: int) -> Path:
    """Where one run writes: ``<out>/<arm>/seed<k>``."""
    return out / arm / f"seed{seed}"


def common_overrides(s: Settings) -> list[str]:
    """Overrides shared by every training command."""
    ov = [
        "task_name=reproduce",
        f"trainer.max_steps={s.steps}",
        f"data.val_dataset.size={s.val_size}",
        f"rollout.val_sampled_k={SAMPLED_K}",
        f"rollout.val_sampled_temperature={SAMPLED_T}",
        "trainer.enable_progress_bar=false",
    ]
    if s.quick:
        ov.append("logger=csv")
    return ov


def train_command(
    arm: Arm, seeds: Sequence[int], s: Settings, out: Path, sft_steps: int | None = None
) -> list[str]:
    """``python src/train.py -m seed=...`` for one arm: one job per seed in ``<out>/<arm>/seed<k>``."""
    cmd = [sys.executable, str(ROOT / "src" / "train.py"), "-m", *arm.overrides]
    if arm.group == "sft":
        cmd.append(f"+warm_start.continue_steps={sft_steps if sft_steps is not None else '<measured>'}")
    cmd += common_overrides(s)
    cmd += [
        f"validate_before={str(arm.before).lower()}",
        f"tags=[reproduce,{arm.group}]",
        f"seed={','.join(str(k) for k in seeds)}",
        f"hydra.sweep.dir={out / arm.name}",
        "hydra.sweep.subdir=seed${seed}",
    ]
    if not s.quick:  # one W&B group per arm, one run per seed
        cmd += [f"logger.wandb.group=reproduce-{arm.name}", f"logger.wandb.name={arm.name}-seed${{seed}}"]
    return cmd + list(s.extra)


def calibration_command(s: Settings, out: Path) -> list[str]:
    """A short continued-SFT run (no RL, no validation) that measures the SFT time per step."""
    return [
        sys.executable,
        str(ROOT / "src" / "train.py"),
        "algo=grpo",
        "loss=none",
        "+trainer.limit_train_batches=0",
        f"+warm_start.continue_steps={s.calibration_steps}",
        "+warm_start.continue_seed=999",
        *(o for o in common_overrides(s) if not o.startswith("logger=")),
        "logger=csv",
        "validate_before=false",
        "validate_after=false",
        "tags=[reproduce,calibration]",
        f"hydra.run.dir={out / '_calibration'}",
        *s.extra,
    ]


def eval_command(ckpts: Sequence[Path], seed: int, s: Settings, out: Path) -> list[str]:
    """``python src/eval.py -m ckpt_path=...``: avg@k val accuracy with PAPO's default masked view."""
    return [
        sys.executable,
        str(ROOT / "src" / "eval.py"),
        "-m",
        f"ckpt_path={','.join(str(c) for c in ckpts)}",
        f"seed={seed}",
        "masking=random_patch",
        "eval.split=val",
        f"eval.samples={SAMPLED_K}",
        f"eval.temperature={SAMPLED_T}",
        "eval.greedy=false",
        "eval.masked=true",
        "eval.kl_prcp=false",
        "eval.num_samples_shown=0",
        f"data.val_dataset.size={s.val_size}",
        "logger=none",
        f"hydra.sweep.dir={out / '_eval' / f'seed{seed}'}",
        *(o for o in s.extra if _override_key(o).split(".")[0] in EVAL_SHARED),
        *s.eval_extra,
    ]


# groups / keys of configs/eval.yaml that a training override also sets for the re-evaluation (so the model,
# data, prompts and decoding match the training run's validation); masking stays PAPO's default view
EVAL_SHARED = (
    "model",
    "data",
    "data_seed",
    "rollout",
    "reward",
    "algo",
    "warm_start",
    "paths",
    "num_threads",
)


def _override_key(override: str) -> str:
    """``+a.b=1`` / ``~a.b`` / ``a.b=1`` -> ``a.b``."""
    return override.lstrip("+~").split("=", 1)[0]


EVAL_FILE = Path("eval") / "eval_val_last.json"  # written by src/eval.py next to the training run
EVAL_MASKED_KEY = f"avg@{SAMPLED_K}/acc_masked"  # its masked-image accuracy under the table's protocol


def sft_steps_from_timing(rl_seconds: Sequence[float], sft_seconds: float, sft_steps: int) -> int:
    """SFT steps that take as long as the mean RL stage: mean(rl_seconds) / (sft_seconds / sft_steps)."""
    if not rl_seconds or sft_seconds <= 0 or sft_steps <= 0:
        raise ValueError("need RL wall times and a positive SFT timing")
    return max(1, round(statistics.fmean(rl_seconds) / (sft_seconds / sft_steps)))


def estimate_seconds(s: Settings, warm_start_cached: bool = True) -> float:
    """Expected wall time of ``s.arms`` in one of two parallel streams on a quiet 2-core machine (see the
    module docstring); ``--streams 1`` takes about ``ONE_PROCESS_FACTOR`` times the sum over all arms."""
    val = s.val_size * VAL_S_PER_PROMPT
    n = len(s.seeds)
    total = 0.0 if warm_start_cached else WARM_START_S
    for name in s.arms:
        arm = ARMS_BY_NAME[name]
        dapo = "algo=dapo" in arm.overrides
        rl = s.steps * STEP_S * (DAPO_FACTOR if dapo else 1.0)  # continued SFT matches the RL time
        per_job = JOB_S + rl + val * (2 if arm.before else 1)
        total += PROCESS_S + n * per_job
        if not arm.standard_view:  # re-evaluation with the default view: avg@k, masked image only
            total += n * (JOB_S / 2 + val / 2)
    if any(not ARMS_BY_NAME[a].standard_view for a in s.arms):
        total += n * PROCESS_S  # one eval process per seed
    if "sft_continued" in s.arms:
        total += PROCESS_S + JOB_S + s.calibration_steps * SFT_S_PER_STEP
    return total


def expected_seconds(s: Settings, streams: int = 2) -> float:
    """Expected wall time with ``--streams``: the longest stream (one process with 2 threads when 1)."""
    if streams <= 1:
        return ONE_PROCESS_FACTOR * estimate_seconds(s)
    return max(estimate_seconds(replace(s, arms=g)) for g in split_streams(s, streams))


# ---------------------------------------------------------------------------------------------- running


def _run(cmd: list[str], log_file: Path, dry_run: bool) -> int:
    """Run a command with its output in ``log_file``; print the command; return its exit status."""
    print("$ " + shlex.join(cmd), flush=True)
    if dry_run:
        return 0
    log_file.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with log_file.open("a") as fh:
        fh.write(f"\n$ {shlex.join(cmd)}\n")
        fh.flush()
        rc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    print(f"  -> exit {rc} in {time.time() - t0:.0f} s (log: {log_file})", flush=True)
    if rc != 0:
        lines = log_file.read_text(errors="replace").splitlines()
        print("  " + "\n  ".join(lines[-15:]), flush=True)
    return rc


def missing_seeds(out: Path, arm: str, seeds: Sequence[int]) -> list[int]:
    """Seeds of ``arm`` without a ``final_metrics.json``."""
    return [k for k in seeds if not (run_dir(out, arm, k) / "final_metrics.json").exists()]


def _set_aside(out: Path, arm: str, seeds: Sequence[int]) -> None:
    """Move unfinished run dirs to ``<out>/_incomplete/`` (kept for inspection), so reruns start clean."""
    for k in seeds:
        d = run_dir(out, arm, k)
        if d.exists():
            dest = out / "_incomplete" / f"{arm}-seed{k}-{time.strftime('%Y%m%d-%H%M%S')}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(d), str(dest))
            print(f"  unfinished run {d} moved to {dest}")


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def measured_sft_steps(s: Settings, out: Path, dry_run: bool) -> int | None:
    """Continued-SFT steps matching the RL wall time (calibrated once, stored in ``_calibration``)."""
    rl = [
        m["rl_seconds"]
        for arm in SFT_MATCH
        for k in s.seeds
        if (m := _load_json(run_dir(out, arm, k) / "final_metrics.json")) and m.get("rl_seconds")
    ]
    if not rl and not dry_run:
        print(f"  no finished {list(SFT_MATCH)} runs to match: continued SFT skipped")
        return None
    timing_file = out / "_calibration" / "sft_timing.json"
    timing = _load_json(timing_file)
    if timing is None:
        if _run(calibration_command(s, out), out / "_calibration" / "run.log", dry_run) != 0 or dry_run:
            return None
        final = _load_json(out / "_calibration" / "final_metrics.json") or {}
        ws = _load_json(Path(final.get("policy_dir", "")) / "warm_start.json")
        if not ws:
            print("  calibration wrote no warm_start.json: continued SFT skipped")
            return None
        timing = {"seconds": ws["seconds"], "steps": ws["config"]["max_steps"]}
        timing_file.write_text(json.dumps(timing, indent=2) + "\n")
    if not rl:  # dry run before any RL run finished
        return None
    steps = sft_steps_from_timing(rl, timing["seconds"], timing["steps"])
    print(
        f"  continued SFT: {steps} steps (RL mean {statistics.fmean(rl):.0f} s; "
        f"SFT {timing['seconds'] / timing['steps']:.3f} s/step)"
    )
    return steps


def run_all(s: Settings, out: Path, dry_run: bool = False) -> bool:
    """Run every missing (arm, seed), then the default-view re-evaluations. True if nothing is missing."""
    ok = True
    order = [a for a in ARMS if a.name in s.arms]  # main first: the SFT control needs their RL times
    for arm in order:
        todo = missing_seeds(out, arm.name, s.seeds)
        if not todo:
            print(f"[{arm.name}] done ({len(s.seeds)} seeds)")
            continue
        print(f"[{arm.name}] seeds {todo}")
        sft_steps = None
        if arm.group == "sft":
            sft_steps = measured_sft_steps(s, out, dry_run)
            if sft_steps is None and not dry_run:
                ok = False
                continue
        if not dry_run:
            _set_aside(out, arm.name, todo)
        rc = _run(train_command(arm, todo, s, out, sft_steps), out / arm.name / "launcher.log", dry_run)
        if rc != 0:
            ok = False
            print(f"  [{arm.name}] some seeds failed; see {out / arm.name / 'failed_jobs.txt'}")
    # accuracy with PAPO's default masked view for arms trained with another view
    for k in s.seeds:
        ckpts = [
            run_dir(out, a, k) / "checkpoints" / "last.ckpt"
            for a in s.arms
            if not ARMS_BY_NAME[a].standard_view
            and (dry_run or (run_dir(out, a, k) / "final_metrics.json").exists())
            and not (run_dir(out, a, k) / EVAL_FILE).exists()
        ]
        if ckpts:
            print(f"[eval seed {k}] default-view accuracy of {len(ckpts)} run(s)")
            if _run(eval_command(ckpts, k, s, out), out / "_eval" / f"seed{k}.log", dry_run) != 0:
                ok = False
    return ok


# ---------------------------------------------------------------------------------------------- statistics

# two-sided 95 % quantiles of Student's t, by degrees of freedom (1..30); beyond 30 the normal's 1.96
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the half-width multiplier of a two-sided 95 % interval."""
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


def mean_ci(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, half-width of the 95 % t-interval, n) of the finite values; half-width nan when n < 2."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    m = statistics.fmean(xs)
    if n < 2:
        return m, math.nan, 1
    return m, t_quantile_975(n - 1) * statistics.stdev(xs) / math.sqrt(n), n


# ---------------------------------------------------------------------------------------------- results

# metric columns of the table: (column key, header)
VD_LEVELS = ("high", "medium", "none")
COLUMNS: tuple[tuple[str, str], ...] = (
    ("acc", f"val acc avg@{SAMPLED_K}"),
    *((f"acc_vd_{v}", f"acc vd={v}") for v in VD_LEVELS),
    ("acc_masked", "acc masked image"),
    ("vision_gap", "vision gap"),
    ("acc_greedy", "greedy acc"),
)
# where each column comes from in final_metrics.json (the published protocol: avg@k at T = 1.0; greedy aside)
METRIC_KEYS: dict[str, str] = {
    "acc": "val/sampled/acc",
    **{f"acc_vd_{v}": f"val/sampled/acc_by_vd/{v}" for v in VD_LEVELS},
    "acc_masked": "val/sampled/acc_masked",
    "acc_greedy": "val/acc",
}


def columns_of(metrics: dict[str, float]) -> dict[str, float]:
    """The table's columns from one validation's metrics (``final_metrics.json``'s before / after)."""
    out = {col: float(metrics.get(key, math.nan)) for col, key in METRIC_KEYS.items()}
    out["vision_gap"] = out["acc"] - out["acc_masked"]
    return out


@dataclass
class RunResult:
    """Final val metrics of one run (after RL)."""

    arm: str
    seed: int
    values: dict[str, float] = field(default_factory=dict)  # COLUMNS keys
    rl_steps: int | None = None
    seconds: float | None = None  # RL wall time (SFT wall time for the continued-SFT control)
    masked_source: str = "train"  # train: the run's own val; eval: re-evaluated with the default view


def read_run(out: Path, arm: str, seed: int) -> RunResult | None:
    """The finished run's metrics (``final_metrics.json``, plus the default-view eval when needed)."""
    d = run_dir(out, arm, seed)
    final = _load_json(d / "final_metrics.json")
    if final is None:
        return None
    after: dict[str, float] = final.get("after") or {}
    r = RunResult(arm, seed, rl_steps=final.get("rl_steps"), seconds=final.get("rl_seconds"))
    r.values = columns_of(after)
    spec = ARMS_BY_NAME.get(arm)
    if spec is not None and not spec.standard_view:
        ev = _load_json(d / EVAL_FILE)
        r.values["acc_masked"] = (ev or {}).get("metrics", {}).get(EVAL_MASKED_KEY, math.nan)
        r.values["vision_gap"] = r.values["acc"] - r.values["acc_masked"]
        r.masked_source = "eval"
    if spec is not None and spec.group == "sft":
        ws = _load_json(Path(final.get("policy_dir", "")) / "warm_start.json")
        r.seconds = ws.get("seconds") if ws else None
    return r


def read_before(out: Path, seeds: Sequence[int]) -> list[RunResult]:
    """The warm-start (before RL) metrics, from the arms that validated before RL."""
    rows = []
    for arm in (a for a in ARMS if a.before):
        for k in seeds:
            final = _load_json(run_dir(out, arm.name, k) / "final_metrics.json") or {}
            b = final.get("before") or {}
            if b:
                rows.append(RunResult("warm_start", k, values=columns_of(b), rl_steps=0))
        if rows:
            break
    return rows


def collect(out: Path, arms: Sequence[str], seeds: Sequence[int]) -> dict[str, list[RunResult]]:
    """Finished runs per arm (``warm_start`` first when available)."""
    res: dict[str, list[RunResult]] = {}
    before = read_before(out, seeds)
    if before:
        res["warm_start"] = before
    for a in [x.name for x in ARMS if x.name in arms]:  # table order: main, sft, gamma, mask, controls
        runs = [r for k in seeds if (r := read_run(out, a, k)) is not None]
        if runs:
            res[a] = runs
    return res


def summarize(res: dict[str, list[RunResult]]) -> list[dict[str, Any]]:
    """One row per arm: n, and mean / 95 % interval bounds of every column."""
    rows = []
    for arm, runs in res.items():
        spec = ARMS_BY_NAME.get(arm)
        row: dict[str, Any] = {
            "arm": arm,
            "group": spec.group if spec else "warm_start",
            "tests": spec.tests if spec else "the SFT warm start, before RL",
            "n": len(runs),
            "seeds": " ".join(str(r.seed) for r in runs),
        }
        for key, _ in COLUMNS:
            m, h, _n = mean_ci([r.values.get(key, math.nan) for r in runs])
            row[f"{key}_mean"], row[f"{key}_ci95_lo"], row[f"{key}_ci95_hi"] = m, m - h, m + h
        steps = [r.rl_steps for r in runs if r.rl_steps is not None]
        secs = [r.seconds for r in runs if r.seconds is not None]
        row["rl_steps_mean"] = statistics.fmean(steps) if steps else math.nan
        row["wall_s_mean"] = statistics.fmean(secs) if secs else math.nan
        row["masked_source"] = ",".join(sorted({r.masked_source for r in runs}))
        rows.append(row)
    return rows


def paired_differences(res: dict[str, list[RunResult]], key: str = "acc") -> list[dict[str, Any]]:
    """``a - b`` of ``key`` over the seeds both arms finished (same seed: same masks and data order)."""
    out = []
    for a, b, question in CONTRASTS:
        if a not in res or b not in res:
            continue
        va = {r.seed: r.values.get(key, math.nan) for r in res[a]}
        vb = {r.seed: r.values.get(key, math.nan) for r in res[b]}
        diffs = [va[k] - vb[k] for k in sorted(set(va) & set(vb))]
        m, h, n = mean_ci(diffs)
        out.append(
            {"a": a, "b": b, "question": question, "n": n, "mean": m, "ci95_lo": m - h, "ci95_hi": m + h}
        )
    return out


def _pm(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "n/a"
    if not math.isfinite(lo):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"


def format_markdown(rows: list[dict[str, Any]], diffs: list[dict[str, Any]], header: str = "") -> str:
    """The results table (mean ± 95 % t-interval half-width over seeds) and the paired differences."""
    cols = ["arm", "n", *(h for _, h in COLUMNS), "RL steps", "wall s", "tests"]
    lines = [header] if header else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["arm"], str(r["n"])]
        cells += [_pm(r[f"{k}_mean"], r[f"{k}_ci95_lo"], r[f"{k}_ci95_hi"]) for k, _ in COLUMNS]
        cells.append("n/a" if not math.isfinite(r["rl_steps_mean"]) else f"{r['rl_steps_mean']:.0f}")
        cells.append("n/a" if not math.isfinite(r["wall_s_mean"]) else f"{r['wall_s_mean']:.0f}")
        cells.append(r["tests"])
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Mean ± half-width of the 95 % t-interval over seeds. Accuracies are avg@{SAMPLED_K} at T = {SAMPLED_T}",
        "(the published protocol) except 'greedy acc'. 'acc masked image': with PAPO's default view (random",
        "14 px patches, p = 0.6); 'vision gap' = acc - acc masked. 'wall s': RL stage (continued SFT: its SFT",
        "stage). 'RL steps' below the configured steps: stopped early (collapse detector).",
    ]
    if diffs:
        lines += ["", "Paired differences of val acc (a - b, same seeds):", ""]
        lines += ["| a - b | question | n | difference |", "|---|---|---|---|"]
        for d in diffs:
            lines.append(
                f"| {d['a']} - {d['b']} | {d['question']} | {d['n']} | "
                f"{_pm(d['mean'], d['ci95_lo'], d['ci95_hi'], 3)} |"
            )
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows (dicts) as CSV, columns in first-seen order."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _curve(rows_by_arm: dict[str, dict[str, Any]], group: str, anchor: float) -> list[tuple[float, dict]]:
    pts = [
        (ARMS_BY_NAME[a].x, r)
        for a, r in rows_by_arm.items()
        if a in ARMS_BY_NAME and ARMS_BY_NAME[a].group == group
    ]
    if "papo_g" in rows_by_arm:
        pts.append((anchor, rows_by_arm["papo_g"]))
    return sorted(pts, key=lambda p: p[0])


def make_plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """acc_by_arm.png (real and masked image), gamma_curve.png, mask_ratio_curve.png (when they have points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    def err(r: dict[str, Any], key: str) -> float:
        h = (r[f"{key}_ci95_hi"] - r[f"{key}_ci95_lo"]) / 2
        return h if math.isfinite(h) else 0.0

    written = []
    if rows:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(rows) + 2), 4.2))
        xs = range(len(rows))
        w = 0.4
        for off, key, label in ((-w / 2, "acc", "real image"), (w / 2, "acc_masked", "masked image (p=0.6)")):
            ax.bar(
                [x + off for x in xs],
                [r[f"{key}_mean"] for r in rows],
                w,
                yerr=[err(r, key) for r in rows],
                capsize=3,
                label=label,
            )
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f"{r['arm']}\n(n={r['n']})" for r in rows], rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(f"final val accuracy (avg@{SAMPLED_K}, T={SAMPLED_T})")
        ax.set_title("Final val accuracy per arm (mean, 95% t-interval over seeds)", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / "acc_by_arm.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        written.append(p)
    by_arm = {r["arm"]: r for r in rows}
    for group, anchor, fname, xlabel, logx in (
        ("gamma", STANDARD_GAMMA, "gamma_curve.png", "gamma (PAPO-G)", True),
        ("mask", STANDARD_MASK, "mask_ratio_curve.png", "mask ratio (PAPO-G)", False),
    ):
        pts = _curve(by_arm, group, anchor)
        if len(pts) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for key, label in (("acc", "real image"), ("acc_vd_high", "vision-dependency high")):
            ax.errorbar(
                [x for x, _ in pts],
                [r[f"{key}_mean"] for _, r in pts],
                yerr=[err(r, key) for _, r in pts],
                marker="o",
                capsize=3,
                label=label,
            )
        if "grpo" in by_arm:
            ax.axhline(by_arm["grpo"]["acc_mean"], color="grey", ls="--", label="GRPO (overall)")
        if "warm_start" in by_arm:
            ax.axhline(by_arm["warm_start"]["acc_mean"], color="grey", ls=":", label="warm start (overall)")
        if logx:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks([x for x, _ in pts], [f"{x:g}" for x, _ in pts])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"final val accuracy (avg@{SAMPLED_K}, T={SAMPLED_T})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / fname
        fig.savefig(p, dpi=120)
        plt.close(fig)
        written.append(p)
    return written


def report(s: Settings, out: Path) -> str:
    """Write results.md / results.csv / runs.csv and the plots; return the Markdown."""
    res = collect(out, s.arms, s.seeds)
    rows = summarize(res)
    diffs = paired_differences(res)
    header = (
        f"# Reproduction on the embedded task ({'quick' if s.quick else 'full'}: {s.steps} RL steps, "
        f"{s.val_size} val prompts, seeds {list(s.seeds)})\n\nGenerated {time.strftime('%Y-%m-%d %H:%M')} "
        f"by scripts/reproduce.py from {out}.\n"
    )
    md = format_markdown(rows, diffs, header)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(md)
    write_csv(out / "results.csv", rows)
    if diffs:
        write_csv(out / "differences.csv", diffs)
    runs = [
        {
            "arm": arm,
            "seed": r.seed,
            **r.values,
            "rl_steps": r.rl_steps,
            "wall_s": r.seconds,
            "masked_source": r.masked_source,
        }
        for arm, rs in res.items()
        for r in rs
    ]
    if runs:
        write_csv(out / "runs.csv", runs)
    make_plots(rows, out)
    return md


# ---------------------------------------------------------------------------------------------- streams


def split_streams(s: Settings, n: int) -> list[tuple[str, ...]]:
    """The arms in ``n`` groups of about equal expected time (longest first into the least loaded group).
    The continued-SFT control stays in group 0 with the RL arms whose wall time it matches, which run
    before it there (``run_all`` keeps the order of ``ARMS``)."""
    cost = {a: estimate_seconds(replace(s, arms=(a,))) for a in s.arms}
    loads = [0.0] * n
    groups: list[list[str]] = [[] for _ in range(n)]
    if any(ARMS_BY_NAME[a].group == "sft" for a in s.arms):
        groups[0] += [a for a in s.arms if a in SFT_MATCH or ARMS_BY_NAME[a].group == "sft"]
        loads[0] += sum(cost[a] for a in groups[0])
    for a in sorted((a for a in s.arms if a not in groups[0]), key=lambda a: -cost[a]):
        i = loads.index(min(loads))
        groups[i].append(a)
        loads[i] += cost[a]
    order = {a.name: i for i, a in enumerate(ARMS)}
    return [tuple(sorted(g, key=order.__getitem__)) for g in groups if g]


def run_streams(s: Settings, out: Path, n: int, argv: Sequence[str]) -> bool:
    """Run the arms in ``n`` parallel processes of this script (one torch thread each: 2 processes on 2
    cores beat one process with 2 threads for this overhead-bound model). Logs: ``<out>/_streams/``."""
    streams = split_streams(s, n)
    base = _strip_option(_strip_option(argv, "--arms"), "--streams")
    procs = []
    for i, arms in enumerate(streams):
        log = out / "_streams" / f"stream{i}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), *base, "--arms", *arms, "--streams", "1"]
        cmd.append("--runs-only")
        print(f"[stream {i}] {' '.join(arms)} (log: {log})", flush=True)
        procs.append((i, subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("a"), stderr=subprocess.STDOUT)))
    ok = True
    for i, proc in procs:
        rc = proc.wait()
        print(f"[stream {i}] exit {rc}", flush=True)
        ok = ok and rc == 0
    return ok


def _strip_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` without ``option`` and the values that follow it (up to the next ``--flag``)."""
    out, skipping = [], False
    for a in argv:
        if a == option:
            skipping = True
            continue
        if a.startswith(option + "="):
            continue
        if skipping and a.startswith("--"):
            skipping = False
        if not skipping:
            out.append(a)
    return out


# ---------------------------------------------------------------------------------------------- CLI


def check_plan(s: Settings, out: Path, dry_run: bool) -> None:
    """Refuse to resume into a directory made with other settings (steps, val size, overrides)."""
    path = out / "plan.json"
    old = _load_json(path)
    if old is not None and old != s.plan():
        raise SystemExit(
            f"{out} holds runs made with other settings {old} (now {s.plan()}); use another --out"
        )
    if old is None and not dry_run:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(s.plan(), indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="6 arms, 40 RL steps, 500 val prompts (<= 20 min)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and the expected time only")
    p.add_argument("--report-only", action="store_true", help="only rebuild the table and plots")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="RL seeds (at least 3)")
    p.add_argument("--arms", nargs="+", default=None, help=f"subset of arms: {list(ARMS_BY_NAME)}")
    p.add_argument(
        "--out", type=Path, default=None, help="default: logs/reproduce (quick: logs/reproduce_quick)"
    )
    p.add_argument(
        "--override", action="append", default=[], help="extra Hydra override of every training run"
    )
    p.add_argument(
        "--eval-override", action="append", default=[], help="extra Hydra override of the src/eval.py runs"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"RL steps per run (default: {FULL_STEPS}; quick: {QUICK_STEPS})",
    )
    p.add_argument(
        "--val-size", type=int, default=None, help=f"val prompts (default: {FULL_VAL}; quick: {QUICK_VAL})"
    )
    p.add_argument(
        "--streams",
        type=int,
        default=2,
        help="parallel processes, each with num_threads=1 (default 2: on 2 cores, 1.7x the throughput of "
        "one process with 2 threads); 1: one process, torch's default threads",
    )
    p.add_argument("--runs-only", action="store_true", help=argparse.SUPPRESS)  # a stream: no report
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.streams < 1:
        p.error(f"--streams={args.streams} must be >= 1")
    if args.streams > 1 and not any(_override_key(o) == "num_threads" for o in args.override):
        args.override.append("num_threads=1")
        argv += ["--override", "num_threads=1"]
    if len(set(args.seeds)) < 3:
        p.error("at least 3 distinct seeds are needed for a 95% interval worth reading")
    try:
        s = settings_for(
            args.quick, args.seeds, args.arms, args.override, args.steps, args.val_size, args.eval_override
        )
    except ValueError as err:
        p.error(str(err))
    out = (args.out or ROOT / "logs" / ("reproduce_quick" if args.quick else "reproduce")).resolve()
    check_plan(s, out, args.dry_run or args.report_only)
    todo = sum(len(missing_seeds(out, a, s.seeds)) for a in s.arms)
    streams = split_streams(s, args.streams) if args.streams > 1 else [s.arms]
    est = expected_seconds(s, args.streams)
    print(
        f"reproduction ({'quick' if s.quick else 'full'}) in {out}: {len(s.arms)} arms x {len(s.seeds)} seeds, "
        f"{todo} run(s) to do in {len(streams)} stream(s); expected {est / 60:.0f} min for all of it on 2 quiet "
        f"CPU cores (+{WARM_START_S / 60:.1f} min if the warm start is not cached)"
    )
    ok = True
    if not args.report_only:
        t0 = time.time()
        if len(streams) > 1 and not args.dry_run:
            ok = run_streams(s, out, args.streams, argv)
        else:
            ok = run_all(s, out, args.dry_run)
        if not args.dry_run:
            print(f"runs finished in {(time.time() - t0) / 60:.1f} min")
    if args.dry_run or args.runs_only:
        return 0 if ok else 1
    md = report(s, out)
    print("\n" + md)
    print(f"wrote {out / 'results.md'}, results.csv, runs.csv and the plots")
    missing = {a: m for a in s.arms if (m := missing_seeds(out, a, s.seeds))}
    if missing:
        print(f"unfinished runs (re-run the same command to resume): {missing}")
    return 0 if ok and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
