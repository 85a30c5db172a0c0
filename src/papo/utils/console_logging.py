"""Every log record printed once on the console: Lightning's loggers routed to the root logger.

Two handlers print Lightning's records under Hydra: the console handler the ``lightning`` package installs on
its own logger at import ("INFO: Seed set to 42"; ``lightning.pytorch`` and ``lightning.fabric`` install one
too when the root logger had none at their import), and Hydra's console handler on the root logger
(``configs/hydra/default.yaml``, ``job_logging``), which gets the same record by propagation. Removing
Hydra's would also lose the run's log file, so :func:`route_lightning_to_root` removes Lightning's console
handlers instead and lets its records propagate: each line appears once, in Hydra's format, and also in
``<run dir>/<task_name>.log``. Called by the entry points (``src/train.py``, ``src/eval.py``) once Hydra has
configured logging; without a root handler (library use, tests) it changes nothing.
"""

from __future__ import annotations

import logging

__all__ = ["LIGHTNING_LOGGERS", "route_lightning_to_root"]

#: the loggers that Lightning (unified package and the standalone ones) gives console handlers of their own
LIGHTNING_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "lightning_fabric",
)


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def route_lightning_to_root() -> list[str]:
    """Drop Lightning's console handlers and make its loggers propagate, when the root logger has a console
    handler of its own (Hydra's). Returns the names of the loggers changed."""
    root = logging.getLogger()
    if not any(_is_console(h) for h in root.handlers):
        return []
    import lightning  # noqa: F401  (its import adds the handler: add it now, so it is removed below)

    changed = []
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        console = [h for h in logger.handlers if _is_console(h)]
        for handler in console:
            logger.removeHandler(handler)
        if console or not logger.propagate:
            logger.propagate = True
            changed.append(name)
    return changed
