"""W&B set-up: online only with credentials, never a prompt, and never a lost training run.

What it implements:

* :func:`stored_credentials` -- where W&B would find credentials without asking: ``WANDB_API_KEY`` /
  ``WANDB_IDENTITY_TOKEN_FILE``, the ``.netrc`` entry for the W&B server that ``wandb login`` writes (read
  with wandb's own reader, for the server ``WANDB_BASE_URL`` or wandb's default).
  :func:`papo.utils.resolvers.wandb_offline` runs W&B offline only when there is none.
* :func:`start_loggers` -- instantiates the logger configs (``configs/logger``); an online
  ``WandbLogger`` starts its run at once, and when the W&B server cannot be reached (``wandb.init`` raises,
  after ``WANDB_INIT_TIMEOUT`` seconds, wandb's ``init_timeout``), it is replaced by the same logger
  offline, with one warning saying how to sync the run later. Training goes on either way.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["start_loggers", "stored_credentials"]


def stored_credentials() -> str | None:
    """Where W&B finds credentials without prompting (an env var name or the netrc file), or None.

    Never prompts and never contacts the server; a malformed stored key counts as none."""
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if os.environ.get(name):
            return name
    try:
        import wandb
        from wandb.sdk.lib.wbauth import HostUrl
        from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth_with_source
    except ImportError:
        return None
    try:
        host = HostUrl(os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url)
        found = read_netrc_auth_with_source(host=host)
        if found is not None:
            return str(found.source)
    except Exception as err:  # an unreadable netrc / a malformed key: W&B itself would refuse it
        log.debug("no usable stored W&B credentials: %s", err)
    return None


def _is_online_wandb(conf: Any) -> bool:
    return str(conf.get("_target_", "")).endswith("WandbLogger") and not conf.get("offline", False)


def start_loggers(logger_cfg: Any) -> list[Any]:
    """Instantiate every logger config with a ``_target_`` (in order); start online W&B runs now, falling
    back to offline logging when the server cannot be reached (module docstring)."""
    import hydra
    from omegaconf import DictConfig, open_dict

    loggers = []
    for name, conf in (logger_cfg or {}).items():
        if not (isinstance(conf, DictConfig) and "_target_" in conf):
            continue
        log.info("Instantiating %s <%s>", name, conf._target_)
        logger = hydra.utils.instantiate(conf)
        if _is_online_wandb(conf):
            try:
                logger.experiment  # noqa: B018  (wandb.init: contacts the server)
            except Exception as err:
                save_dir = conf.get("save_dir") or "."
                log.warning(
                    "W&B is unreachable (%s: %s); this run logs to W&B OFFLINE and trains on. Sync it later "
                    "with: wandb sync %s/wandb/offline-run-*",
                    type(err).__name__,
                    str(err).splitlines()[0][:200] if str(err) else "",
                    save_dir,
                )
                os.environ["WANDB_MODE"] = "offline"  # nothing else in this process tries to go online
                _finish_quietly()
                with open_dict(conf):
                    conf.offline = True
                logger = hydra.utils.instantiate(conf)
        loggers.append(logger)
    return loggers


def _finish_quietly() -> None:
    """Drop wandb's process-wide state after a failed init: its global settings were read from the
    environment once (mode online), so the offline run must start from fresh settings."""
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1)
        wandb.teardown()
    except Exception as err:  # nothing was started: nothing to tear down
        log.debug("wandb teardown after a failed init: %s", err)
