"""Shared fixtures: compose the Hydra config once, shrink it for CPU tests, share one model cache.

The embedded tiny VLM and warm starts are built into one session-wide cache directory (PAPO_CACHE_DIR
if set, else a pytest temp dir), so the suite builds them once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

import papo.utils  # noqa: E402,F401  (resolvers)

CONFIG_DIR = str(ROOT / "configs")


def compose_cfg(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with overrides, with the Hydra runtime config set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides or [], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("PAPO_CACHE_DIR")
    path = Path(env) if env else tmp_path_factory.mktemp("papo_cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


# Overrides that make a full train() run take seconds on CPU.
TINY_OVERRIDES = [
    "trainer.max_steps=2",
    "data.batch_size=4",
    "data.val_batch_size=8",
    "data.train_dataset.size=64",
    "data.val_dataset.size=8",
    "data.test_dataset.size=8",
    "algo.group_size=4",
    "rollout.max_new_tokens=8",
    "warm_start.max_steps=3",
    "warm_start.batch_size=8",
    "callbacks.model_checkpoint.every_n_train_steps=1",
    "trainer.enable_progress_bar=false",
    # one thread: much faster than oversubscribed cores when tests share the machine
    "num_threads=1",
]


def _coin_reward(response: str, truth: str, format_weight: float = 0.1, timeout_s: float = 2.0) -> dict:
    """Test reward ``reward.name=coin``: a fair coin per response (seeded by the run), so every group has mixed
    outcomes: DAPO keeps it and a random-init policy's gradient is not zero."""
    import random

    acc = float(random.random() < 0.5)
    return {"overall": acc, "accuracy": acc, "format": 1.0}


@pytest.fixture(scope="module")
def coin_reward():
    """Registers ``coin`` for a test module (``pytestmark = pytest.mark.usefixtures("coin_reward")``) and removes
    it after (other modules' tests list the registered names)."""
    from papo.rewards import REWARD_FUNCTIONS

    REWARD_FUNCTIONS.register("coin")(_coin_reward)
    yield
    REWARD_FUNCTIONS.unregister("coin")


def spy_module(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Capture the PapoModule that ``train`` builds: ``captured["module"]``, and ``captured["before"]`` its
    policy's parameters as built (before any update)."""
    from papo.models import papo_module

    captured: dict = {}
    original = papo_module.PapoModule.__init__

    def spy_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        captured["module"] = self
        captured["before"] = {k: v.detach().clone() for k, v in self.policy.named_parameters()}

    monkeypatch.setattr(papo_module.PapoModule, "__init__", spy_init)
    return captured


@pytest.fixture
def make_cfg(tmp_path: Path, cache_dir: Path):
    """Factory: composed config with tiny sizes, outputs in tmp_path, the shared model cache."""

    def _make(overrides: list[str] | None = None, tiny: bool = True) -> DictConfig:
        cfg = compose_cfg((TINY_OVERRIDES if tiny else []) + list(overrides or []))
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)
            cfg.paths.log_dir = str(tmp_path)
            cfg.paths.cache_dir = str(cache_dir)
            cfg.model.cache_dir = str(cache_dir / "models")
        return cfg

    yield _make
    GlobalHydra.instance().clear()
