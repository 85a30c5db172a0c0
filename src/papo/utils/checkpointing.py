"""Exact-resume helpers: RNG states and rollout buffers as checkpoint-safe data, and ``ckpt_path`` lookup.

What it implements:

* :func:`rng_state` / :func:`set_rng_state` -- python, numpy, torch (CPU) and CUDA global RNG states as
  plain tensors / lists / ints, so a checkpoint holding them still loads with
  ``torch.load(weights_only=True)`` (numpy's state tuple holds an ``ndarray``, which the weights-only
  unpickler refuses; Lightning's own ``_collect_rng_states`` keeps it as is and Lightning does not put
  RNG states in Trainer checkpoints at all).
* :func:`experience_state` / :func:`experience_from_state` -- a :class:`~papo.rollout.experience.Experience`
  (DAPO's dynamic-sampling buffer) as a dict of tensors, lists and strings, for the same reason.
* :func:`resolve_ckpt_path` -- ``ckpt_path`` of the config to a checkpoint file: ``null`` (fresh run),
  ``last`` (the newest checkpoint of THIS run's checkpoint directory, i.e. resume a previous run by
  re-using its directory with ``hydra.run.dir=<that run's dir>``), a ``.ckpt`` file, or a directory (a
  previous run's output dir or its ``checkpoints/``), whose newest checkpoint is used. "Newest" is the
  latest modification time (``last.ckpt`` wins a tie): the last step checkpoint, or the one written when
  an exception stopped the run.
* :func:`check_checkpoint_file` -- the file opens as a checkpoint of src/train.py (tensors not read);
  :func:`resolve_readable_checkpoint` -- ``ckpt_path`` to a checkpoint that does (``last`` skips a newest
  file that cannot be read, e.g. one being written when the run was killed).
* :func:`preserve_csv_log` -- Lightning's CSV logger DELETES an existing ``metrics.csv`` when it opens its
  directory again; on resume the old file is renamed first so the first half of the run's log survives.

Differences from lightning-hydra-template: there ``ckpt_path`` is handed to ``trainer.fit`` as is, and
Lightning's ``"last"`` only looks in the checkpoint directory of the NEW (timestamped) run dir.
"""

from __future__ import annotations

import logging
import random
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from papo.config.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointNotFoundError",
    "check_checkpoint_file",
    "checkpoint_dir",
    "experience_from_state",
    "experience_state",
    "newest_checkpoint",
    "preserve_csv_log",
    "resolve_ckpt_path",
    "resolve_readable_checkpoint",
    "rng_state",
    "set_rng_state",
]


class CheckpointNotFoundError(ConfigError):
    """``ckpt_path`` names nothing that holds a readable checkpoint; the message says where it looked. A config
    error: the entry points report it in one line, before anything loads."""


