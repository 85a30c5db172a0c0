"""Reused worker processes for the symbolic answer check and user reward functions, stopped from outside at
a wall-clock deadline.

What it implements: :func:`run_isolated` runs a picklable function in a long-lived worker process (a
``pebble.ProcessPool`` with one worker, ``spawn`` start method, so nothing of the trainer's threads or CUDA
state is inherited). Each named pool has its own worker: ``"grading"`` (the default; math-verify, imported
and warmed once in the pool's initializer so the deadline of a call covers only that call's work: pebble
starts a task's clock when the worker picks it up) and ``"user_reward"`` (the user reward functions of
:mod:`papo.rewards.user_function`, kept apart so user code never shares a process with the grader). Past
the deadline pebble kills the worker process, which stops C code as well as Python code and leaves no
half-updated state behind in the caller; the next call gets a fresh worker.

Why a process: the input limits of :mod:`papo.rewards.grading_limits` keep every answer they admit far from
the deadline, so the deadline is a last resort; what it must stop is exactly what the limits failed to
foresee, and only a process can be stopped in every case (a thread cannot be interrupted inside one long
C call, such as a CPython big-int power).

Where no child process can be started (a daemonic process, e.g. a DataLoader worker; a worker of Hydra's
joblib launcher, whose loky start method a child cannot use), the function runs in the calling process
without a deadline, with one warning; :func:`in_process` does the same on purpose (tests
that spy on what grading calls).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any, TypeVar

__all__ = ["GRADING", "WorkerStats", "in_process", "run_isolated", "shutdown", "stats"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class WorkerStats:
    """Counters of this process's grading worker: deadline hits, worker deaths, worker starts."""

    def __init__(self) -> None:
        self.timeouts = 0
        self.crashes = 0
        self.pools_started = 0


GRADING = "grading"
"""Name of the grader's pool (the default of :func:`run_isolated`)."""

_STATS: dict[str, WorkerStats] = {}
_LOCK = threading.Lock()
_POOLS: dict[str, Any] = {}
_IN_PROCESS = threading.local()
_NO_CHILDREN = False  # this process cannot start children: run in-process (warned once)


def stats(pool: str = GRADING) -> WorkerStats:
    """The counters of this process's ``pool`` (read by tests and the grading benchmark)."""
    with _LOCK:
        return _STATS.setdefault(pool, WorkerStats())


def _init_worker(warm_up: Callable[[], None] | None) -> None:
    if warm_up is not None:
        warm_up()


def _pool(name: str, warm_up: Callable[[], None] | None) -> Any:
    global _NO_CHILDREN
    with _LOCK:
        pool = _POOLS.get(name)
        if pool is not None and pool.active:
            return pool
        if _NO_CHILDREN:
            return None
        reason = _why_no_children()
        if reason:
            _NO_CHILDREN = True
            log.warning(
                "grading and user reward functions run in this process without a deadline: %s (the input "
                "limits still bound every answer)",
                reason,
            )
            return None
        import pebble

        pool = _POOLS[name] = pebble.ProcessPool(
            max_workers=1,
            initializer=_init_worker,
            initargs=(warm_up,),
            context=multiprocessing.get_context("spawn"),
        )
        _STATS.setdefault(name, WorkerStats()).pools_started += 1
        return pool


def _why_no_children() -> str | None:
    """Why this process must not start a worker process, or None.

    A daemonic process (a DataLoader worker) cannot have children. A worker of joblib's loky backend (Hydra's
    joblib launcher, ``hydra/launcher=streams``) sets the process-wide start method to ``loky``: a spawned
    child cannot look that method up and dies at start, and a live child keeps the loky worker from exiting
    when joblib shuts it down, so the launcher never returns.
    """
    if multiprocessing.current_process().daemon:
        return "a daemonic process cannot start worker processes"
    method = multiprocessing.get_start_method(allow_none=True)
    if method not in (None, "fork", "spawn", "forkserver"):
        return f"this is a worker of a {method!r} process pool (e.g. Hydra's joblib launcher)"
    return None


def shutdown() -> None:
    """Stop every worker (at exit; tests call it to start from fresh workers)."""
    with _LOCK:
        for pool in _POOLS.values():
            pool.stop()
            pool.join()
        _POOLS.clear()


atexit.register(shutdown)


@contextlib.contextmanager
def in_process() -> Iterator[None]:
    """Within this block, :func:`run_isolated` calls run in the calling thread, without a deadline."""
    previous = getattr(_IN_PROCESS, "on", False)
    _IN_PROCESS.on = True
    try:
        yield
    finally:
        _IN_PROCESS.on = previous


def run_isolated(
    fn: Callable[..., _T],
    args: tuple[Any, ...],
    timeout_s: float,
    warm_up: Callable[[], None] | None = None,
    pool: str = GRADING,
) -> tuple[bool, _T | None]:
    """``(True, fn(*args))`` computed in the worker process of ``pool``, or ``(False, None)`` when it ran past
    ``timeout_s`` seconds (the worker is killed) or the worker died (both counted in :func:`stats` and
    logged). ``fn`` and ``args`` must be picklable; exceptions of ``fn`` are re-raised here.
    ``warm_up`` runs once in each new worker of ``pool`` before its first task (imports, caches)."""
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    worker = None if getattr(_IN_PROCESS, "on", False) else _pool(pool, warm_up)
    if worker is None:
        return True, fn(*args)
    from pebble import ProcessExpired

    counters = stats(pool)
    future = worker.schedule(fn, args=args, timeout=timeout_s)
    try:
        return True, future.result()
    except FutureTimeoutError:
        counters.timeouts += 1
        log.warning("%s worker killed at its %.1fs deadline (%d so far)", pool, timeout_s, counters.timeouts)
    except ProcessExpired as err:
        counters.crashes += 1
        log.warning("%s worker died (%s; %d so far)", pool, err, counters.crashes)
    return False, None
