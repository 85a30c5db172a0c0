"""Each console log line printed once: Lightning's own console handler and Hydra's root handler both printed
Lightning's records (papo.utils.console_logging)."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from papo.utils.console_logging import LIGHTNING_LOGGERS, route_lightning_to_root

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def saved_loggers():
    """Restore the handlers / propagate flags of the root and Lightning loggers after the test."""
    names = ["", *LIGHTNING_LOGGERS]
    state = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in names}
    yield
    for n, (handlers, propagate) in state.items():
        logger = logging.getLogger(n)
        logger.handlers[:] = handlers
        logger.propagate = propagate


def test_lightning_records_reach_the_console_once(saved_loggers) -> None:
    root_stream, own_stream = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    root.handlers[:] = [logging.StreamHandler(root_stream)]
    root.setLevel(logging.INFO)
    own = logging.getLogger("lightning")
    own.handlers[:] = [logging.StreamHandler(own_stream)]  # what `import lightning` installs
    own.propagate = True
    standalone = logging.getLogger("lightning.pytorch")
    standalone.handlers[:] = [logging.StreamHandler(own_stream)]  # installed when root had no handler
    standalone.propagate = False
    log_file = logging.FileHandler(os.devnull)
    own.addHandler(log_file)  # a file handler is not a console: kept

    assert set(route_lightning_to_root()) >= {"lightning", "lightning.pytorch"}
    logging.getLogger("lightning.pytorch.utilities.rank_zero").info("GPU available: False")
    logging.getLogger("lightning.fabric.utilities.seed").info("Seed set to 42")
    assert root_stream.getvalue().splitlines() == ["GPU available: False", "Seed set to 42"]
    assert own_stream.getvalue() == "" and log_file in own.handlers
    log_file.close()


def test_nothing_changes_without_a_root_console_handler(saved_loggers) -> None:
    logging.getLogger().handlers[:] = []
    own = logging.getLogger("lightning")
    handler = logging.StreamHandler(io.StringIO())
    own.handlers[:] = [handler]
    assert route_lightning_to_root() == [] and own.handlers == [handler]


def test_a_short_run_prints_each_line_once(tmp_path: Path) -> None:
    env = {**os.environ, "PROJECT_ROOT": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "src" / "train.py"),
            "debug=fdr",
            "num_threads=1",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    stopped = [line for line in lines if "`Trainer.fit` stopped: `max_steps=1` reached." in line]
    assert len(stopped) == 1, stopped  # the RL fit ends once (the cached warm start does not fit again)
    assert not [line for line in lines if line.startswith("INFO: ")]  # Lightning's own console format
    # ... and Lightning's records are in the run's log file too (they reach Hydra's root handlers)
    log_text = (tmp_path / "debug.log").read_text()
    assert "`Trainer.fit` stopped: `max_steps=1` reached." in log_text
