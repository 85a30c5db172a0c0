"""Rollout backends, chosen by ``rollout.backend`` (a ``_partial_`` Hydra target built with the policy's path).

A backend answers one question before each rollout: which engine generates? ``None`` means the policy itself
(:class:`papo.rollout.collect.Generator` runs the decode loop of ``rollout.decoder`` on it).

* :class:`PolicyDecoding` (``rollout=hf``): always the policy; nothing to keep in sync.
* :class:`VLLMRollout` (``rollout=vllm``): a colocated vLLM engine, started on the first rollout (on the
  rank's GPU, seeded with ``seed + rank``) and given the policy's current weights before every rollout that
  follows an update (:mod:`papo.rollout.vllm_backend`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

__all__ = ["PolicyDecoding", "VLLMRollout"]


class PolicyDecoding:
    """Rollouts decoded on the policy itself (``model_path`` is not needed: the policy is already loaded)."""

    def __init__(self, model_path: str | None = None) -> None:
        self.model_path = model_path

    def engine(self, policy: torch.nn.Module, rank: int) -> None:
        """No separate engine: the generator decodes with ``policy``."""
        return None

    def mark_stale(self) -> None:
        """Nothing to refresh after an update."""


class VLLMRollout:
    """A colocated vLLM engine for the rollouts (see the module docstring); keyword arguments as in
    :class:`papo.rollout.vllm_backend.VLLMEngine`, with the context length given as prompt + response budget."""

    @staticmethod
    def check_available() -> None:
        """Raise ``ImportError`` with the install hint when vLLM is missing (checked at config validation)."""
        from papo.rollout.vllm_backend import require_vllm

        require_vllm()

    def __init__(
        self, model_path: str, max_prompt_length: int, max_new_tokens: int, seed: int = 0, **engine: Any
    ) -> None:
        self.check_available()
        self.model_path = str(model_path)
        self.max_model_len = int(max_prompt_length) + int(max_new_tokens)
        self.seed = int(seed)
        self.settings = engine
        self._engine: Any = None
        self._stale = True

    def engine(self, policy: torch.nn.Module, rank: int) -> Any:
        """The engine (started on first use, ranks sampling with different seeds), holding ``policy``'s weights."""
        if self._engine is None:
            from papo.rollout.vllm_backend import VLLMEngine

            self._engine = VLLMEngine(
                self.model_path, max_model_len=self.max_model_len, seed=self.seed + rank, **self.settings
            )
            self._stale = True  # the policy may come from a warm start or a checkpoint
        if self._stale:
            n = self._engine.sync_weights(policy)  # FSDP2 shards are gathered per tensor
            log.debug("synced %d weight tensors into the vLLM engine", n)
            self._stale = False
        return self._engine

    def mark_stale(self) -> None:
        """The policy was updated: copy its weights into the engine before the next rollout."""
        self._stale = True
