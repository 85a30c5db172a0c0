"""The no-grad forwards of one micro-batch with the rollout parameters, as a visual-sensitivity signal asks for
them (:class:`papo.blocks.base.ModelPasses`): sampled-token log-probs given the real image or the altered view
(the ones the module already computed are reused: the old log-probs, the masked-view log-probs), or the last
hidden states that predict the response tokens (full-distribution signals), and the LM head."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from papo.models.loading import hf_model
from papo.models.logprobs import response_hidden
from papo.rollout.experience import Experience


class RolloutPasses:
    """:class:`papo.blocks.base.ModelPasses` of ``micro`` for ``module`` (a :class:`PapoModule`)."""

    def __init__(self, module: Any, micro: Experience) -> None:
        self.module, self.micro = module, micro
        self.temperature = float(module.rollout_cfg.temperature)

    @torch.no_grad()
    def logps(self, masked: bool) -> Tensor:
        done = self.micro.logps_masked if masked else self.micro.old_logps
        if done is not None:
            return done.to(self.module.device)  # (B, T)
        return self.module._logps(self.module.policy, self.micro, masked=masked)  # (B, T)

    @torch.no_grad()
    def hidden(self, masked: bool) -> Tensor:
        inputs = self.micro.model_inputs(masked=masked)
        device = self.module.device
        inputs = {
            k: (v.to(device) if isinstance(v, Tensor) else {a: b.to(device) for a, b in v.items()})
            for k, v in inputs.items()
        }
        return response_hidden(self.module.policy, **inputs)  # (B, T, H)

    def head(self) -> tuple[Tensor, Tensor | None]:
        head = hf_model(self.module.policy).get_output_embeddings()
        return head.weight, getattr(head, "bias", None)
