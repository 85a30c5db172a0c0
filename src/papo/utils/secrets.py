"""Keep credentials out of logged configs: redact secret-looking keys and the values of secret env vars.

The pipeline logs the flat, resolved config to every logger (W&B config, CSV ``hparams.yaml``). No config
in ``configs/`` reads a credential (W&B and the Hub read ``WANDB_API_KEY`` / ``HF_TOKEN`` from the
environment themselves), but a user could add one (``+logger.wandb.api_key=...`` or
``${oc.env:HF_TOKEN}``). :func:`redact_secrets` replaces, before logging,

* the value of any key whose last dotted part looks like a credential (``api_key``, ``apikey``, ``token``,
  ``hf_token``, ``access_token``, ``secret``, ``password``, ``credentials``, ``private_key``; NOT
  ``max_new_tokens``), and
* any string value that contains the value of a credential-looking environment variable
  (``WANDB_API_KEY``, ``HF_TOKEN``, ``OPENAI_API_KEY``, ...; values of 8+ characters),

with :data:`REDACTED`. Hydra's own ``.hydra/overrides.yaml`` records command-line overrides verbatim
before any of our code runs: pass credentials as environment variables, never as overrides.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["REDACTED", "is_secret_key", "redact_secrets", "secret_env_values"]

REDACTED = "***REDACTED***"
_SECRET_KEY = re.compile(
    r"(api_?key|secret|password|passwd|credentials?|private_?key|(^|_)token)$", re.IGNORECASE
)
_MIN_SECRET_LEN = 8


def is_secret_key(key: str) -> bool:
    """Whether the last dotted part of ``key`` names a credential (``logger.wandb.api_key`` -> True)."""
    return bool(_SECRET_KEY.search(key.rsplit(".", 1)[-1].replace("-", "_")))


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values (8+ characters) of environment variables whose names look like credentials."""
    env = os.environ if environ is None else environ
    return [v for k, v in env.items() if is_secret_key(k) and len(v) >= _MIN_SECRET_LEN]


def redact_secrets(flat: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A copy of the flat config ``flat`` with credentials replaced by :data:`REDACTED`."""
    values = secret_env_values(environ)

    def leaks(v: Any) -> bool:
        return isinstance(v, str) and any(s in v for s in values)

    out: dict[str, Any] = {}
    for key, value in flat.items():
        if (is_secret_key(str(key)) and value not in (None, "")) or leaks(value):
            out[key] = REDACTED
        elif isinstance(value, (list, tuple)) and any(leaks(v) for v in value):
            out[key] = [REDACTED if leaks(v) else v for v in value]
        else:
            out[key] = value
    return out
