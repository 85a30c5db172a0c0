"""W&B in a hostile environment: stored ``wandb login`` credentials are used (found the way wandb finds them,
never prompting), and a W&B server that cannot be reached at start costs no training run: the run falls back
to offline logging with one warning, trains, and keeps its validation sample images on disk."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from papo.utils.resolvers import wandb_offline
from papo.utils.wandb_setup import stored_credentials
from test_callbacks_sample_table import logged_media_files

SERVER = "http://127.0.0.1:8"  # never contacted: only the netrc entry of this host matters


@pytest.fixture
def bare_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary home directory and no W&B variables (as a user's shell without a key); wandb's global
    settings, read from the environment once per process, are dropped before and after."""
    import wandb

    wandb.teardown()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    yield home
    wandb.teardown()


def test_wandb_login_credentials_are_found_without_a_prompt(
    bare_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No key anywhere: offline. After ``wandb login`` (its netrc entry, written by wandb's own writer) and
    nothing in the environment: online, and the credentials' source is the netrc file."""
    from wandb.sdk.lib.wbauth import write_netrc_auth

    monkeypatch.setenv("WANDB_BASE_URL", SERVER)
    assert stored_credentials() is None and wandb_offline() is True
    write_netrc_auth(host=SERVER, api_key="k" * 40)
    assert (bare_env / ".netrc").is_file()
    assert stored_credentials() == str(bare_env / ".netrc")
    assert wandb_offline() is False
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.2:8")  # a login for another server
    assert stored_credentials() is None and wandb_offline() is True
    monkeypatch.setenv("WANDB_MODE", "offline")  # an explicit mode still wins
    monkeypatch.setenv("WANDB_BASE_URL", SERVER)
    assert wandb_offline() is True


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the socket is: nothing listens there


@pytest.mark.slow
def test_unreachable_wandb_falls_back_to_offline_and_trains(
    make_cfg,
    bare_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from papo.pipeline import train

    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3")  # wandb's init_timeout: keep the wait short
    cfg = make_cfg(["logger=default", "trainer.max_steps=1", "validate_after=false"])
    assert cfg.logger.wandb.offline is False  # a key is set: the run tries to go online
    with caplog.at_level(logging.WARNING, logger="papo.utils.wandb_setup"):
        metrics = train(cfg)
    warnings = [r.getMessage() for r in caplog.records if "W&B is unreachable" in r.getMessage()]
    assert len(warnings) == 1 and "wandb sync" in warnings[0] and "OFFLINE" in warnings[0], warnings
    assert "val/acc" in metrics  # it trained and validated
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    files = logged_media_files(runs[0], "val/samples/images")  # the sample images survived offline
    assert files and all((runs[0] / "files" / f).is_file() for f in files)
