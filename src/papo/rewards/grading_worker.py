"""A reused worker process for the symbolic answer check, stopped from outside at a wall-clock deadline.

What it implements: :func:`run_isolated` runs a picklable function in one long-lived worker process (a
``pebble.ProcessPool`` with one worker, ``spawn`` start method, so nothing of the trainer's threads or CUDA
state is inherited). The worker imports math-verify and warms its parser once, in the pool's initializer,
so the deadline of a call covers only that call's work (pebble starts a task's clock when the worker picks
it up). Past the deadline pebble kills the worker process, which stops C code as well as Python code and
leaves no half-updated state behind in the caller; the next call gets a fresh worker.

Why a process: the input limits of :mod:`papo.rewards.grading_limits` keep every answer they admit far from
the deadline, so the deadline is a last resort; what it must stop is exactly what the limits failed to
foresee, and only a process can be stopped in every case (a thread cannot be interrupted inside one long
C call, such as a CPython big-int power).

Where no child process can be started (a daemonic process, e.g. a DataLoader worker), the function runs in
the calling process without a deadline, with one warning; :func:`in_process` does the same on purpose (tests
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

__all__ = ["WorkerStats", "in_process", "run_isolated", "shutdown", "stats"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class WorkerStats:
    """Counters of this process's grading worker: deadline hits, worker deaths, worker starts."""

    def __init__(self) -> None:
        self.timeouts = 0
        self.crashes = 0
        self.pools_started = 0


_STATS = WorkerStats()
_LOCK = threading.Lock()
_POOL: Any = None
_IN_PROCESS = threading.local()
_NO_CHILDREN = False  # this process cannot start children: run in-process (warned once)


def stats() -> WorkerStats:
    """The counters of this process (read by tests and the grading benchmark)."""
    return _STATS


def _init_worker(warm_up: Callable[[], None] | None) -> None:
    if warm_up is not None:
        warm_up()


def _pool(warm_up: Callable[[], None] | None) -> Any:
    global _POOL, _NO_CHILDREN
    with _LOCK:
        if _POOL is not None and _POOL.active:
            return _POOL
        if _NO_CHILDREN:
            return None
        if multiprocessing.current_process().daemon:
            _NO_CHILDREN = True
            log.warning(
                "grading runs in this process without a deadline: a daemonic process cannot start the "
                "grading worker (the input limits still bound every answer)"
            )
            return None
        import pebble

        _POOL = pebble.ProcessPool(
            max_workers=1,
            initializer=_init_worker,
            initargs=(warm_up,),
            context=multiprocessing.get_context("spawn"),
        )
        _STATS.pools_started += 1
        return _POOL


def shutdown() -> None:
    """Stop the worker (at exit; tests call it to start from a fresh worker)."""
    global _POOL
    with _LOCK:
        if _POOL is not None:
            _POOL.stop()
            _POOL.join()
            _POOL = None


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
) -> tuple[bool, _T | None]:
    """``(True, fn(*args))`` computed in the worker process, or ``(False, None)`` when it ran past
    ``timeout_s`` seconds (the worker is killed) or the worker died (both counted in :func:`stats` and
    logged). ``fn`` and ``args`` must be picklable; exceptions of ``fn`` are re-raised here.
    ``warm_up`` runs once in each new worker before its first task (imports, caches)."""
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    pool = None if getattr(_IN_PROCESS, "on", False) else _pool(warm_up)
    if pool is None:
        return True, fn(*args)
    from pebble import ProcessExpired

    future = pool.schedule(fn, args=args, timeout=timeout_s)
    try:
        return True, future.result()
    except FutureTimeoutError:
        _STATS.timeouts += 1
        log.warning(
            "grading worker killed at its %.1fs deadline (%d so far): an answer inside the input limits "
            "ran that long; it grades wrong",
            timeout_s,
            _STATS.timeouts,
        )
    except ProcessExpired as err:
        _STATS.crashes += 1
        log.warning("grading worker died (%s; %d so far); the answer grades wrong", err, _STATS.crashes)
    return False, None
