"""Wall-clock phase timer: ``with timer("generate"): ...`` accumulates seconds per phase."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseTimer:
    """Accumulates seconds per named phase; ``pop()`` returns and resets them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t0

    def pop(self) -> dict[str, float]:
        out = dict(self.seconds)
        self.seconds.clear()
        return out
