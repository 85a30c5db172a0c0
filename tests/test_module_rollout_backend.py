"""The rollout backend built from ``rollout.backend`` (a ``_partial_`` Hydra target called with the policy's
path, as pipeline.build_module does): rollout=hf decodes on the policy; rollout=vllm starts its engine once
(context = prompt + response budget, seed + rank) and copies the policy's weights into it only before the first
rollout and after an update (``mark_stale``). vLLM itself is replaced by a recording stand-in."""

from __future__ import annotations

from typing import Any

import hydra
import pytest
import torch

from conftest import compose_cfg
from papo.rollout import backends, vllm_backend


class FakeEngine:
    made: list[dict[str, Any]] = []

    def __init__(self, model_path: str, **kwargs: Any) -> None:
        FakeEngine.made.append({"model_path": model_path, **kwargs})
        self.synced = 0

    def sync_weights(self, policy: torch.nn.Module) -> int:
        self.synced += 1
        return 1


def _backend(overrides: list[str]) -> Any:
    cfg = compose_cfg(overrides)
    return hydra.utils.instantiate(cfg.rollout.backend)("/models/policy")


def test_policy_decoding_has_no_engine() -> None:
    backend = _backend([])
    assert isinstance(backend, backends.PolicyDecoding)
    assert backend.engine(torch.nn.Linear(1, 1), rank=0) is None


def test_vllm_engine_started_once_and_synced_after_updates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_backend, "require_vllm", lambda: None)
    monkeypatch.setattr(vllm_backend, "VLLMEngine", FakeEngine)
    FakeEngine.made = []
    backend = _backend(
        ["rollout=vllm", "rollout.max_prompt_length=100", "rollout.max_new_tokens=20", "seed=7"]
    )
    assert isinstance(backend, backends.VLLMRollout)
    policy = torch.nn.Linear(1, 1)
    engine = backend.engine(policy, rank=1)
    assert backend.engine(policy, rank=1) is engine  # no update in between: no new sync
    assert len(FakeEngine.made) == 1 and engine.synced == 1
    made = FakeEngine.made[0]
    assert made["model_path"] == "/models/policy" and made["max_model_len"] == 120 and made["seed"] == 8
    assert made["gpu_memory_utilization"] == 0.35 and made["engine_kwargs"] == {}
    backend.mark_stale()  # the module calls it after every update
    assert backend.engine(policy, rank=1) is engine and engine.synced == 2
    assert len(FakeEngine.made) == 1
