"""The rollout side of one RL step: from a batch of prompts to the :class:`~papo.rollout.experience.Experience`
the update trains on.

:class:`ExperienceSource` owns the generator (``rollout.decoder``), the rollout backend (``rollout.backend``:
the policy itself or a colocated vLLM engine), the reward function, the training generation config, DAPO's
:class:`~papo.rollout.dynamic_sampling.DynamicSampler` and the phase timer. :meth:`ExperienceSource.collect`
samples the method's rollout view (:class:`papo.blocks.composition.MethodBlocks`), shapes the rewards, refills
with DAPO, then runs the no-grad passes with the rollout parameters (old / reference / masked-view log-probs,
advantages: :func:`papo.models.preparation.prepare_experience`) and the blocks' visual-sensitivity signal.

Where the step runs (device, rank, world size, the reduction over ranks, synced generation) comes from a
:class:`Placement` callable read at every call, so it follows the LightningModule onto its device and its
strategy; nothing here imports Lightning, and the policy and reference are passed in per call. Same passes and
order as the released trainer's rollout + ``compute_log_prob`` + ``compute_ref_log_prob`` stages, except that
rollouts are decoded on the policy itself (or vLLM) and DAPO's refill accumulates across ``collect`` calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor

from papo.blocks.composition import MethodBlocks
from papo.config import AlgoConfig, RolloutConfig
from papo.models.loading import output_vocab_size, padded_vocab_ids
from papo.models.logprobs import response_logps
from papo.models.preparation import prepare_experience, rollout_metrics, shape_rewards
from papo.models.rollout_passes import RolloutPasses
from papo.models.update import PolicyUpdate, Reduce
from papo.rollout.collect import Generator
from papo.rollout.dynamic_sampling import DynamicSampler
from papo.rollout.experience import Experience
from papo.rollout.hf_generate import GenerationConfig
from papo.utils.distributed import generation_context
from papo.utils.timer import PhaseTimer

__all__ = ["ExperienceSource", "Placement"]


def _single_process(value: float, op: str) -> float:
    return float(value)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a step runs: the device, this rank, the world size, ``reduce(value, op)`` over the ranks (``op``:
    sum | min | max) and whether generation keeps the ranks in step (sharded strategies gather weights in every
    forward)."""

    device: torch.device | str = "cpu"
    rank: int = 0
    world_size: int = 1
    reduce: Reduce = _single_process
    synced_gpus: bool = False


