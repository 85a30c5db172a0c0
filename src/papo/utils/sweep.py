"""Multirun bookkeeping: a failed job of a Hydra sweep is written to ``<sweep dir>/failed_jobs.txt``.

Hydra's basic launcher runs every job of a sweep even when one raises (the exception is kept in the job's
``JobReturn``) and re-raises the FIRST failure once all jobs are done, so the command exits non-zero
but only names one failure. :func:`record_failed_job` (called by papo.utils.wrappers.task_wrapper) leaves
one line per failed job (job number, overrides, output dir, error) so a sweep's failures can be found
and re-run. The Optuna sweeper marks a failed trial FAIL and stops after a failure unless
``hydra.sweeper.max_failure_rate`` allows it (configs/hparams_search/optuna_gamma.yaml allows it).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

FAILED_JOBS_FILE = "failed_jobs.txt"


def _multirun_hydra_config():
    """Hydra's config of the running job when it is a job of a multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return hc if hc.mode == RunMode.MULTIRUN else None


def multirun_job_num() -> int | None:
    """The job number inside a multirun, else None."""
    hc = _multirun_hydra_config()
    return None if hc is None else int(hc.job.num)


def multirun_job() -> dict[str, str] | None:
    """The current job's number, overrides, output and sweep dirs when running inside a multirun, else None."""
    try:
        hc = _multirun_hydra_config()
        if hc is None:
            return None
        output_dir = str(hc.runtime.output_dir)
        try:
            sweep_dir = str(hc.sweep.dir)
        except Exception:  # an interpolation the hydra node alone cannot resolve
            sweep_dir = str(Path(output_dir).parent)
        return {
            "num": str(hc.job.num),
            "overrides": " ".join(hc.overrides.task),
            "output_dir": output_dir,
            "sweep_dir": sweep_dir,
        }
    except Exception:  # pragma: no cover - bookkeeping must never mask the job's own error
        return None


def record_failed_job(exc: BaseException) -> Path | None:
    """Append a line for the failed job to ``<sweep dir>/failed_jobs.txt`` (multirun only); return its path."""
    job = multirun_job()
    if job is None:
        return None
    msg = " ".join(str(exc).split())[:500]
    line = (
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}\tjob {job['num']}\t{job['overrides']}\t{job['output_dir']}"
        f"\t{type(exc).__name__}: {msg}\n"
    )
    path = Path(job["sweep_dir"], FAILED_JOBS_FILE)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(line)
    except OSError:  # pragma: no cover
        log.warning("could not write %s", path)
        return None
    log.error("multirun job %s failed (overrides: %s); recorded in %s", job["num"], job["overrides"], path)
    return path
