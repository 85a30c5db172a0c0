"""The no-grad forwards of one micro-batch with the rollout parameters, as a visual-sensitivity signal asks for
them (:class:`papo.blocks.base.ModelPasses`): sampled-token log-probs given the real image or the altered view
(the ones already computed for the experience are reused: the old log-probs, the masked-view log-probs), or the last
hidden states that predict the response tokens (full-distribution signals), and the LM head."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from papo.models.loading import hf_model
from papo.models.logprobs import response_hidden
from papo.rollout.experience import Experience


class RolloutPasses:
    """:class:`papo.blocks.base.ModelPasses` of ``micro`` for ``policy``: ``logps(model, micro, masked=...)`` is
    the training log-prob pass (:meth:`papo.rollout.experience_source.ExperienceSource.logps`), ``temperature``
    the rollouts' sampling temperature, ``device`` where the passes run."""

    def __init__(
        self,
        policy: torch.nn.Module,
        micro: Experience,
        logps: Callable[..., Tensor],
        temperature: float,
        device: torch.device | str,
    ) -> None:
        self.policy, self.micro, self._logps, self.device = policy, micro, logps, device
        self.temperature = float(temperature)

    @torch.no_grad()
    def logps(self, masked: bool) -> Tensor:
        done = self.micro.logps_masked if masked else self.micro.old_logps
        if done is not None:
            return done.to(self.device)  # (B, T)
        return self._logps(self.policy, self.micro, masked=masked)  # (B, T)

    @torch.no_grad()
    def hidden(self, masked: bool) -> Tensor:
        inputs = self.micro.model_inputs(masked=masked)
        device = self.device
        inputs = {
            k: (v.to(device) if isinstance(v, Tensor) else {a: b.to(device) for a, b in v.items()})
            for k, v in inputs.items()
        }
        return response_hidden(self.policy, **inputs)  # (B, T, H)

    def head(self) -> tuple[Tensor, Tensor | None]:
        head = hf_model(self.policy).get_output_embeddings()
        return head.weight, getattr(head, "bias", None)
