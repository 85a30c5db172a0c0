"""Build a cached directory in a temporary sibling and rename it into place: :func:`build_dir_once`.

The embedded tiny VLM, the Qwen3-VL stand-in and the warm start are all directories built once and reused by
every later run. Each is built into a fresh temporary sibling (``.<name>.tmp-<pid>-<random>``) that is renamed
onto the target only when complete, so:

- a crash (or SIGKILL) mid-build never leaves a half-built target: at worst a temporary sibling, which no
  reader looks at;
- concurrent builders of the same target (DDP ranks, parallel reproduction streams) cannot clash: the first
  rename wins, and a later builder that finds a complete target keeps it (it may already be in use) and
  discards its own copy.

A target is *complete* when its marker file exists (``config.json`` for a saved model).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["build_dir_once", "is_complete"]


def is_complete(target: str | Path, marker: str = "config.json") -> bool:
    """Whether ``target`` holds a finished build (its ``marker`` file exists)."""
    return (Path(target) / marker).is_file()


def build_dir_once(
    target: str | Path,
    build: Callable[[Path], Any],
    *,
    marker: str = "config.json",
    rebuild: bool = False,
) -> bool:
    """Make ``target`` a complete build of ``build(dir)``; return whether THIS call's build is the one in place.

    Without ``rebuild``, a complete ``target`` is reused as is (``build`` is not called; returns False).
    Otherwise ``build`` writes into a temporary sibling directory, which is renamed onto ``target``. When a
    complete ``target`` appeared meanwhile (another process finished first), it is kept and this build is
    discarded (returns False). ``rebuild=True`` replaces an existing target by this build. An incomplete
    ``target`` (no marker: not written by this function) is removed first. On any exception from ``build``
    the temporary directory is removed and the exception propagates.
    """
    target = Path(target)
    if not rebuild and is_complete(target, marker):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        build(tmp)
        if not rebuild and is_complete(target, marker):
            log.info("%s was built by another process meanwhile; using it", target)
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        if target.exists():  # rebuild, or an incomplete target
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)  # atomic on POSIX; fails when another process renamed first
        except OSError:
            if not is_complete(target, marker):
                raise
            log.info("%s was built by another process meanwhile; using it", target)
            shutil.rmtree(tmp, ignore_errors=True)
            return False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True
