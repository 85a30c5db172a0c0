"""Resuming a run keeps its W&B run: the id of the run directory's last W&B run is reused.

Lightning's ``WandbLogger`` opens a new W&B run unless it is given an ``id``; a run resumed from its own
directory (``hydra.run.dir=<run> ckpt_path=last``) would then appear as two runs on the dashboard. W&B
writes ``<save_dir>/wandb/latest-run``, a link to ``[offline-]run-<time>-<id>``; its id, with
``resume="allow"``, continues that run (online), or writes an offline run with the same id that
``wandb sync`` appends to it.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, open_dict


def previous_wandb_run_id(save_dir: str | Path) -> str | None:
    """The id of the newest W&B run under ``save_dir`` (from ``wandb/latest-run``), or None."""
    latest = Path(save_dir) / "wandb" / "latest-run"
    if not latest.exists():
        return None
    name = latest.resolve().name  # offline-run-20261130_071234-abc123 / run-20261130_071234-abc123
    if not name.startswith(("run-", "offline-run-")) or name.count("-") < 2:
        return None
    return name.rsplit("-", 1)[1] or None


def continue_wandb_run(logger_cfg: DictConfig | None) -> str | None:
    """Give a W&B logger config without an ``id`` the id of its save dir's previous run (resume="allow").
    Returns the id used, or None (no W&B logger, an explicit id, or no previous run)."""
    conf = (logger_cfg or {}).get("wandb")
    if conf is None or conf.get("id") or not str(conf.get("_target_", "")).endswith("WandbLogger"):
        return None
    run_id = previous_wandb_run_id(conf.get("save_dir") or ".")
    if run_id is not None:
        with open_dict(conf):
            conf.id = run_id
            conf.resume = "allow"
    return run_id
