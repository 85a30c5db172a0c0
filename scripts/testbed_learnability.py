"""Learnability check of the shortcut testbed (``data=shortcut``, docs/testbed.md).

Two questions, one arm each per setting:

* Can supervised training teach the tiny model the image-dependent questions at all? ``no_shortcut_*`` arms
  train on rows whose wording is independent of the answer (``shortcut_rate=null``), on the testbed's
  tasks (count and shape); ``three_tasks_no_shortcut_600`` adds the colour task.
* Does the language-prior shortcut trap it? ``shortcut_*`` arms train on the testbed's training data
  (wording = answer prior for 90 % of the rows) and report accuracy separately on the shortcut-consistent
  and the shortcut-breaking validation rows (``acc_by_vd/low`` and ``acc_by_vd/high``).

Each arm runs ``src/eval.py`` (greedy decoding, real and masked image, the first ``--limit`` val rows) on the
policy an RL run would start from: the embedded model after the supervised warm start, built with the arm's
overrides and cached under ``.cache/warm_start`` (a second run reuses it and only re-evaluates). Results go
to ``logs/testbed/learnability-<time>.json`` (date, commit, machine, command, per-arm metrics and times) and
the table between the markers of docs/testbed.md is regenerated from that JSON.

    python scripts/testbed_learnability.py                       # every arm
    python scripts/testbed_learnability.py --arms no_shortcut_600 --limit 300
    python scripts/testbed_learnability.py --table-from logs/testbed/learnability-<time>.json  # table only
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "testbed.md"
BEGIN, END = "<!-- learnability table: begin -->", "<!-- learnability table: end -->"

ALL_TASKS = "data.train_dataset.task_weights={count: 1.0, color: 1.0, shape: 1.0}"
TESTBED_TASKS = "data.train_dataset.task_weights={count: 1.0, color: 0.0, shape: 1.0}"
NO_SHORTCUT = "data.train_dataset.shortcut_rate=null"
SHORTCUT = "data.train_dataset.shortcut_rate=0.9"


def _steps(n: int) -> str:
    return f"warm_start.max_steps={n}"


#: arm -> (what it measures, overrides of src/eval.py); the testbed's tasks are count and shape, and every
#: no_shortcut / shortcut pair differs only in the training data's shortcut
ARMS: dict[str, tuple[str, list[str]]] = {
    **{
        f"no_shortcut_{n}": (
            f"no shortcut, {n} SFT steps, count / shape",
            [NO_SHORTCUT, TESTBED_TASKS, _steps(n)],
        )
        for n in (200, 400, 600)
    },
    **{
        f"shortcut_0.9_{n}": (
            f"shortcut 0.9, {n} SFT steps, count / shape",
            [SHORTCUT, TESTBED_TASKS, _steps(n)],
        )
        for n in (200, 400, 600)
    },
    "three_tasks_no_shortcut_600": (
        "no shortcut, 600 SFT steps, count / colour / shape",
        [NO_SHORTCUT, ALL_TASKS, _steps(600)],
    ),
}
COLUMNS = (
    ("acc", "acc"),
    ("acc_by_task/count", "count"),
    ("acc_by_task/color", "colour"),
    ("acc_by_task/shape", "shape"),
    ("acc_by_vd/low", "consistent"),
    ("acc_by_vd/high", "breaking"),
    ("acc_masked", "acc masked"),
    ("acc_masked_by_vd/low", "consistent masked"),
    ("acc_masked_by_vd/high", "breaking masked"),
    ("vision_gap", "vision gap"),
)


def git_commit() -> str:
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    )
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def run_arm(name: str, overrides: list[str], out_dir: Path, limit: int, threads: int) -> dict[str, Any]:
    """Run src/eval.py for one arm; return its metrics, warm-start record and wall time."""
    run_dir = out_dir / name
    cmd = [
        sys.executable,
        str(ROOT / "src" / "eval.py"),
        "data=shortcut",
        *overrides,
        "eval.split=val",
        f"eval.limit={limit}",
        "eval.samples=0",
        "eval.kl_prcp=false",
        "eval.num_samples_shown=0",
        f"num_threads={threads}",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
    ]
    t0 = time.time()
    with (out_dir / f"{name}.log").open("w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        raise RuntimeError(f"arm {name} failed (exit {rc}); see {out_dir / f'{name}.log'}")
    result = json.loads((run_dir / "eval_val.json").read_text())
    policy_dir = Path(result["source"].removeprefix("model "))
    warm = json.loads((policy_dir / "warm_start.json").read_text())
    metrics = {k.removeprefix("greedy/"): v for k, v in result["metrics"].items() if k.startswith("greedy/")}
    return {
        "overrides": overrides,
        "num_prompts": result["num_prompts"],
        "counts": result["counts"],
        "metrics": metrics,
        "warm_start": {
            "dir": str(policy_dir),
            "rows": warm["rows"],
            "seconds": warm["seconds"],
            **warm["config"],
        },
        "wall_seconds": time.time() - t0,
    }


def markdown_table(report: dict[str, Any]) -> str:
    """The docs table: one row per arm, accuracies in %."""
    head = "| arm | " + " | ".join(label for _, label in COLUMNS) + " | SFT s |"
    lines = [
        f"Measured {report['date']} at commit {report['commit']} on {report['machine']['cpu_count']} cores "
        f"(load average at the start {report['machine']['load_avg'][0]:.1f}), `{report['command']}`; "
        f"greedy decoding, first {report['limit']} val rows (half shortcut-consistent, half breaking). "
        "Accuracies in %; '-' = task not in the arm's data. 'SFT s': the warm start's training time when it "
        "was built.",
        "",
        head,
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for name, arm in report["arms"].items():
        m = arm["metrics"]
        cells = [f"{100 * m[key]:.1f}" if key in m else "-" for key, _ in COLUMNS]
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {arm['warm_start']['seconds']:.0f} |")
    return "\n".join(lines)


def write_table(report: dict[str, Any]) -> None:
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        raise RuntimeError(f"{DOC} lacks the markers {BEGIN!r} / {END!r}")
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    DOC.write_text(f"{before}{BEGIN}\n{markdown_table(report)}\n{END}{after}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--limit", type=int, default=600, help="val rows evaluated per arm")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "testbed", help="JSON and run folder")
    parser.add_argument("--table-from", type=Path, help="only regenerate the docs table from this JSON")
    args = parser.parse_args()
    if args.table_from:
        write_table(json.loads(args.table_from.read_text()))
        return
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = args.out / f"learnability-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": "python scripts/testbed_learnability.py " + " ".join(sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_avg": os.getloadavg(),
        },
        "limit": args.limit,
        "arms": {},
    }
    for name in args.arms:
        print(f"[{name}] {ARMS[name][0]} ...", flush=True)
        report["arms"][name] = {
            "description": ARMS[name][0],
            **run_arm(name, ARMS[name][1], out_dir, args.limit, args.threads),
        }
        m = report["arms"][name]["metrics"]
        print(f"[{name}] acc {100 * m['acc']:.1f}, masked {100 * m['acc_masked']:.1f}", flush=True)
    path = args.out / f"learnability-{stamp}.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    write_table(report)
    print(markdown_table(report))
    print(f"wrote {path} and the table of {DOC}")


if __name__ == "__main__":
    main()
