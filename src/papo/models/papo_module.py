"""The RL LightningModule: policy (+ frozen reference when needed), rollouts, rewards, and an update that SUMS
loss components chosen by config (policy gradient, reference KL, perception KL, double entropy, ...). Manual
optimisation: one rollout batch -> ppo_epochs x num_minibatches optimiser steps.

Orchestration only. The maths is in :mod:`papo.algos` and :mod:`papo.losses`; the collaborators, each testable
without Lightning: :class:`papo.models.update.PolicyUpdate` (mini- and micro-batch loops, loss normaliser),
:mod:`papo.models.preparation` (rollout metrics, reward shaping, no-grad passes, advantages),
:class:`papo.models.step_guard.StepGuard` (non-finite steps), :class:`papo.models.resume_state.ResumeState`
(RNG and counters in checkpoints), :class:`papo.rollout.dynamic_sampling.DynamicSampler` (DAPO's refill),
:class:`papo.blocks.composition.MethodBlocks` (the method's rollout view, visual-sensitivity signal and
advantage shapers: the module calls them and never names a method), the rollout backend and the optimiser / LR
schedule (built from config as ``_partial_`` targets). Reductions over
ranks use the strategy's API. Differences from EasyR1/verl: rollouts decoded on the policy itself (or a
colocated vLLM engine); DAPO's dynamic sampling accumulates kept groups across ``training_step`` calls.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor

from papo.blocks.composition import MethodBlocks
from papo.config import AlgoConfig, ModelConfig, OptimConfig, RewardConfig, RolloutConfig, parse_group
from papo.evaluation.perception import heldout_perception_kl
from papo.evaluation.val_sets import ValSet
from papo.evaluation.validation import ValidationOutput, ValidationSuite
from papo.losses.base import LossComponent, MetricPool
from papo.models.loading import is_lora, load_policy, output_vocab_size, padded_vocab_ids
from papo.models.logprobs import response_logps
from papo.models.preparation import prepare_experience, rollout_metrics, shape_rewards
from papo.models.resume_state import NO_REFILL, ResumeState
from papo.models.rollout_passes import RolloutPasses
from papo.models.step_guard import NonFiniteTrainingError, StepGuard
from papo.models.update import PolicyUpdate, active_components
from papo.rollout.backends import PolicyDecoding
from papo.rollout.collect import Generator
from papo.rollout.dynamic_sampling import DynamicSampler
from papo.rollout.experience import Experience
from papo.rollout.hf_generate import GenerationConfig
from papo.utils.checkpointing import checkpoint_dir
from papo.utils.distributed import (
    clip_grad_norm,
    engine_grad_norm,
    fully_shard_model,
    fused_optimizer_ok,
    generation_context,
    is_sharded,
)
from papo.utils.timer import PhaseTimer

log = logging.getLogger(__name__)

__all__ = ["NonFiniteTrainingError", "PapoModule"]

Group = Mapping[str, Any]


class PapoModule(L.LightningModule):
    """Policy-gradient RL for VLMs with composable PAPO loss components.

    The config groups come typed (:mod:`papo.config`) or as dicts / DictConfigs (validated here).
    ``optimizer`` / ``scheduler``: ``_partial_`` factories called with the trainable parameters / the optimiser;
    ``rollout_backend``: called with ``policy_path`` (``rollout.backend``); ``val_sets``: the named validation
    sets (``val_sets``, one per val dataloader, in order), None = the single ``data.val_dataset``.
    """

    def __init__(
        self,
        policy_path: str,
        model_cfg: ModelConfig | Group,
        algo: AlgoConfig | Group,
        rollout: RolloutConfig | Group,
        reward: RewardConfig | Group,
        optim: OptimConfig | Group,
        components: dict[str, LossComponent] | None = None,
        total_steps: int = 1,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        rollout_backend: Callable[[str], Any] = PolicyDecoding,
        val_sets: Sequence[ValSet] | None = None,
        blocks: MethodBlocks | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model_cfg = parse_group(ModelConfig, model_cfg, "model")
        self.algo = a = parse_group(AlgoConfig, algo, "algo")
        self.rollout_cfg = r = parse_group(RolloutConfig, rollout, "rollout")
        self.optim_cfg = parse_group(OptimConfig, optim, "optim")
        reward_cfg = parse_group(RewardConfig, reward, "reward")
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.total_steps = max(int(total_steps), 1)
        self.policy, self.processor = load_policy(policy_path, **self.model_cfg.load_kwargs())
        self.policy.config.use_cache = True
        self.policy.train()

        # the algo's policy gradient (+ reference KL), then the loss group's terms with a non-zero coefficient
        active = active_components(a, components)
        # the method's non-loss blocks (papo.blocks.composition): rollout view, sensitivity signal, shapers
        self.blocks = blocks if blocks is not None else MethodBlocks()
        self.update = PolicyUpdate(active, a, norm_len=a.norm_len or r.max_new_tokens, blocks=self.blocks)
        # the masked view is kept for a loss term or for the blocks' signal
        self.needs_masked = self.update.needs_masked or self.blocks.needs_masked
        self._block_metrics: dict[str, float] = {}  # the blocks' per-rollout metrics (the sensitivity signal)
        self.needs_ref = any(c.needs_ref for c in active) or a.kl_in_reward
        # frozen copy, loaded only when a term needs it; with LoRA the reference is the frozen base model itself
        # (adapters disabled in _prepare), so no second copy is loaded
        self.reference = None
        if self.needs_ref and not is_lora(self.policy):
            self.reference, _ = load_policy(policy_path, **{**self.model_cfg.load_kwargs(), "lora": None})
            self.reference.requires_grad_(False).eval()
        masked = f"{self.needs_masked} (grad: {self.update.masked_grad})"
        log.info(
            "loss components: %s; masked forward: %s; reference model: %s; blocks: %s",
            [c.name for c in active],
            masked,
            self.needs_ref,
            self.blocks,
        )

        self.reward_fn, self.reward_on_error = reward_cfg.reward_fn(), reward_cfg.on_error
        self.generator = Generator.for_policy(
            self.policy, self.processor, r.max_prompt_length, r.generation_batch_size, r.decoder
        )
        # training log-probs: over every tokenizer id (as the released actor); only the padded rows are excluded
        padded = padded_vocab_ids(self.processor, output_vocab_size(self.policy))
        self.suppress_ids = torch.tensor(padded, dtype=torch.long)
        self.backend = rollout_backend(str(policy_path))  # rollout.backend: the policy itself, or vLLM
        self.timer = PhaseTimer()
        self.train_generation = GenerationConfig(
            r.max_new_tokens, r.temperature, r.top_p, r.top_k, a.group_size
        )
        self.train_generation.min_new_tokens = r.min_new_tokens  # training rollouts only
        # protocols and metrics of training-time validation, per val set
        self.validation = ValidationSuite(r, val_sets)
        self.last_val: dict[str, float] = {}
        # global step of the last validation run inside fit (None: none yet, or it ran in trainer.validate)
        self.last_val_fit_step: int | None = None
        ds = a.dynamic_sampling  # DAPO: its buffer and round count are checkpointed
        self.dynamic_sampler = (
            DynamicSampler(a.group_size, ds.low, ds.high, ds.max_tries, ds.keep_all_when_none_pass)
            if ds.enabled
            else None
        )
        self.guard = StepGuard(self.optim_cfg.max_consecutive_skips)
        self.resume_state = ResumeState(self.dynamic_sampler or NO_REFILL, self.guard)

    @property
    def skipped_steps(self) -> int:
        """Optimiser steps skipped so far (a non-finite loss or gradient norm)."""
        return self.guard.skipped_steps

    @property
    def progress(self) -> float:
        return min(1.0, self.global_step / self.total_steps)

    def _rollout_steps(self) -> tuple[int, int]:
        """(rollout batches done, the run's rollout batches): optimiser steps over the updates per rollout."""
        per_rollout = max(self.algo.ppo_epochs * self.algo.num_minibatches, 1)
        return self.global_step // per_rollout, max(self.total_steps // per_rollout, 1)

    # ------------------------------------------------------------------ set-up
    def configure_model(self) -> None:
        """trainer=fsdp (Lightning's ModelParallelStrategy): shard policy and reference with FSDP2."""
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None or getattr(self, "_fsdp2_applied", False):
            return
        for model in (self.policy, self.reference):
            if model is not None:
                fully_shard_model(model, mesh["data_parallel"], bf16="bf16" in str(self.trainer.precision))
        self._fsdp2_applied = True

    def configure_optimizers(self) -> Any:
        """``optim.optimizer`` on the trainable parameters (fused AdamW when ``fused: null`` allows it),
        ``optim.scheduler`` stepped after each optimiser step."""
        params = [p for p in self.policy.parameters() if p.requires_grad]
        decide = getattr(self.optimizer_factory, "keywords", {}).get("fused", False) is None
        fused = {"fused": True} if decide and fused_optimizer_ok(self._trainer, params) else {}
        opt = self.optimizer_factory(params, **fused)
        sched = self.scheduler_factory(optimizer=opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ helpers
    def _world_size(self) -> int:
        return self._trainer.world_size if self._trainer is not None else 1

    def _reduce(self, value: float, op: str) -> float:
        """``value`` reduced over the ranks by the strategy (``sum`` | ``min`` | ``max``); itself on one rank."""
        if self._world_size() == 1:
            return float(value)
        t = torch.tensor(float(value), dtype=torch.float64, device=self.device)
        return float(self.trainer.strategy.reduce(t, reduce_op=op))

    def _gen_cfg(self, train: bool) -> GenerationConfig:
        return self._synced(self.train_generation if train else self.validation.main)

    def _synced(self, cfg: GenerationConfig) -> GenerationConfig:
        # sharded strategies (FSDP, ZeRO-3) gather weights in every forward: ranks must step together
        cfg.synced_gpus = is_sharded(self._trainer)
        return cfg

    def _rollout(self, batch: dict[str, Any], cfg: GenerationConfig, **kwargs: Any) -> tuple[Experience, int]:
        self.generator.engine = self.backend.engine(self.policy, self.global_rank)  # vLLM: synced weights
        return self.generator.rollout(
            self.policy,
            batch,
            cfg,
            self.reward_fn,
            on_error=self.reward_on_error,
            device=self.device,
            **kwargs,
        )

    def _logps(
        self, model: torch.nn.Module, exp: Experience, masked: bool = False, with_entropy: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        inputs = move_data_to_device(exp.model_inputs(masked=masked), self.device)
        temperature, chunk = self.rollout_cfg.temperature, self.algo.logprob_chunk_tokens
        return response_logps(
            model,
            temperature=temperature,
            suppress_ids=self.suppress_ids,
            chunk_tokens=chunk,
            with_entropy=with_entropy,
            **inputs,
        )  # (n, T), or ((n, T), (n, T)) with the full-vocabulary entropies

    def _micro_batches(self, exp: Experience) -> list[list[int]]:
        return self.update.plan(exp, self._world_size(), self._reduce)

    @torch.no_grad()
    def _logps_nograd(self, model: torch.nn.Module, exp: Experience, masked: bool = False) -> Tensor:
        out = torch.zeros(exp.response_ids.shape)  # (N, T), rows in exp's order whatever the plan's order
        for idx in self._micro_batches(exp):
            logps = self._logps(model, exp.select(idx), masked).cpu()
            out[idx, : logps.shape[1]] = logps
        return out

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        policy, was_training = self.policy, self.policy.training
        policy.eval()
        gen_cfg, errors = self._gen_cfg(train=True), []

        def sample(prompts: dict[str, Any], num_samples: int) -> Experience:
            """``num_samples`` scored responses per prompt, group ids from this rollout's offset."""
            out, n_err = self._rollout(
                prompts,
                dataclasses.replace(gen_cfg, num_samples=num_samples),
                keep_masked_view=self.needs_masked,
                group_offset=self.resume_state.group_counter,
            )
            errors.append(n_err)
            return out

        with self.timer("generate"), generation_context(policy):  # FSDP2: gathered once per rollout
            # the rollout-side view (papo.blocks): every response from the real image, or NoisyRollout's mix
            exp, view_metrics = self.blocks.rollout(
                sample, batch, self.algo.group_size, *self._rollout_steps()
            )
        policy.train(was_training)
        self.resume_state.group_counter += len(batch["prompt"])
        metrics = rollout_metrics(exp, sum(errors), self.generator.eos_ids, self.rollout_cfg.max_new_tokens)
        metrics.update({f"train/{k}": v for k, v in view_metrics.items()})
        with self.timer("score"):
            shape_rewards(exp, self.algo, self.rollout_cfg.max_new_tokens)
        if self.dynamic_sampler is not None:  # DAPO: sample more rounds until enough groups pass the filter
            # groups per update: algo.dynamic_sampling.batch_prompts per rank, else one data batch
            need = self.algo.dynamic_sampling.batch_prompts or len(batch["prompt"])
            exp, ds_metrics = self.dynamic_sampler.add(exp, need, self._reduce)
            metrics.update({f"train/dynamic_sampling/{k}": v for k, v in ds_metrics.items()})
            if exp is None:
                self.log_dict(metrics, on_step=True)
                return
        with self.timer("old_logps"):
            self._prepare(exp)
        metrics.update(self._block_metrics)
        metrics.update(self._update(exp))
        self.backend.mark_stale()  # the next rollout must use the updated weights
        secs = self.timer.pop()
        metrics.update({f"time/{k}_s": v for k, v in secs.items()})
        metrics["time/step_s"] = total = sum(secs.values())
        metrics["perf/tokens_per_s"] = exp.num_tokens / max(total, 1e-9)
        self.log_dict(metrics, on_step=True, prog_bar=False)
        self.log("reward", metrics["train/reward/mean"], prog_bar=True, on_step=True, logger=False)

    def _prepare(self, exp: Experience) -> None:
        """Everything computed once per rollout batch with the rollout parameters (no grad)."""

        def ref_logps(e: Experience) -> Tensor:
            if self.reference is not None:
                return self._logps_nograd(self.reference, e)
            with self.policy.disable_adapter():  # LoRA: reference = base model without adapters
                return self._logps_nograd(self.policy, e)

        prepare_experience(
            exp,
            self.algo,
            needs_ref=self.needs_ref,
            needs_masked=self.needs_masked,
            masked_grad=self.update.masked_grad,
            policy_logps=partial(self._logps_nograd, self.policy),
            ref_logps=ref_logps,
        )
        self._block_metrics = {}
        if self.blocks.needs_scores:  # per-token visual sensitivity with the rollout parameters (VPPO)
            exp.sensitivity = self._sensitivity(exp)
            m = self.blocks.score_metrics(exp.sensitivity, exp.response_mask)
            self._block_metrics = {f"train/{k}": v for k, v in m.items()}

    @torch.no_grad()
    def _sensitivity(self, exp: Experience) -> Tensor:
        """(N, T) per-token visual sensitivity of the method's signal, micro-batch by micro-batch, from the
        rollout parameters' passes (papo.models.rollout_passes)."""
        out = torch.zeros(exp.response_ids.shape)  # (N, T), rows in exp's order
        for idx in self._micro_batches(exp):
            micro = exp.select(idx)
            scores = self.blocks.score(RolloutPasses(self, micro), micro.response_mask.to(self.device))
            out[idx, : scores.shape[1]] = scores.float().cpu()
        return out

    def _update(self, exp: Experience) -> dict[str, float]:
        opt, sched = self.optimizers(), self.lr_schedulers()
        pool = MetricPool()  # micro-batch metrics -> one value per step (max of maxima, pooled variances)
        # the coefficient schedules see one progress per rollout batch, the fraction of training done before it
        progress = self.progress
        for idx in self.update.minibatches(len(exp)):
            mb = exp.select(idx)
            # global_token_mean: token-mean over ALL ranks' mini-batches: DDP averages gradients over W ranks,
            # so each rank normalises by (global token count / W); one process: mb.num_tokens
            tokens = self._reduce(mb.num_tokens, "sum")
            pool.add({"train/num_tokens_global": tokens}, 1.0)
            opt.zero_grad(set_to_none=True)
            nonfinite = self.update.accumulate(
                mb,
                self._micro_batches(mb),
                tokens_per_rank=tokens / self._world_size(),
                progress=progress,
                logps=self._logps,
                policy=self.policy,
                backward=self.manual_backward,
                timer=self.timer,
                pool=pool,
                device=self.device,
            )
            self._optimizer_step(opt, sched, nonfinite, pool)
        out = pool.compute()
        out["train/optim/lr"] = float(opt.param_groups[0]["lr"])
        out.update(self.guard.metrics())
        out["train/progress"] = self.progress
        return out

    def _optimizer_step(self, opt: Any, sched: Any, nonfinite: list[str], pool: MetricPool) -> None:
        """Clip and step, or skip the step (every rank alike) when the loss or the gradient is not finite."""
        params = [p for p in self.policy.parameters() if p.requires_grad]
        # None under DeepSpeed: its engine clips inside opt.step() and its norm is read after it
        norm = clip_grad_norm(self._trainer, params, self.optim_cfg.grad_clip)
        grad_norm = None if norm is None else float(norm)
        reason = self.guard.reason(nonfinite, grad_norm)
        # one decision for all ranks (a NaN on one rank must not let the others step alone)
        if self.trainer.strategy.reduce_boolean_decision(reason is not None, all=False):
            opt.zero_grad(set_to_none=True)
            reason = reason or "non-finite loss or grad norm on another rank"
            if self.guard.skipped(reason, self.global_step):  # optim.max_consecutive_skips in a row
                path = f"{checkpoint_dir(self.trainer)}/nonfinite-step{self.global_step:06d}.ckpt"
                self.trainer.save_checkpoint(path)  # save, then stop
                raise self.guard.error(reason, self.global_step, path)
            return
        opt.step()
        sched.step()
        self.guard.stepped()
        if grad_norm is None:
            grad_norm = engine_grad_norm(self._trainer)
        if grad_norm is not None and math.isfinite(grad_norm):
            pool.add({"train/grad_norm": grad_norm}, 1.0)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self.validation.reset()

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> ValidationOutput:
        """Every protocol of the val set's :class:`~papo.evaluation.validation.ValidationRun` (one per val
        dataloader) on both views, the held-out KL on the real-image responses; returns the main protocol's
        generations for callbacks (``on_validation_batch_end``)."""

        def generate(cfg: GenerationConfig, masked: bool) -> Experience:
            return self._rollout(batch, self._synced(cfg), use_masked_images=masked)[0]

        kl = partial(
            heldout_perception_kl,
            self.policy,
            suppress_ids=self.suppress_ids,
            temperature=self.rollout_cfg.temperature,
            micro_batch_size=self.algo.micro_batch_size,
            device=self.device,
        )
        with generation_context(self.policy):  # FSDP2: gathered once for every view and protocol
            return self.validation.step(batch, batch_idx, generate, kl, self.processor, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self.last_val = metrics = self.validation.compute()
        in_fit = self.trainer.state.fn == "fit" and not self.trainer.sanity_checking
        self.last_val_fit_step = self.global_step if in_fit else None
        if metrics:
            self.log_dict(metrics, on_epoch=True, sync_dist=True, add_dataloader_idx=False)

    # ------------------------------------------------------------------ checkpoints and exact resume
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.resume_state.step_started()
        if isinstance(batch, dict) and batch.get("skipped_rows"):  # data.on_bad_row=skip drops
            self.resume_state.skipped_rows += len(batch["skipped_rows"])

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.resume_state.step_ended()
        self.log("train/data/skipped_rows", float(self.resume_state.skipped_rows), on_step=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.resume_state.save_to(checkpoint)  # without the frozen reference (reloaded from its path)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.resume_state.load_from(checkpoint, self.reference)
