"""Run wrappers (after lightning-hydra-template's task_wrapper): always close W&B so a failed job of a
multirun never leaks its run into the next job, and log where outputs went."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def task_wrapper(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a task function: log failures with the output dir, always finish the W&B run."""

    @functools.wraps(fn)
    def wrapped(cfg: Any) -> Any:
        try:
            return fn(cfg)
        except Exception:
            log.exception("Run failed; outputs are in %s", cfg.paths.get("output_dir", "?"))
            raise
        finally:
            try:
                import wandb

                if wandb.run is not None:
                    wandb.finish()
            except Exception:  # pragma: no cover - wandb optional at teardown
                pass

    return wrapped