# ----------------------------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """Global RNG states of python, numpy, torch and CUDA, as weights-only-loadable data."""
    version, keys, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    return {
        "python": {"version": int(version), "state": list(keys), "gauss": gauss},
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by :func:`rng_state` (CUDA only when the device count matches)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            log.warning(
                "checkpoint holds CUDA RNG states for %d devices, this process sees %d: CUDA RNG not restored",
                len(cuda),
                torch.cuda.device_count(),
            )


# ------------------------------------------------------------------------------------------ rollout buffers
def experience_state(exp: Any) -> dict[str, Any]:
    """An Experience as a dict of its fields (tensors, lists, dicts, strings): weights-only safe."""
    return {f.name: getattr(exp, f.name) for f in fields(exp)}


def experience_from_state(state: dict[str, Any]) -> Any:
    """Inverse of :func:`experience_state`."""
    from papo.rollout.experience import Experience

    return Experience(**state)


# ------------------------------------------------------------------------------------------- ckpt_path
def checkpoint_dir(trainer: Any) -> str:
    """Where ``trainer`` writes checkpoints: its ModelCheckpoint's ``dirpath``, else
    ``<default_root_dir>/checkpoints``."""
    cb = trainer.checkpoint_callback
    return cb.dirpath if cb is not None and cb.dirpath else f"{trainer.default_root_dir}/checkpoints"


def newest_checkpoint(directory: str | Path) -> Path | None:
    """The newest ``*.ckpt`` in ``directory`` (latest mtime; ``last*.ckpt`` wins ties), or None."""
    d = Path(directory)
    if not d.is_dir():
        return None
    files = [p for p in d.glob("*.ckpt") if p.is_file()]
    if not files:
        return None
    return max(files, key=lambda p: (p.stat().st_mtime_ns, p.name.startswith("last")))


def resolve_ckpt_path(ckpt_path: str | None, checkpoint_dir: str | Path) -> str | None:
    """The checkpoint file that ``ckpt_path`` names (see the module docstring), or None for a fresh run.

    Args:
        ckpt_path: ``None``/``""`` (fresh), ``"last"``, a ``.ckpt`` file, or a directory.
        checkpoint_dir: this run's checkpoint directory (searched for ``"last"``).

    Raises:
        CheckpointNotFoundError: nothing to resume from (the message names the searched directory).
    """
    if ckpt_path is None or str(ckpt_path).strip() in ("", "null", "None"):
        return None
    text = str(ckpt_path).strip()
    if text == "last":
        found = newest_checkpoint(checkpoint_dir)
        if found is None:
            raise CheckpointNotFoundError(
                f"ckpt_path=last: no *.ckpt in {checkpoint_dir}; to resume an earlier run, point at its "
                "directory: hydra.run.dir=<that run's output dir> (or ckpt_path=<run dir or .ckpt file>)"
            )
        return str(found)
    path = Path(text).expanduser()
    if path.is_file():
        return str(path)
    if path.is_dir():
        found = newest_checkpoint(path / "checkpoints") or newest_checkpoint(path)
        if found is None:
            raise CheckpointNotFoundError(f"ckpt_path={text}: no *.ckpt in {path / 'checkpoints'} or {path}")
        return str(found)
    raise CheckpointNotFoundError(
        f"ckpt_path={text}: no such file or directory; allowed: null, last, a .ckpt file or a run directory"
    )


#: what every checkpoint of src/train.py holds (Lightning's resume reads the first two; the policy's weights)
REQUIRED_ENTRIES = ("pytorch-lightning_version", "state_dict")


def check_checkpoint_file(path: str | Path, key: str = "ckpt_path") -> None:
    """Open ``path`` as a checkpoint of src/train.py without reading its tensors (``mmap``): a truncated file, a
    file that is not a torch checkpoint, or a foreign one (no Lightning entries, no ``policy.*`` weights) is a
    :class:`CheckpointNotFoundError` naming the file, raised before any model loads instead of a traceback from
    inside Lightning after it. Directories (sharded FSDP / DeepSpeed checkpoints) are left to their loaders."""
    p = Path(path)
    if not p.is_file():
        return
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, a text file, a pickle with code in it, an old non-zip format
        reason = " ".join(str(err).split())[:200]
        raise CheckpointNotFoundError(
            f"{key}={path}: cannot be read as a torch checkpoint (truncated, still being written, or another "
            f"kind of file): {type(err).__name__}: {reason}"
        ) from None
    missing = [k for k in REQUIRED_ENTRIES if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointNotFoundError(
            f"{key}={path}: not a checkpoint of src/train.py (no {', '.join(repr(m) for m in missing)} entry)"
        )
    if not any(str(k).startswith("policy.") for k in ckpt["state_dict"]):
        raise CheckpointNotFoundError(
            f"{key}={path}: not a checkpoint of src/train.py (no 'policy.*' weights in its state_dict)"
        )


def resolve_readable_checkpoint(ckpt_path: str | None, checkpoint_dir: str | Path) -> str | None:
    """:func:`resolve_ckpt_path`, then :func:`check_checkpoint_file` on the file found. When ``ckpt_path`` is
    ``last`` or a directory and the newest checkpoint there cannot be read (a run killed while writing it), the
    next newest readable one is used, with a warning naming the skipped file; a ``.ckpt`` file named
    explicitly must itself be readable."""
    found = resolve_ckpt_path(ckpt_path, checkpoint_dir)
    if found is None:
        return None
    named_file = str(ckpt_path).strip() != "last" and Path(str(ckpt_path).strip()).expanduser().is_file()
    try:
        check_checkpoint_file(found)
        return found
    except CheckpointNotFoundError as err:
        if named_file:
            raise
        first_error = err
    directory = Path(found).parent
    older = sorted(
        (p for p in directory.glob("*.ckpt") if p.is_file() and str(p) != found),
        key=lambda p: (p.stat().st_mtime_ns, p.name.startswith("last")),
        reverse=True,
    )
    for candidate in older:
        try:
            check_checkpoint_file(candidate)
        except CheckpointNotFoundError:
            continue
        log.warning("%s; resuming from the newest readable checkpoint instead: %s", first_error, candidate)
        return str(candidate)
    raise CheckpointNotFoundError(f"{first_error}; no other checkpoint in {directory} can be read either")


def preserve_csv_log(log_dir: str | Path) -> Path | None:
    """Rename ``log_dir/metrics.csv`` to ``metrics.part<k>.csv`` (first free k); returns the new path."""
    src = Path(log_dir) / "metrics.csv"
    if not src.is_file():
        return None
    k = 0
    while (dst := src.with_name(f"metrics.part{k}.csv")).exists():
        k += 1
    src.rename(dst)
    log.info("resuming: kept the previous CSV log as %s (Lightning would delete it)", dst)
    return dst
