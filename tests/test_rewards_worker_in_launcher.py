"""Grading inside a worker of Hydra's joblib launcher (hydra/launcher=streams: loky), where the process-wide
start method is loky's own: the call is answered and the worker can still exit when joblib shuts it down."""

from __future__ import annotations

import threading

import pytest


def _grade_in_this_process() -> tuple[bool, float | None]:
    from papo.rewards import grading_worker

    return grading_worker.run_isolated(float, ("0.5",), timeout_s=30.0)


@pytest.mark.slow
def test_grading_inside_loky_workers_answers_and_lets_them_exit() -> None:
    joblib = pytest.importorskip("joblib")
    from joblib.externals.loky import get_reusable_executor

    # n_jobs=2: joblib runs a single job in the calling process
    results = joblib.Parallel(n_jobs=2, backend="loky")([joblib.delayed(_grade_in_this_process)()] * 2)
    assert results == [(True, 0.5)] * 2
    done = threading.Event()

    def shutdown() -> None:
        get_reusable_executor().shutdown(wait=True)
        done.set()

    threading.Thread(target=shutdown, daemon=True).start()
    assert done.wait(60), "the loky workers did not exit (a grading worker process kept them waiting)"
