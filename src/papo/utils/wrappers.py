"""Run wrappers (after lightning-hydra-template's task_wrapper): always close W&B so a failed job of a
multirun never leaks its run into the next job, log where outputs went, and record a failed multirun job
in ``<sweep dir>/failed_jobs.txt`` (papo.utils.sweep), and exit with status 143 when SIGTERM stopped the run
(Lightning's SIGTERMException would exit with 0). :func:`config_error_exit` turns a config error of an entry
point into its message on stderr and exit status 2, without a traceback."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from papo.utils.sweep import multirun_job, record_failed_job

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
            if _is_config_error(err):
                # no traceback: the entry point prints the message (single run); a multirun job logs it
                if multirun_job() is not None:
                    log.error("%s", err.report())  # type: ignore[attr-defined]
            else:
                log.exception("Run failed; outputs are in %s", cfg.paths.get("output_dir", "?"))
            # multirun: one line in <sweep dir>/failed_jobs.txt; Hydra keeps the exception until the sweep
            # ends, so drop its frames' locals (model, batches) before the next job starts
            if record_failed_job(err) is not None:
                traceback.clear_frames(err.__traceback__)
            raise
        except SystemExit as err:
            if not _is_sigterm(err):
                raise
            # Lightning turns SIGTERM into SIGTERMException, a SystemExit without a code: exit status 0, as if
            # the run had finished. A stopped run must not look finished (schedulers, sweeps, scripts).
            failed = True
            log.error(
                "stopped by SIGTERM; the state at the stop is in %s/checkpoints (when checkpointing is on): "
                "resume with hydra.run.dir=%s ckpt_path=last; exit status %d",
                cfg.paths.get("output_dir", "?"),
                cfg.paths.get("output_dir", "?"),
                SIGTERM_EXIT,
            )
            record_failed_job(RuntimeError("stopped by SIGTERM"))
            raise SystemExit(SIGTERM_EXIT) from None
        finally:
            try:
                import wandb

                if wandb.run is not None:
                    wandb.finish(exit_code=1 if failed else 0)
            except Exception:  # pragma: no cover - wandb optional at teardown
                pass

    return wrapped


#: exit status of an entry point stopped by an invalid config (argparse's usage-error status)
CONFIG_ERROR_EXIT = 2
#: exit status of a run stopped by SIGTERM (128 + 15, the shell's convention for a signal's death)
SIGTERM_EXIT = 143


def _is_sigterm(err: BaseException) -> bool:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return isinstance(err, SIGTERMException)


def _is_config_error(err: BaseException) -> bool:
    from papo.config_validation import ConfigError

    return isinstance(err, ConfigError)


@contextlib.contextmanager
def config_error_exit() -> Iterator[None]:
    """In a single run, a ConfigError prints ``err.report()`` (one line per problem) to stderr and exits with
    status :data:`CONFIG_ERROR_EXIT`, with no traceback (neither ours nor Hydra's). In a multirun it is
    raised as before, so Hydra records the failed job and the other jobs still run."""
    from papo.config_validation import ConfigError

    try:
        yield
    except ConfigError as err:
        if multirun_job() is not None:
            raise
        sys.stdout.flush()
        print(err.report(), file=sys.stderr, flush=True)
        raise SystemExit(CONFIG_ERROR_EXIT) from None
