"""The grading worker starts inside a worker of Hydra's joblib launcher (hydra/launcher=streams: loky), where the
process-wide start method is loky's own, which a spawned child cannot look up."""

from __future__ import annotations

import pytest


def _grade_in_this_process() -> tuple[bool, float | None]:
    from papo.rewards import grading_worker

    try:
        return grading_worker.run_isolated(float, ("0.5",), timeout_s=30.0)
    finally:
        grading_worker.shutdown()


@pytest.mark.slow
def test_grading_worker_starts_inside_a_loky_worker() -> None:
    joblib = pytest.importorskip("joblib")
    # n_jobs=2: joblib runs a single job in the calling process
    results = joblib.Parallel(n_jobs=2, backend="loky")([joblib.delayed(_grade_in_this_process)()] * 2)
    assert results == [(True, 0.5)] * 2