class ExperienceSource:
    """Rollouts, rewards and the no-grad passes of one training batch (see the module docstring).

    ``policy`` / ``processor``: read at construction for the vocabulary and the end tokens only; ``backend``:
    the built ``rollout.backend``; ``update``: plans the micro-batches and says which passes a loss term needs;
    ``placement``: called whenever the device or the ranks matter.
    """

    def __init__(
        self,
        policy: torch.nn.Module,
        processor: Any,
        algo: AlgoConfig,
        rollout: RolloutConfig,
        reward_fn: Callable[..., dict],
        reward_on_error: str,
        blocks: MethodBlocks,
        update: PolicyUpdate,
        backend: Any,
        placement: Callable[[], Placement] = Placement,
    ) -> None:
        self.algo, self.rollout_cfg, self.blocks, self.update = algo, rollout, blocks, update
        self.reward_fn, self.reward_on_error = reward_fn, reward_on_error
        self.backend, self.placement = backend, placement
        self.generator = Generator.for_policy(
            policy, processor, rollout.max_prompt_length, rollout.generation_batch_size, rollout.decoder
        )
        # training log-probs: over every tokenizer id (as the released actor); only the padded rows are excluded
        self.suppress_ids = torch.tensor(
            padded_vocab_ids(processor, output_vocab_size(policy)), dtype=torch.long
        )
        self.train_generation = GenerationConfig(
            rollout.max_new_tokens, rollout.temperature, rollout.top_p, rollout.top_k, algo.group_size
        )
        self.train_generation.min_new_tokens = rollout.min_new_tokens  # training rollouts only
        # the masked view is kept for a loss term or for the blocks' signal
        self.needs_masked = update.needs_masked or blocks.needs_masked
        self.needs_ref = any(c.needs_ref for c in update.components) or algo.kl_in_reward
        ds = (
            algo.dynamic_sampling
        )  # DAPO: its buffer and round count are checkpointed (papo.models.resume_state)
        self.dynamic_sampler = (
            DynamicSampler(algo.group_size, ds.low, ds.high, ds.max_tries, ds.keep_all_when_none_pass)
            if ds.enabled
            else None
        )
        self.timer = PhaseTimer()

    # ------------------------------------------------------------------ generation
    def generation_config(self, cfg: GenerationConfig | None = None) -> GenerationConfig:
        """``cfg`` (default: the training rollouts') with the ranks' synced-generation flag set."""
        cfg = self.train_generation if cfg is None else cfg
        cfg.synced_gpus = self.placement().synced_gpus
        return cfg

    def rollout(
        self, policy: torch.nn.Module, batch: dict[str, Any], cfg: GenerationConfig, **kwargs: Any
    ) -> tuple[Experience, int]:
        """Scored responses to ``batch`` and the number of reward errors; vLLM gets the current weights first."""
        where = self.placement()
        self.generator.engine = self.backend.engine(policy, where.rank)
        return self.generator.rollout(
            policy, batch, cfg, self.reward_fn, on_error=self.reward_on_error, device=where.device, **kwargs
        )

    def generate(
        self, policy: torch.nn.Module, batch: dict[str, Any], cfg: GenerationConfig, masked: bool
    ) -> Experience:
        """Validation: ``cfg``'s responses given the real image or the masked view."""
        return self.rollout(policy, batch, self.generation_config(cfg), use_masked_images=masked)[0]

    def mark_stale(self) -> None:
        """The policy was updated: the next rollout must use the new weights."""
        self.backend.mark_stale()

    # ------------------------------------------------------------------ log-prob passes
    def logps(
        self, model: torch.nn.Module, exp: Experience, masked: bool = False, with_entropy: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """(n, T) response log-probs of ``exp`` under ``model`` (with grad when grad is enabled), or
        ((n, T), (n, T)) with the full-vocabulary entropies."""
        inputs = move_data_to_device(exp.model_inputs(masked=masked), self.placement().device)
        return response_logps(
            model,
            temperature=self.rollout_cfg.temperature,
            suppress_ids=self.suppress_ids,
            chunk_tokens=self.algo.logprob_chunk_tokens,
            with_entropy=with_entropy,
            **inputs,
        )

    def micro_batches(self, exp: Experience) -> list[list[int]]:
        """Row indices of ``exp``'s micro-batches (the same count on every rank)."""
        where = self.placement()
        return self.update.plan(exp, where.world_size, where.reduce)

    @torch.no_grad()
    def logps_nograd(self, model: torch.nn.Module, exp: Experience, masked: bool = False) -> Tensor:
        """(N, T) log-probs on the CPU, micro-batch by micro-batch, rows in ``exp``'s order."""
        out = torch.zeros(exp.response_ids.shape)
        for idx in self.micro_batches(exp):
            logps = self.logps(model, exp.select(idx), masked).cpu()
            out[idx, : logps.shape[1]] = logps
        return out

    # ------------------------------------------------------------------ one training batch
    def collect(
        self,
        policy: torch.nn.Module,
        reference: torch.nn.Module | None,
        batch: dict[str, Any],
        group_offset: int,
        rollout_steps: tuple[int, int],
    ) -> tuple[Experience | None, dict[str, float]]:
        """The prepared experience of ``batch`` and the rollout metrics; ``None`` while DAPO's buffer refills.

        ``group_offset``: the first group id of this rollout; ``rollout_steps``: (rollout batches done, the
        run's rollout batches), for the blocks' schedules.
        """
        was_training, errors = policy.training, []
        policy.eval()
        gen_cfg = self.generation_config()

        def sample(prompts: dict[str, Any], num_samples: int) -> Experience:
            """``num_samples`` scored responses per prompt, group ids from this rollout's offset."""
            out, n_err = self.rollout(
                policy,
                prompts,
                dataclasses.replace(gen_cfg, num_samples=num_samples),
                keep_masked_view=self.needs_masked,
                group_offset=group_offset,
            )
            errors.append(n_err)
            return out

        with self.timer("generate"), generation_context(policy):  # FSDP2: gathered once per rollout
            # the rollout-side view (papo.blocks): every response from the real image, or NoisyRollout's mix
            exp, view_metrics = self.blocks.rollout(sample, batch, self.algo.group_size, *rollout_steps)
        policy.train(was_training)
        max_new = self.rollout_cfg.max_new_tokens
        metrics = rollout_metrics(exp, sum(errors), self.generator.eos_ids, max_new)
        metrics.update({f"train/{k}": v for k, v in view_metrics.items()})
        with self.timer("score"):
            shape_rewards(exp, self.algo, max_new)
        if self.dynamic_sampler is not None:  # DAPO: sample more rounds until enough groups pass the filter
            # groups per update: algo.dynamic_sampling.batch_prompts per rank, else one data batch
            need = self.algo.dynamic_sampling.batch_prompts or len(batch["prompt"])
            exp, ds_metrics = self.dynamic_sampler.add(exp, need, self.placement().reduce)
            metrics.update({f"train/dynamic_sampling/{k}": v for k, v in ds_metrics.items()})
            if exp is None:
                return None, metrics
        with self.timer("old_logps"):
            metrics.update(self.prepare(exp, policy, reference))
        return exp, metrics

    def prepare(
        self, exp: Experience, policy: torch.nn.Module, reference: torch.nn.Module | None
    ) -> dict[str, float]:
        """Everything computed once per rollout batch with the rollout parameters (no grad); returns the
        blocks' metrics of the visual-sensitivity signal (none without one)."""

        def ref_logps(e: Experience) -> Tensor:
            if reference is not None:
                return self.logps_nograd(reference, e)
            with policy.disable_adapter():  # LoRA: reference = base model without adapters
                return self.logps_nograd(policy, e)

        prepare_experience(
            exp,
            self.algo,
            needs_ref=self.needs_ref,
            needs_masked=self.needs_masked,
            masked_grad=self.update.masked_grad,
            policy_logps=partial(self.logps_nograd, policy),
            ref_logps=ref_logps,
        )
        if not self.blocks.needs_scores:
            return {}
        exp.sensitivity = self.sensitivity(exp, policy)  # per-token visual sensitivity (VPPO)
        return {
            f"train/{k}": v for k, v in self.blocks.score_metrics(exp.sensitivity, exp.response_mask).items()
        }

    @torch.no_grad()
    def sensitivity(self, exp: Experience, policy: torch.nn.Module) -> Tensor:
        """(N, T) per-token visual sensitivity of the method's signal, micro-batch by micro-batch, from the
        rollout parameters' passes (papo.models.rollout_passes)."""
        out = torch.zeros(exp.response_ids.shape)  # (N, T), rows in exp's order
        device = self.placement().device
        for idx in self.micro_batches(exp):
            micro = exp.select(idx)
            passes = RolloutPasses(policy, micro, self.logps, self.rollout_cfg.temperature, device)
            scores = self.blocks.score(passes, micro.response_mask.to(device))
            out[idx, : scores.shape[1]] = scores.float().cpu()
        return out
