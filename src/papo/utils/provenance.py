"""Where a measurement comes from, and how a generated table is written into a Markdown document.

* :func:`provenance` -- date, git commit (``-dirty`` when the work tree has changes), machine and command of
  a measurement. papo.pipeline.train stores it in every run's ``final_metrics.json``; the scripts that turn
  saved results into tables (scripts/seed_summary.py, scripts/repro_report.py, scripts/bench.py) print it
  above the table.
* :func:`replace_section` -- replaces the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in a
  Markdown file, so docs/results.md and docs/performance.md keep their hand-written prose while their tables
  are regenerated from the JSON the measuring scripts save (nobody retypes a number).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

#: the repository root (src/papo/utils/ -> three levels up)
ROOT = Path(__file__).resolve().parents[3]


def git_commit(root: str | Path = ROOT) -> str:
    """``HEAD``'s hash, with ``-dirty`` when tracked files differ from it; ``unknown`` outside a checkout.

    ``PAPO_COMMIT`` in the environment wins: a copy of the tree measured outside its checkout (a GPU machine
    sent only the files, whose own ``.git`` may hold another commit) is told its commit that way."""
    if os.environ.get("PAPO_COMMIT"):
        return os.environ["PAPO_COMMIT"]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


def machine() -> dict[str, Any]:
    """The machine in a few fields: OS, processor, CPU count, torch threads and GPU (when torch is loaded)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def provenance(command: str | None = None) -> dict[str, Any]:
    """Date (local time, ISO), commit, machine and command (default: this process's command line)."""
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine(),
        "command": command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def describe_machine(m: dict[str, Any]) -> str:
    """One line for a table header: ``8 CPUs (x86_64, Linux-...), torch threads 2, GPU ...``."""
    parts = [f"{m.get('cpu_count') or '?'} CPUs ({m.get('processor') or '?'}, {m.get('platform') or '?'})"]
    if "torch_threads" in m:
        parts.append(f"torch threads {m['torch_threads']}")
    if m.get("gpu"):
        parts.append(f"GPU {m['gpu']}")
    return ", ".join(parts)


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_section(path: str | Path, name: str, body: str) -> None:
    """Replace what lies between the ``name`` markers of the Markdown file ``path`` by ``body``.

    The markers themselves stay (so the file can be regenerated again); a file without them is an error
    that names the markers to add, never a silent append.
    """
    path = Path(path)
    text = path.read_text()
    begin, end = _markers(name)
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"{path} needs exactly one '{begin}' ... '{end}' pair to regenerate that section")
    new = pattern.sub(lambda _: f"{begin}\n{body.strip()}\n{end}", text)
    path.write_text(new)


def read_section(path: str | Path, name: str) -> str:
    """The text between the ``name`` markers of ``path`` (stripped); an error when they are missing."""
    begin, end = _markers(name)
    m = re.search(re.escape(begin) + r"(.*?)" + re.escape(end), Path(path).read_text(), re.DOTALL)
    if m is None:
        raise ValueError(f"{path} has no '{begin}' ... '{end}' section")
    return m.group(1).strip()
