"""A finished run is not run again: the resumability of sweeps (``skip_finished``, configs/train.yaml).

A training run is finished when :func:`papo.pipeline.train` has written ``<output dir>/final_metrics.json``
(val metrics after RL and before it, RL wall time and steps). With ``skip_finished: true`` (the reproduction
presets in configs/reproduce/ set it) a job whose output dir holds that file returns the metrics saved there
instead of training, so re-running a multirun into the same deterministic ``hydra.sweep.dir`` runs only the
jobs that have not finished. An unfinished job starts over: what its earlier attempt left (checkpoints, CSV
log, W&B offline run, ...) is moved to ``<output dir>/incomplete-<time>/`` first, kept for inspection, so
the new attempt does not mix with it. Hydra's own ``.hydra/`` and the job's ``*.log`` stay in place.

Any fresh run (``ckpt_path: null``) started in a directory that holds an earlier run moves that run's outputs
to ``<output dir>/previous-<time>/`` the same way (:func:`set_aside_previous_run`), so nothing of it is lost.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: written by papo.pipeline.train when a run has finished; read by the sweep scripts in scripts/
FINAL_METRICS_FILE = "final_metrics.json"
#: prefix of the folder an unfinished attempt's outputs are moved to
INCOMPLETE_PREFIX = "incomplete-"
#: prefix of the folder an earlier run's outputs are moved to when a fresh run starts in its directory
PREVIOUS_PREFIX = "previous-"
#: papo.pipeline.train's own files in the run's output dir: the validation before RL (a resumed run reuses
#: it), the before/after table, the rows dropped at data setup
VAL_BEFORE_FILE = "val_before.json"
VAL_BEFORE_AFTER_FILE = "val_before_after.txt"
DROPPED_ROWS_FILE = "dropped_rows.jsonl"
#: the per-benchmark table of a run with named val sets (val_sets), written after the last validation at step
#: ``step`` (as the sample tables: val_samples/step<N>.md)
VAL_SETS_TABLE = "val_sets_step{step:06d}.md"
#: what a run leaves in its output dir (a directory holding one of these holds a run)
RUN_MARKERS = (FINAL_METRICS_FILE, "checkpoints", "csv", VAL_BEFORE_FILE, "wandb")
#: everything a run of src/train.py writes in its output dir (configs/callbacks, configs/logger, the pipeline):
#: only these move when a run is set aside; anything else there (a folder kept next to the run, or a whole
#: project when ``hydra.run.dir=.``) stays where it is
RUN_OUTPUTS = (
    *RUN_MARKERS,
    VAL_BEFORE_AFTER_FILE,
    DROPPED_ROWS_FILE,
    "collapse.txt",
    "collapse.json",
    "val_samples",
    "hf_model",
    "lightning_logs",
)
#: ... and the files named by step or rank: the val-sets tables, papo.callbacks.rank_sync's per-rank records
_NUMBERED_OUTPUTS = re.compile(r"val_sets_step\d+\.md|rank\d+\.json")


def load_final_metrics(output_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``final_metrics.json`` as a dict, or None when the run has not finished (or it is unreadable)."""
    try:
        return json.loads(Path(output_dir, FINAL_METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None


def returned_metrics(final: dict[str, Any]) -> dict[str, float]:
    """What ``train()`` returns for a finished run: the val metrics after RL, plus ``before/<key>`` ones."""
    out = {k: float(v) for k, v in (final.get("after") or {}).items()}
    out.update({f"before/{k}": float(v) for k, v in (final.get("before") or {}).items()})
    return out


def set_aside_incomplete(output_dir: str | Path) -> Path | None:
    """Move what an earlier, unfinished attempt left in ``output_dir`` into ``incomplete-<time>/``.

    What moves is the run's own outputs (:data:`RUN_OUTPUTS`, the ranks' records): not ``.hydra/`` (rewritten
    by Hydra for this attempt), the job's ``*.log`` files (Hydra's handler has them open), earlier
    ``incomplete-*`` / ``previous-*`` folders, nor anything else. Returns the folder, or None when there was
    nothing to move.
    """
    return _set_aside(Path(output_dir), INCOMPLETE_PREFIX, "unfinished earlier attempt")


def set_aside_previous_run(output_dir: str | Path) -> Path | None:
    """A fresh run (no ``ckpt_path``) in a directory that holds an earlier run (``hydra.run.dir`` of an
    existing run, a multirun re-run into the same sweep dir): move that run's outputs into
    ``previous-<time>/`` as :func:`set_aside_incomplete` does. Otherwise Lightning's CSV logger deletes its
    ``metrics.csv``, its ``final_metrics.json`` is overwritten and its checkpoints mix with the new run's
    (``ckpt_path=last`` would then pick by write time among both). None when the directory holds no run."""
    out = Path(output_dir)
    if not any((out / marker).exists() for marker in RUN_MARKERS):
        return None
    return _set_aside(
        out, PREVIOUS_PREFIX, "an earlier run", " (to continue a run instead, pass ckpt_path=last)"
    )


def _set_aside(out: Path, prefix: str, what: str, hint: str = "") -> Path | None:
    if not out.is_dir():
        return None
    stale = [p for p in out.iterdir() if p.name in RUN_OUTPUTS or _NUMBERED_OUTPUTS.fullmatch(p.name)]
    if not stale:
        return None
    dest = out / f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}"
    k = 1
    while dest.exists():  # two set-asides within a second
        dest = out / f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}-{k}"
        k += 1
    dest.mkdir()
    for p in stale:
        shutil.move(str(p), str(dest / p.name))
    log.warning("%s in %s: its outputs moved to %s; starting over%s", what, out, dest, hint)
    return dest
