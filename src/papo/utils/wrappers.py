"""Run wrappers (after lightning-hydra-template's task_wrapper): always close W&B so a failed job of a
multirun never leaks its run into the next job, log where outputs went, and record a failed multirun job
in ``<sweep dir>/failed_jobs.txt`` (papo.utils.sweep)."""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable
from typing import Any

from papo.utils.sweep import record_failed_job

log = logging.getLogger(__name__)


def task_wrapper(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a task function: log failures with the output dir, always finish the W&B run."""

    @functools.wraps(fn)
    def wrapped(cfg: Any) -> Any:
        failed = False
        try:
            return fn(cfg)
        except Exception as err:
            failed = True
            log.exception("Run failed; outputs are in %s", cfg.paths.get("output_dir", "?"))
            # multirun: one line in <sweep dir>/failed_jobs.txt; Hydra keeps the exception until the sweep
            # ends, so drop its frames' locals (model, batches) before the next job starts
            if record_failed_job(err) is not None:
                traceback.clear_frames(err.__traceback__)
            raise
        finally:
            try:
                import wandb

                if wandb.run is not None:
                    wandb.finish(exit_code=1 if failed else 0)
            except Exception:  # pragma: no cover - wandb optional at teardown
                pass

    return wrapped
