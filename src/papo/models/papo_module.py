"""The RL LightningModule: policy (+ frozen reference when needed), rollouts, rewards, and an update that SUMS
loss components chosen by config (policy gradient, reference KL, perception KL, double entropy, ...). Manual
optimisation: one rollout batch -> ppo_epochs x num_minibatches optimiser steps.

Orchestration only. The maths is in :mod:`papo.algos` and :mod:`papo.losses`; the collaborators, each testable
without Lightning: :class:`papo.models.update.PolicyUpdate` (mini- and micro-batch loops, loss normaliser),
:mod:`papo.models.preparation` (rollout metrics, reward shaping, no-grad passes, advantages),
:class:`papo.models.step_guard.StepGuard` (non-finite steps), :class:`papo.models.resume_state.ResumeState`
(RNG and counters in checkpoints), :class:`papo.rollout.dynamic_sampling.DynamicSampler` (DAPO's refill),
the rollout backend and the optimiser / LR schedule (built from config as ``_partial_`` targets). Reductions over
ranks use the strategy's API. Differences from EasyR1/verl: rollouts decoded on the policy itself (or a
colocated vLLM engine); DAPO's dynamic sampling accumulates kept groups across ``training_step`` calls.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import lightning as L
import torch
from torch import Tensor

from papo.config import AlgoConfig, ModelConfig, OptimConfig, RewardConfig, RolloutConfig, parse_group
from papo.evaluation.metrics import ValidationMetrics
from papo.evaluation.perception import attach_masked_view, heldout_perception_kl
from papo.evaluation.validation import PromptBudget, ValidationOutput
from papo.losses.base import LossComponent, MetricPool
from papo.losses.policy_gradient import PolicyGradientLoss
from papo.losses.reference_kl import ReferenceKLLoss
from papo.models.loading import (
    end_token_ids,
    generation_suppress_token_ids,
    is_lora,
    load_policy,
    output_vocab_size,
    padded_vocab_ids,
)
from papo.models.logprobs import response_logps
from papo.models.preparation import prepare_experience, rollout_metrics, shape_rewards
from papo.models.resume_state import NO_REFILL, ResumeState
from papo.models.step_guard import NonFiniteTrainingError, StepGuard
from papo.models.update import PolicyUpdate
from papo.rewards import get_reward_fn
from papo.rollout.backends import PolicyDecoding
from papo.rollout.collect import Generator
from papo.rollout.dynamic_sampling import DynamicSampler
from papo.rollout.experience import Experience
from papo.rollout.hf_generate import GenerationConfig
from papo.utils.distributed import (
    clip_grad_norm,
    engine_grad_norm,
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
    ``rollout_backend``: called with ``policy_path`` (``rollout.backend``).
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

        # loss components: the algo's policy gradient (+ reference KL in the loss), then the loss group's ones
        chosen: list[LossComponent] = [
            PolicyGradientLoss(a.policy_loss, a.clip_low, a.clip_high, a.dual_clip)
        ]
        if a.kl_in == "loss":
            chosen.append(ReferenceKLLoss(a.kl_coef, a.kl_estimator))
        for name, comp in (components or {}).items():
            chosen.append(comp)
            if not comp.active:
                log.info("loss component %s inactive (zero coefficient): skipped", name)
        active = [c for c in chosen if c.active]
        self.update = PolicyUpdate(active, a, norm_len=a.norm_len or r.max_new_tokens)
        self.needs_ref = any(c.needs_ref for c in active) or a.kl_in_reward
        # frozen copy, loaded only when a term needs it; with LoRA the reference is the frozen base model itself
        # (adapters disabled in _prepare), so no second copy is loaded
        self.reference = None
        if self.needs_ref and not is_lora(self.policy):
            self.reference, _ = load_policy(policy_path, **{**self.model_cfg.load_kwargs(), "lora": None})
            self.reference.requires_grad_(False).eval()
        log.info(
            "loss components: %s; masked forward: %s (grad: %s); reference model: %s",
            [c.name for c in active],
            self.update.needs_masked,
            self.update.masked_grad,
            self.needs_ref,
        )

        self.reward_fn = partial(
            get_reward_fn(reward_cfg.name),
            format_weight=reward_cfg.format_weight,
            timeout_s=reward_cfg.timeout_s,
        )
        self.reward_on_error = reward_cfg.on_error
        vocab_size = output_vocab_size(self.policy)
        self.generator = Generator(
            self.processor,
            # never sampled: the image placeholder and the padded output rows beyond the tokenizer
            generation_suppress_token_ids(self.processor, vocab_size=vocab_size),
            r.max_prompt_length,
            r.generation_batch_size,
            r.decoder,
            eos_ids=end_token_ids(self.policy.generation_config, self.processor),  # every end token
        )
        # training log-probs: over every tokenizer id (as the released actor); only the padded rows are excluded
        self.suppress_ids = torch.tensor(padded_vocab_ids(self.processor, vocab_size), dtype=torch.long)
        self.backend = rollout_backend(str(policy_path))  # rollout.backend: the policy itself, or vLLM
        self.timer = PhaseTimer()
        self.val_metrics = ValidationMetrics()
        self.val_metrics_sampled = ValidationMetrics()  # avg@k at rollout.val_sampled_temperature
        self.kl_prompts = PromptBudget(r.val_kl_max_prompts)
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

    # ------------------------------------------------------------------ set-up
    def configure_model(self) -> None:
        """trainer=fsdp (Lightning's ModelParallelStrategy): shard policy and reference with FSDP2."""
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None or getattr(self, "_fsdp2_applied", False):
            return
        from papo.utils.distributed import fully_shard_model

        bf16 = "bf16" in str(self.trainer.precision)
        for model in (self.policy, self.reference):
            if model is not None:
                fully_shard_model(model, mesh["data_parallel"], bf16=bf16)
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
        r = self.rollout_cfg
        if train:
            cfg = GenerationConfig(r.max_new_tokens, r.temperature, r.top_p, r.top_k, self.algo.group_size)
            cfg.min_new_tokens = r.min_new_tokens  # training rollouts only
        else:
            cfg = GenerationConfig(r.max_new_tokens, r.val_temperature, r.top_p, r.top_k, r.val_samples)
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

    def _logps(self, model: torch.nn.Module, exp: Experience, masked: bool = False) -> Tensor:
        inputs = exp.model_inputs(masked=masked)
        inputs = {
            k: (v.to(self.device) if isinstance(v, Tensor) else {a: b.to(self.device) for a, b in v.items()})
            for k, v in inputs.items()
        }
        temperature, chunk = self.rollout_cfg.temperature, self.algo.logprob_chunk_tokens
        return response_logps(
            model, temperature=temperature, suppress_ids=self.suppress_ids, chunk_tokens=chunk, **inputs
        )  # (n, T)

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
        with self.timer("generate"), generation_context(policy):  # FSDP2: gathered once per rollout
            exp, n_err = self._rollout(
                batch,
                self._gen_cfg(train=True),
                keep_masked_view=self.update.needs_masked,
                group_offset=self.resume_state.group_counter,
            )
        policy.train(was_training)
        self.resume_state.group_counter += len(batch["prompt"])
        metrics = rollout_metrics(exp, n_err, self.generator.eos_ids, self.rollout_cfg.max_new_tokens)
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
            needs_masked=self.update.needs_masked,
            masked_grad=self.update.masked_grad,
            policy_logps=partial(self._logps_nograd, self.policy),
            ref_logps=ref_logps,
        )

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
            if self.guard.skipped(
                reason, self.global_step
            ):  # optim.max_consecutive_skips in a row: save, stop
                cb = self.trainer.checkpoint_callback
                folder = (
                    cb.dirpath
                    if cb is not None and cb.dirpath
                    else f"{self.trainer.default_root_dir}/checkpoints"
                )
                path = f"{folder}/nonfinite-step{self.global_step:06d}.ckpt"
                self.trainer.save_checkpoint(path)
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
        self.val_metrics.reset()
        self.val_metrics_sampled.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> ValidationOutput:
        """Greedy (``rollout.val_*``) and, with ``rollout.val_sampled_k``, avg@k generations of both views; the
        held-out KL on the greedy real-image responses. Returns the main protocol's generations for callbacks."""
        views = [False, True] if batch.get("images_masked") is not None else [False]
        r = self.rollout_cfg
        with generation_context(self.policy):  # FSDP2: gathered once for every view and protocol
            out: ValidationOutput | None = None
            for masked in views:
                exp, _ = self._rollout(batch, self._gen_cfg(train=False), use_masked_images=masked)
                self.val_metrics.update(exp, masked=masked)
                if not masked:
                    out = ValidationOutput(real=exp, kl_prcp=self._heldout_kl(batch, batch_idx, exp))
                else:
                    out.masked = exp
            if r.val_sampled_k > 0:  # the published protocol too: avg@k at temperature T (val/sampled/*)
                sampled = GenerationConfig(
                    r.max_new_tokens, r.val_sampled_temperature, 1.0, 0, r.val_sampled_k
                )
                for masked in views:
                    exp, _ = self._rollout(batch, sampled, use_masked_images=masked)
                    self.val_metrics_sampled.update(exp, masked=masked)
        return out

    def _heldout_kl(self, batch: dict[str, Any], batch_idx: int, exp: Experience) -> float | None:
        """``val/kl_prcp`` on the real-image responses of the prompts within ``rollout.val_kl_max_prompts``."""
        rows = (
            self.kl_prompts.take(batch_idx, len(batch["prompt"]), exp)
            if self.rollout_cfg.val_kl_prcp
            else None
        )
        if rows is None or not attach_masked_view(self.processor, batch, rows):
            return None
        kl_sum, num_tokens = heldout_perception_kl(
            self.policy,
            rows,
            suppress_ids=self.suppress_ids,
            temperature=self.rollout_cfg.temperature,
            micro_batch_size=self.algo.micro_batch_size,
            device=self.device,
        )
        self.val_metrics.update_kl(kl_sum, num_tokens, rows.vision_dependency)
        return float(kl_sum.sum() / num_tokens.sum().clamp(min=1))

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_metrics.compute(prefix="val")
        sampled = self.val_metrics_sampled.compute(prefix="val/sampled")
        # headline keys and the accuracy per vision-dependency level (the reproduction's table reads them)
        metrics.update({k: v for k, v in sampled.items() if "_by_" not in k or "/acc_by_vd/" in k})
        self.last_val = metrics
        in_fit = self.trainer.state.fn == "fit" and not self.trainer.sanity_checking
        self.last_val_fit_step = self.global_step if in_fit else None
        if metrics:
            self.log_dict(metrics, on_epoch=True, sync_dist=True)

    # ------------------------------------------------------------------ checkpoints and exact resume
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.resume_state.step_started()
        if isinstance(batch, dict) and batch.get("skipped_rows"):  # data.on_bad_row=skip drops
            self.resume_state.skipped_rows += len(batch["skipped_rows"])

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.resume_state.step_ended()
        self.log("train/data/skipped_rows", float(self.resume_state.skipped_rows), on_step=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the frozen reference model is reloaded from its path, never stored in checkpoints
        sd = checkpoint.get("state_dict", {})
        for k in [k for k in sd if k.startswith("reference.")]:
            del sd[k]
        checkpoint["papo"] = self.resume_state.state_dict()  # papo.models.resume_state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.reference is not None:
            sd = checkpoint.setdefault("state_dict", {})
            for k, v in self.reference.state_dict().items():
                sd.setdefault(f"reference.{k}", v)
        self.resume_state.load_state_dict(checkpoint.get("papo"))
