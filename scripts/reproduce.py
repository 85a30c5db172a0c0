#!/usr/bin/env python
"""One command for the reproduction on the embedded task: prints and runs its Hydra multiruns, then the report.

    python scripts/reproduce.py --quick        # 5 arms + the continued-SFT control x 3 seeds, <= 20 min, 2 cores
    python scripts/reproduce.py                # 14 arms + the continued-SFT control x 3 seeds
    python scripts/reproduce.py --dry-run      # print the commands only
    python scripts/reproduce.py --quick --streams 4 trainer=gpu     # Hydra overrides go to every stage
    python scripts/reproduce.py --quick seed=0,1,2,3,4               # more seeds (the re-evaluations follow)
    python scripts/reproduce.py experiment=repro/grpo,repro/papo_g,repro/sft_calibration   # some arms only
    python scripts/reproduce.py --launcher slurm hydra.launcher.partition=gpu   # the same sweep on SLURM
    python scripts/reproduce.py --preset testbed   # GRPO, PAPO-G, VPPO, NoisyRollout, continued SFT x 5 seeds
                                                   # on the shortcut testbed (configs/reproduce/testbed.yaml)

A thin convenience: the experiments are configs (configs/experiment/repro/, configs/reproduce/,
configs/reproduce_eval/) and every stage is a plain Hydra multirun that can be run by hand
(docs/reproduction.md). The stages, in order:

1. ``python src/train.py -m reproduce=<mode>``: every RL arm x seed, and the continued-SFT timing calibration;
2. ``python src/train.py -m reproduce=<mode> experiment=repro/sft_continued warm_start.continue_steps=N``:
   the continued-SFT control, N = ``scripts/repro_report.py --sft-steps`` (matched compute: the RL arms'
   measured wall time over the calibration's SFT seconds per step);
3. ``python src/eval.py -m reproduce_eval=<mode>``: PAPO's default-view masked accuracy of the arms trained
   with another view (presets without a ``configs/reproduce_eval/<mode>.yaml`` have none: no stage 3);
4. ``scripts/repro_report.py <sweep dir>``: results.md / .csv and the plots.

Resume: re-run the same command. Finished training runs are skipped (``skip_finished``), unfinished ones
start over; the stage-3 re-evaluations are cheap and run again. Each stage's command, wall time and exit
status are appended to ``<sweep dir>/timing.json`` (with date, commit and machine), which the report prints.
There is no scheduler here: the launcher (``hydra/launcher=streams``: joblib, ``--streams`` jobs at once, one
torch thread each; ``--launcher slurm``: submitit) runs the jobs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "src"))

from omegaconf import OmegaConf  # noqa: E402

import repro_report  # noqa: E402
from papo.utils.provenance import provenance  # noqa: E402


def eval_accepts(override: str) -> bool:
    """Whether a training override also applies to src/eval.py: its top-level key is a group or key of
    configs/eval.yaml (model, data, rollout, trainer, num_threads, ...) or of Hydra itself."""
    eval_cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "eval.yaml"))
    groups = {next(iter(d)) if isinstance(d, dict) else d for d in eval_cfg["defaults"]}
    top = override.lstrip("+~").split("=", 1)[0].split(".", 1)[0].split("/", 1)[0]
    if top == "experiment":  # the arms of stages 1-2; the re-evaluation sweeps repro_arm instead
        return False
    return top in groups or top in eval_cfg or top == "hydra"


def stage_commands(mode: str, out: Path | None, extra: list[str], sft_steps: int | str) -> list[list[str]]:
    """The multirun commands of a reproduction (``mode``: a configs/reproduce preset): three, or two when the
    preset has no default-view re-evaluation (no ``configs/reproduce_eval/<mode>.yaml``)."""
    py = sys.executable
    out_train = [f"hydra.sweep.dir={out}"] if out else []
    out_eval = [f"repro_dir={out}"] if out else []
    sft = ["experiment=repro/sft_continued", f"warm_start.continue_steps={sft_steps}"]
    stages = [
        [py, "src/train.py", "-m", f"reproduce={mode}", *out_train, *extra],
        [py, "src/train.py", "-m", f"reproduce={mode}", *out_train, *extra, *sft],  # sft last: it wins
    ]
    if (ROOT / "configs" / "reproduce_eval" / f"{mode}.yaml").exists():
        evaluate = [py, "src/eval.py", "-m", f"reproduce_eval={mode}", *out_eval]
        stages.append(evaluate + [o for o in extra if eval_accepts(o)])
    return stages


def run_stage(cmd: list[str], record: dict) -> int:
    """Run one stage in the project root (its output on this terminal); record its wall time and status."""
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.time()
    rc = subprocess.run(cmd, cwd=ROOT, check=False).returncode
    record["stages"].append({"command": shlex.join(cmd[1:]), "seconds": time.time() - t0, "returncode": rc})
    print(f"-> exit {rc} after {(time.time() - t0) / 60:.1f} min", flush=True)
    return rc


def save_timing(out: Path, record: dict) -> None:
    """Append this invocation's stage times to ``<out>/timing.json``."""
    path = out / repro_report.TIMING_FILE
    history = repro_report._load_json(path) or {"invocations": []}
    history["invocations"].append(record)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(history, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="the quick preset (configs/reproduce/quick.yaml)")
    ap.add_argument(
        "--preset",
        default=None,
        help="a configs/reproduce preset by name (quick | full | testbed); default full, --quick = quick",
    )
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report from the saved runs")
    ap.add_argument(
        "--out", type=Path, default=None, help="sweep dir (default: the preset's, logs/reproduce[_quick])"
    )
    ap.add_argument(
        "--streams", type=int, default=None, help="jobs at once (hydra.launcher.n_jobs; default 2)"
    )
    ap.add_argument("--launcher", default=None, help="hydra/launcher config: streams (default) | slurm")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides added to every stage")
    args = ap.parse_args(argv)
    mode = args.preset or ("quick" if args.quick else "full")
    if not (ROOT / "configs" / "reproduce" / f"{mode}.yaml").exists():
        names = sorted(p.stem for p in (ROOT / "configs" / "reproduce").glob("[!_]*.yaml"))
        raise SystemExit(f"--preset {mode}: no configs/reproduce/{mode}.yaml; valid: {names}")
    out = (args.out or ROOT / "logs" / ("reproduce" if mode == "full" else f"reproduce_{mode}")).resolve()
    extra = list(args.overrides)
    if args.launcher:
        extra.insert(0, f"hydra/launcher={args.launcher}")
    if args.streams:
        extra.append(f"hydra.launcher.n_jobs={args.streams}")
    outdir = Path(repro_report.shown(out)) if args.out else None  # the stages run in the repository root
    ok = True
    if not args.report_only:
        record = provenance(
            shlex.join(["scripts/reproduce.py", *(argv if argv is not None else sys.argv[1:])])
        )
        record["stages"] = []
        stage1, _, *stage3 = stage_commands(mode, outdir, extra, "N")
        if args.dry_run:
            for cmd in stage_commands(mode, outdir, extra, "<scripts/repro_report.py --sft-steps>"):
                print("$ " + shlex.join(cmd))
            print(f"$ {shlex.join([sys.executable, 'scripts/repro_report.py', str(out)])}")
            return 0
        ok = run_stage(stage1, record) == 0
        try:
            steps, basis = repro_report.matched_sft_steps(repro_report.find_runs(out)[0])
            print(f"continued SFT at matched compute: {steps} steps ({json.dumps(basis)})", flush=True)
            ok = run_stage(stage_commands(mode, outdir, extra, steps)[1], record) == 0 and ok
        except SystemExit as err:  # stage 1 left no RL times or calibration: no SFT control this time
            print(f"continued-SFT control not run: {err}", flush=True)
            ok = False
        for cmd in stage3:  # the default-view re-evaluations, where the preset has any
            ok = run_stage(cmd, record) == 0 and ok
        save_timing(out, record)
    md = repro_report.report(out)
    print("\n" + md)
    print(f"wrote {out / 'results.md'}, results.csv, runs.csv and the plots")
    unfinished = repro_report.find_runs(out)[1]
    return 0 if ok and not unfinished else 1


if __name__ == "__main__":
    sys.exit(main())
