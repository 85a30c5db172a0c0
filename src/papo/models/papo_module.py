"""The RL LightningModule: policy (+ frozen reference when needed), rollouts, rewards, and an update
that SUMS loss components chosen by config (policy gradient, reference KL, perception KL, double
entropy, ...). Manual optimisation: one rollout batch -> ppo_epochs x num_minibatches optimiser steps.

Orchestration only: the maths is in :mod:`papo.algos` (pure functions) and :mod:`papo.losses`
(components). Differences from EasyR1/verl: HF ``generate`` rollouts on the policy itself; the first
on-policy update reuses the policy's own log-probs as ``old_logps`` (no separate pass, identical
values); DAPO's dynamic sampling accumulates kept groups across ``training_step`` calls.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from functools import partial
from typing import Any

import lightning as L
import torch
from torch import Tensor

from papo.algos import (
    ADVANTAGE_ESTIMATORS,
    kl_estimate,
    micro_batch_normalization,
    overlong_penalty,
    sampled_entropy,
)
from papo.blocks.composition import MethodBlocks
from papo.evaluation.metrics import ValidationMetrics
from papo.evaluation.validation import after_validation_generation
from papo.losses.base import LossComponent, LossInputs, MetricPool
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
from papo.models.rollout_passes import RolloutPasses
from papo.rewards import get_reward_fn
from papo.rollout.collect import Generator
from papo.rollout.dynamic_sampling import DynamicSampler
from papo.rollout.experience import Experience
from papo.rollout.hf_generate import GenerationConfig, is_end_token
from papo.rollout.micro_batches import plan_micro_batches, split_to_count
from papo.utils.checkpointing import rng_state, set_rng_state
from papo.utils.distributed import (
    all_reduce,
    clip_grad_norm,
    engine_grad_norm,
    generation_context,
    is_sharded,
    world_size,
)
from papo.utils.timer import PhaseTimer

log = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Too many optimiser steps in a row had a non-finite loss or gradient norm (the state was saved)."""


class PapoModule(L.LightningModule):
    """Policy-gradient RL for VLMs with composable PAPO loss components."""

    def __init__(
        self,
        policy_path: str,
        model_cfg: dict[str, Any],
        algo: dict[str, Any],
        rollout: dict[str, Any],
        reward: dict[str, Any],
        optim: dict[str, Any],
        components: dict[str, LossComponent] | None = None,
        total_steps: int = 1,
        blocks: MethodBlocks | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.algo, self.rollout_cfg, self.optim_cfg = dict(algo), dict(rollout), dict(optim)
        self.total_steps = max(int(total_steps), 1)
        load_kwargs = {
            k: model_cfg[k]
            for k in (
                "dtype",
                "attn_implementation",
                "trust_remote_code",
                "gradient_checkpointing",
                "freeze_vision_tower",
                "min_pixels",
                "max_pixels",
                "lora",
            )
            if k in model_cfg
        }
        self.policy, self.processor = load_policy(policy_path, **load_kwargs)
        self.policy.config.use_cache = True
        self.policy.train()

        # Loss components: the algo's policy gradient (+ reference KL), then the loss group's ones.
        self.components: list[LossComponent] = [
            PolicyGradientLoss(
                algo["policy_loss"], algo["clip_low"], algo["clip_high"], algo.get("dual_clip")
            )
        ]
        self.kl_in_reward = algo.get("kl_in", "loss") == "reward" and algo["kl_coef"] > 0
        if algo.get("kl_in", "loss") == "loss":
            ref_kl = ReferenceKLLoss(algo["kl_coef"], algo["kl_estimator"])
            if ref_kl.active:
                self.components.append(ref_kl)
        for name, comp in (components or {}).items():
            if comp.active:
                self.components.append(comp)
            else:
                log.info("loss component %s inactive (zero coefficient): skipped", name)
        # the method's non-loss blocks (papo.blocks.composition): rollout view, sensitivity signal, shapers
        self.blocks = blocks if blocks is not None else MethodBlocks()
        self.needs_masked = any(c.needs_masked for c in self.components) or self.blocks.needs_masked
        self.needs_entropy = any(c.needs_entropy for c in self.components)
        self._block_metrics: dict[str, float] = {}  # the blocks' per-rollout metrics (the sensitivity signal)
        self.masked_grad = any(c.masked_grad for c in self.components)
        self.needs_ref = any(c.needs_ref for c in self.components) or self.kl_in_reward
        self.reference = None
        # frozen copy, loaded only when its coefficient is > 0; with LoRA the reference is the frozen base
        # model itself (adapters disabled in _prepare), so no second copy is loaded
        if self.needs_ref and not is_lora(self.policy):
            self.reference, _ = load_policy(policy_path, **{**load_kwargs, "lora": None})
            self.reference.requires_grad_(False).eval()
        log.info(
            "loss components: %s; masked forward: %s (grad: %s); reference model: %s; blocks: %s",
            [c.name for c in self.components],
            self.needs_masked,
            self.masked_grad,
            self.needs_ref,
            self.blocks,
        )

        self.advantage_fn = ADVANTAGE_ESTIMATORS.get(algo["advantage"])
        self.reward_fn = partial(
            get_reward_fn(reward["name"]),
            format_weight=reward["format_weight"],
            timeout_s=reward["timeout_s"],
        )
        self.reward_on_error = reward.get("on_error", "raise")
        vocab_size = output_vocab_size(self.policy)
        self.generator = Generator(
            self.processor,
            # never sampled: the image placeholder and the padded output rows beyond the tokenizer
            generation_suppress_token_ids(self.processor, vocab_size=vocab_size),
            rollout["max_prompt_length"],
            rollout["generation_batch_size"],
            rollout.get("decoder", "lean"),
            eos_ids=end_token_ids(self.policy.generation_config, self.processor),  # every end token
        )
        # training log-probs: over every tokenizer id (as the released actor); only the padded rows are excluded
        self.suppress_ids = torch.tensor(padded_vocab_ids(self.processor, vocab_size), dtype=torch.long)
        # rollout=vllm: a colocated engine, created on the first rollout (on the GPU) and re-synced with the
        # policy's weights before any rollout that follows an update (papo.rollout.vllm_backend)
        self._vllm_cfg = dict(rollout.get("vllm") or {}) if rollout.get("backend") == "vllm" else None
        if self._vllm_cfg is not None:
            from papo.rollout.vllm_backend import require_vllm

            require_vllm()
        self._policy_path, self._model_cfg = str(policy_path), dict(model_cfg)
        self._engine_stale = True
        self.timer = PhaseTimer()
        self.val_metrics = ValidationMetrics()
        self.val_metrics_sampled = ValidationMetrics()  # avg@k at rollout.val_sampled_temperature
        self.last_val: dict[str, float] = {}
        # global step of the last validation run inside fit (None: none yet, or it ran in trainer.validate)
        self.last_val_fit_step: int | None = None
        ds = dict(algo.get("dynamic_sampling") or {})
        # DAPO dynamic sampling (papo.rollout.dynamic_sampling): its buffer and round count are checkpointed
        self.dynamic_sampler = (
            DynamicSampler(
                algo["group_size"],
                ds["low"],
                ds["high"],
                ds["max_tries"],
                keep_all_when_none_pass=ds.get("keep_all_when_none_pass", False),
            )
            if ds.get("enabled", False)
            else None
        )
        self._group_counter = 0
        self.skipped_steps = 0
        self.consecutive_skips = 0  # optimiser steps skipped in a row (stop at optim.max_consecutive_skips)
        self.skipped_rows = 0  # bad data rows dropped from train batches (data.on_bad_row=skip)
        self._train_rng: dict[str, Any] | None = None  # RNG state at the end of the last training step
        self._in_train_step = False

    # ------------------------------------------------------------------ optimisation set-up
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
        params = [p for p in self.policy.parameters() if p.requires_grad]
        # fused AdamW (one kernel for all tensors; HF Trainer's default): ~3.5x faster than the per-tensor
        # loop on CPU; sharded strategies (FSDP, DeepSpeed) keep torch's default implementation
        strategy = type(getattr(self._trainer, "strategy", None)).__name__.lower()
        fused = not any(s in strategy for s in ("deepspeed", "fsdp", "modelparallel")) and all(
            p.device.type in ("cpu", "cuda") for p in params
        )
        opt = torch.optim.AdamW(
            params,
            lr=self.optim_cfg["lr"],
            weight_decay=self.optim_cfg["weight_decay"],
            betas=tuple(self.optim_cfg.get("betas", (0.9, 0.999))),
            **({"fused": True} if fused else {}),
        )
        warmup = int(self.optim_cfg.get("warmup_steps", 0))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ helpers
    def _gen_cfg(self, train: bool) -> GenerationConfig:
        r = self.rollout_cfg
        if train:
            cfg = GenerationConfig(
                r["max_new_tokens"], r["temperature"], r["top_p"], r["top_k"], self.algo["group_size"]
            )
            cfg.min_new_tokens = int(r.get("min_new_tokens", 0))  # training rollouts only
        else:
            cfg = GenerationConfig(
                r["max_new_tokens"], r["val_temperature"], r["top_p"], r["top_k"], r["val_samples"]
            )
        # sharded strategies (FSDP, ZeRO-3) gather weights in every forward: ranks must step together
        cfg.synced_gpus = is_sharded(self._trainer)
        return cfg

    def _ensure_engine(self) -> None:
        """rollout=vllm: start the engine once, and copy the current weights into it when they changed."""
        if self._vllm_cfg is None:
            return
        if self.generator.engine is None:
            from papo.rollout.vllm_backend import VLLMEngine

            c, r = dict(self._vllm_cfg), self.rollout_cfg
            c["seed"] = int(c.get("seed", 0)) + self.global_rank  # ranks sample differently
            self.generator.engine = VLLMEngine(
                self._policy_path,
                max_model_len=r["max_prompt_length"] + r["max_new_tokens"],
                min_pixels=self._model_cfg.get("min_pixels"),
                max_pixels=self._model_cfg.get("max_pixels"),
                trust_remote_code=bool(self._model_cfg.get("trust_remote_code", False)),
                **c,
            )
            self._engine_stale = True  # the policy may come from a warm start or a checkpoint
        if self._engine_stale:
            n = self.generator.engine.sync_weights(self.policy)  # FSDP2 shards are gathered per tensor
            log.debug("synced %d weight tensors into the vLLM engine", n)
            self._engine_stale = False

    def _logps(
        self, model: torch.nn.Module, exp: Experience, masked: bool = False, with_entropy: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        inputs = exp.model_inputs(masked=masked)
        inputs = {
            k: (v.to(self.device) if isinstance(v, Tensor) else {a: b.to(self.device) for a, b in v.items()})
            for k, v in inputs.items()
        }
        return response_logps(
            model,
            temperature=self.rollout_cfg["temperature"],
            suppress_ids=self.suppress_ids,
            chunk_tokens=self.algo.get("logprob_chunk_tokens"),
            with_entropy=with_entropy,
            **inputs,
        )  # (n, T), or ((n, T), (n, T)) with the full-vocabulary entropies

    def _micro_batches(self, exp: Experience) -> list[list[int]]:
        """Row indices of each micro-batch of ``exp``: ``algo.micro_batch_size`` rows at a time, or packed by
        the token budget ``algo.micro_batch_tokens`` (papo.rollout.micro_batches), then split to the largest
        count of any rank (every rank runs the same number of forwards and backwards)."""
        prompts, responses = exp.prompt_mask.sum(1).long().tolist(), exp.response_mask.sum(1).long().tolist()
        budget = self.algo.get("micro_batch_tokens")
        plan = plan_micro_batches(prompts, responses, self.algo["micro_batch_size"], budget)
        if budget is not None and world_size() > 1:
            count = int(all_reduce(len(plan), "max", self.device))
            plan = split_to_count(plan, prompts, responses, count)
        return plan

    @torch.no_grad()
    def _logps_nograd(self, model: torch.nn.Module, exp: Experience, masked: bool = False) -> Tensor:
        out = torch.zeros(exp.response_ids.shape)  # (N, T), rows in exp's order whatever the plan's order
        for idx in self._micro_batches(exp):
            logps = self._logps(model, exp.select(idx), masked).cpu()
            out[idx, : logps.shape[1]] = logps
        return out

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

    @property
    def progress(self) -> float:
        return min(1.0, self.global_step / self.total_steps)

    def _rollout_steps(self) -> tuple[int, int]:
        """(rollout batches done, the run's rollout batches): optimiser steps over the updates per rollout."""
        per_rollout = max(int(self.algo["ppo_epochs"]) * int(self.algo["num_minibatches"]), 1)
        return self.global_step // per_rollout, max(self.total_steps // per_rollout, 1)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        policy = self.policy
        was_training = policy.training
        policy.eval()
        self._ensure_engine()
        gen_cfg, errors = self._gen_cfg(train=True), []

        def sample(prompts: dict[str, Any], num_samples: int) -> Experience:
            """``num_samples`` scored responses per prompt, group ids from this rollout's offset."""
            out, n_err = self.generator.rollout(
                policy,
                prompts,
                dataclasses.replace(gen_cfg, num_samples=num_samples),
                self.reward_fn,
                keep_masked_view=self.needs_masked,
                group_offset=self._group_counter,
                on_error=self.reward_on_error,
                device=self.device,
            )
            errors.append(n_err)
            return out

        with self.timer("generate"), generation_context(policy):  # FSDP2: gathered once per rollout
            # the rollout-side view (papo.blocks): every response from the real image, or NoisyRollout's mix
            exp, view_metrics = self.blocks.rollout(
                sample, batch, self.algo["group_size"], *self._rollout_steps()
            )
        policy.train(was_training)
        self._group_counter += len(batch["prompt"])
        rollout_metrics = self._rollout_metrics(exp, sum(errors))
        rollout_metrics.update({f"train/{k}": v for k, v in view_metrics.items()})

        with self.timer("score"):
            rewards = exp.rewards.clone()
            if self.algo.get("overlong", {}).get("enabled", False):
                o = self.algo["overlong"]
                rewards += overlong_penalty(
                    exp.response_mask.sum(1),
                    self.rollout_cfg["max_new_tokens"],
                    o["buffer_length"],
                    o["penalty_factor"],
                )
            exp.rewards = rewards

        if self.dynamic_sampler is not None:  # DAPO: sample more rounds until enough groups pass the filter
            # groups per update: algo.dynamic_sampling.batch_prompts per rank, else one data batch
            need = int(self.algo["dynamic_sampling"].get("batch_prompts") or len(batch["prompt"]))
            exp, ds_metrics = self.dynamic_sampler.add(
                exp, need, lambda value, op: all_reduce(value, op, self.device)
            )
            rollout_metrics.update({f"train/dynamic_sampling/{k}": v for k, v in ds_metrics.items()})
            if exp is None:
                self.log_dict(rollout_metrics, on_step=True)
                return

        with self.timer("old_logps"):
            self._prepare(exp)
        metrics = self._update(exp)
        metrics.update(self._block_metrics)
        self._engine_stale = True  # the next rollout must use the updated weights
        metrics.update(rollout_metrics)
        secs = self.timer.pop()
        metrics.update({f"time/{k}_s": v for k, v in secs.items()})
        total = sum(secs.values())
        metrics["time/step_s"] = total
        metrics["perf/tokens_per_s"] = exp.num_tokens / max(total, 1e-9)
        self.log_dict(metrics, on_step=True, prog_bar=False)
        self.log("reward", metrics["train/reward/mean"], prog_bar=True, on_step=True, logger=False)

    def _rollout_metrics(self, exp: Experience, n_err: int) -> dict[str, float]:
        lengths = exp.response_mask.sum(1)  # (N,) EOS included
        # truncated: cut at rollout.max_new_tokens without an end token (not: as long as the longest response)
        last = exp.response_ids.gather(1, (lengths.long() - 1).clamp(min=0)[:, None])[:, 0]  # (N,)
        ended = is_end_token(last, self.generator.eos_ids)  # (N,) any end token of the generation config
        truncated = (lengths >= self.rollout_cfg["max_new_tokens"]) & ~ended
        return {
            "train/reward/mean": float(exp.rewards.mean()),
            "train/reward/accuracy": float(exp.accuracy.mean()),
            "train/reward/format": float(exp.format.mean()),
            "train/reward/errors": float(n_err),
            "train/response/length_mean": float(lengths.mean()),
            "train/response/length_max": float(lengths.max()),
            "train/response/clip_ratio": float(truncated.float().mean()),
        }

    def _prepare(self, exp: Experience) -> None:
        """Everything computed once per rollout batch with the rollout parameters (no grad)."""
        need_old = self.algo["ppo_epochs"] > 1 or self.algo["num_minibatches"] > 1
        if need_old:
            exp.old_logps = self._logps_nograd(self.policy, exp)
        if self.needs_ref and self.reference is None:  # LoRA: reference = base model without adapters
            with self.policy.disable_adapter():
                exp.ref_logps = self._logps_nograd(self.policy, exp)
        elif self.needs_ref:
            exp.ref_logps = self._logps_nograd(self.reference, exp)
        if self.needs_masked and not self.masked_grad:
            exp.logps_masked = self._logps_nograd(self.policy, exp, masked=True)
        self._block_metrics = {}
        if self.blocks.needs_scores:  # per-token visual sensitivity with the rollout parameters (VPPO)
            exp.sensitivity = self._sensitivity(exp)
            m = self.blocks.score_metrics(exp.sensitivity, exp.response_mask)
            self._block_metrics = {f"train/{k}": v for k, v in m.items()}
        rewards = exp.rewards
        if self.kl_in_reward:
            kl = kl_estimate(
                exp.old_logps if exp.old_logps is not None else self._logps_nograd(self.policy, exp),
                exp.ref_logps,
                self.algo["kl_estimator"],
            )
            rewards = rewards - self.algo["kl_coef"] * (kl * exp.response_mask).sum(1)
        exp.advantages = self.advantage_fn(rewards, exp.group_ids)  # (N,)

    def _update(self, exp: Experience) -> dict[str, float]:
        opt = self.optimizers()
        sched = self.lr_schedulers()
        params = [p for p in self.policy.parameters() if p.requires_grad]
        n_mb = self.algo["num_minibatches"]
        agg = self.algo["agg_mode"]
        # micro_batch_mean (released actor) | global_token_mean (papo.algos.micro_batch_normalization)
        normalizer = self.algo.get("loss_normalizer", "global_token_mean")
        # seq-mean-token-sum-norm's constant length (Dr. GRPO): the maximum response length, not the
        # longest response of this batch (the padded width T, which changes from step to step)
        norm_len = int(self.algo.get("norm_len") or self.rollout_cfg["max_new_tokens"])
        pool = MetricPool()  # micro-batch metrics -> one value per step (max of maxima, pooled variances)
        # the coefficient schedules see one progress per rollout batch, the fraction of training done before it
        # (the released controller steps once per rollout step)
        progress = self.progress
        N = len(exp)
        for _epoch in range(self.algo["ppo_epochs"]):
            # mini-batches: a fresh random split per epoch, or contiguous rows (the released actor's split)
            shuffle = n_mb > 1 and self.algo.get("shuffle_minibatches", True)
            order = torch.randperm(N) if shuffle else torch.arange(N)
            for mb_idx in torch.tensor_split(order, n_mb):
                mb = exp.select(mb_idx)
                # what the advantage shapers need from the whole mini-batch (VPPO: its min-max range)
                populations = self.blocks.populations(mb.sensitivity, mb.response_mask)
                # global_token_mean: token-mean over ALL ranks' mini-batches: DDP averages gradients over W
                # ranks, so each rank normalises by (global token count / W); one process: mb.num_tokens
                num_tokens_global = float(all_reduce(mb.num_tokens, "sum", self.device))
                num_tokens = num_tokens_global / world_size()
                pool.add({"train/num_tokens_global": num_tokens_global}, 1.0)
                opt.zero_grad(set_to_none=True)
                nonfinite: list[str] = []  # loss components that gave a non-finite value in this mini-batch
                plan = self._micro_batches(mb)
                n_micro = len(plan)  # gradient-accumulation micro-batches of this mini-batch
                for idx in plan:
                    micro = mb.select(idx)
                    with self.timer("forward"):
                        entropies = None
                        if self.needs_entropy:  # full-vocabulary entropies from the same logits (n, T)
                            logps, entropies = self._logps(self.policy, micro, with_entropy=True)
                        else:
                            logps = self._logps(self.policy, micro)  # (n, T) with grad
                        T = logps.shape[1]
                        mask = micro.response_mask[:, :T].to(self.device)
                        logps_masked = None
                        if self.needs_masked:
                            if self.masked_grad:
                                logps_masked = self._logps(self.policy, micro, masked=True)
                            else:
                                logps_masked = micro.logps_masked[:, :T].to(self.device)
                        old = (
                            micro.old_logps[:, :T].to(self.device)
                            if micro.old_logps is not None
                            else logps.detach()
                        )
                        norm_tokens, scale = micro_batch_normalization(
                            normalizer,
                            agg,
                            micro_rows=len(micro),
                            mini_rows=len(mb),
                            num_micro=n_micro,
                            tokens_per_rank=num_tokens,
                        )
                        scores = (
                            None if micro.sensitivity is None else micro.sensitivity[:, :T].to(self.device)
                        )
                        advantages, shaping = self.blocks.shape(  # identity without shapers
                            micro.advantages.to(self.device)[:, None].expand_as(logps),
                            mask,
                            scores,
                            populations,
                        )
                        pool.add(shaping, float(mask.sum()), prefix="train/")
                        inputs = LossInputs(
                            logps=logps,
                            old_logps=old,
                            advantages=advantages,
                            response_mask=mask,
                            agg_mode=agg,
                            num_tokens=norm_tokens,
                            ref_logps=micro.ref_logps[:, :T].to(self.device)
                            if micro.ref_logps is not None
                            else None,
                            logps_masked=logps_masked,
                            progress=progress,
                            norm_len=norm_len,
                            entropies=entropies,
                        )
                        total = logps.new_zeros(())
                        w = float(mask.sum())
                        terms: list[tuple[str, Tensor]] = []
                        for comp in self.components:
                            loss, m = comp(inputs)
                            total = total + loss * scale
                            terms.append((comp.name, loss.detach()))
                            pool.add(m, w, prefix=f"train/{comp.name}/")
                    # backward even on a non-finite loss: DDP ranks must all reach the gradient all-reduce
                    with self.timer("backward"):
                        self.manual_backward(total)
                    total_value = float(total.detach())
                    if not math.isfinite(total_value):
                        nonfinite += [n for n, v in terms if not bool(torch.isfinite(v).all())] or ["total"]
                    step_metrics = {
                        "train/loss/total": total_value,
                        # sampled-token entropy surrogate -log p(o_t), real image
                        "train/response/entropy": float(sampled_entropy(logps.detach(), mask)),
                    }
                    if logps_masked is not None:  # whenever a masked forward ran (PAPO-G too, eta = 0)
                        step_metrics["train/response/entropy_masked"] = float(
                            sampled_entropy(logps_masked.detach(), mask)
                        )
                    pool.add(step_metrics, w)
                # None under DeepSpeed: its engine clips inside opt.step() and its norm is read after it
                norm = clip_grad_norm(self._trainer, params, self.optim_cfg["grad_clip"])
                grad_norm = None if norm is None else float(norm)
                reason = None
                if nonfinite:
                    reason = f"non-finite loss in {sorted(set(nonfinite))}"
                elif grad_norm is not None and not math.isfinite(grad_norm):
                    reason = f"non-finite grad norm ({grad_norm})"
                # one decision for all ranks (a NaN on one rank must not let the others step alone)
                if not self.trainer.strategy.reduce_boolean_decision(reason is not None, all=False):
                    opt.step()
                    sched.step()
                    self.consecutive_skips = 0
                    if grad_norm is None:
                        grad_norm = engine_grad_norm(self._trainer)
                    if grad_norm is not None and math.isfinite(grad_norm):
                        pool.add({"train/grad_norm": grad_norm}, 1.0)
                else:
                    opt.zero_grad(set_to_none=True)
                    self._skip_step(reason or "non-finite loss or grad norm on another rank")
        out = pool.compute()
        out["train/optim/lr"] = float(opt.param_groups[0]["lr"])
        out["train/optim/skipped_steps"] = float(self.skipped_steps)
        out["train/optim/consecutive_skips"] = float(self.consecutive_skips)
        out["train/progress"] = self.progress
        return out

    def _skip_step(self, reason: str) -> None:
        """Count a skipped optimiser step; after ``optim.max_consecutive_skips`` in a row, save and stop."""
        self.skipped_steps += 1
        self.consecutive_skips += 1
        limit = self.optim_cfg.get("max_consecutive_skips")
        log.warning(
            "step %d: optimiser step skipped: %s (%d in a row, %d in total; optim.max_consecutive_skips=%s)",
            self.global_step,
            reason,
            self.consecutive_skips,
            self.skipped_steps,
            limit,
        )
        if limit and self.consecutive_skips >= int(limit):
            trainer = self.trainer
            cb = trainer.checkpoint_callback
            folder = (
                cb.dirpath if cb is not None and cb.dirpath else f"{trainer.default_root_dir}/checkpoints"
            )
            path = f"{folder}/nonfinite-step{self.global_step:06d}.ckpt"
            trainer.save_checkpoint(path)
            raise NonFiniteTrainingError(
                f"{self.consecutive_skips} optimiser steps in a row skipped at step {self.global_step} "
                f"(optim.max_consecutive_skips={limit}; last: {reason}); the run's state is saved in {path}. "
                "Lower optim.lr or the loss coefficients, or resume from an earlier checkpoint."
            )

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self.val_metrics.reset()
        self.val_metrics_sampled.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        views = [False, True] if batch.get("images_masked") is not None else [False]
        self._ensure_engine()
        with generation_context(self.policy):  # FSDP2: gathered once for every view and protocol
            self._validation_views(batch, batch_idx, self._gen_cfg(train=False), views, self.val_metrics)
            k = int(self.rollout_cfg.get("val_sampled_k") or 0)
            if k > 0:  # the published protocol too: avg@k at temperature T (val/sampled/*)
                r = self.rollout_cfg
                sampled = GenerationConfig(
                    r["max_new_tokens"], r.get("val_sampled_temperature", 1.0), 1.0, 0, k
                )
                self._validation_views(
                    batch, batch_idx, sampled, views, self.val_metrics_sampled, hooks=False
                )

    def _validation_views(
        self,
        batch: dict[str, Any],
        batch_idx: int,
        cfg: GenerationConfig,
        views: list,
        metrics: ValidationMetrics,
        hooks: bool = True,
    ) -> None:
        """Generate with each view (real, masked) and accumulate into ``metrics``; ``hooks``: also the
        held-out KL_prcp and the sample table (once per batch, on the main protocol)."""
        for masked in views:
            exp, _ = self.generator.rollout(
                self.policy,
                batch,
                cfg,
                self.reward_fn,
                use_masked_images=masked,
                on_error=self.reward_on_error,
                device=self.device,
            )
            metrics.update(exp, masked=masked)
            if hooks:
                after_validation_generation(self, batch, batch_idx, exp, masked)  # val/kl_prcp, samples

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
    # Lightning checkpoints hold weights, optimiser, scheduler, loop counters (global step, hence the
    # gamma schedule's progress) and the train loader's position (ResumableDataLoader.state_dict). Added
    # here, under checkpoint["papo"]: the global RNG states and the dynamic-sampling / fault counters.
    # RNG discipline: every training step starts from the RNG state the previous step ENDED with (or the
    # checkpoint's, after a resume), so what runs between steps (validation, a new DataLoader iterator,
    # checkpointing) never shifts rollout sampling, and a resumed run draws what an uninterrupted one draws.
    # Multi-process runs restore rank 0's state on every rank (fresh runs also seed every rank alike).
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._train_rng is not None:
            set_rng_state(self._train_rng)
        self._in_train_step = True
        if isinstance(batch, dict) and batch.get("skipped_rows"):  # data.on_bad_row=skip drops
            self.skipped_rows += len(batch["skipped_rows"])

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._train_rng = rng_state()
        self._in_train_step = False
        self.log("train/data/skipped_rows", float(self.skipped_rows), on_step=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the frozen reference model is reloaded from its path, never stored in checkpoints
        sd = checkpoint.get("state_dict", {})
        for k in [k for k in sd if k.startswith("reference.")]:
            del sd[k]
        # inside a step (ModelCheckpoint at on_train_batch_end, or an exception) the live state is the
        # step's end state; between steps, the one the next step will start from
        live = self._in_train_step or self._train_rng is None
        checkpoint["papo"] = {  # tensors, lists, numbers and strings only: loads with weights_only=True
            "rng": rng_state() if live else self._train_rng,
            # DAPO's refill state: "buffer" (kept groups awaiting a full batch) and "tries"
            **(self.dynamic_sampler.state_dict() if self.dynamic_sampler else {"buffer": [], "tries": 0}),
            "group_counter": self._group_counter,
            "skipped_steps": self.skipped_steps,
            "consecutive_skips": self.consecutive_skips,
            "skipped_rows": self.skipped_rows,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.reference is not None:
            sd = checkpoint.setdefault("state_dict", {})
            for k, v in self.reference.state_dict().items():
                sd.setdefault(f"reference.{k}", v)
        state = checkpoint.get("papo")
        if state is None:
            log.warning("checkpoint has no PAPO resume state: RNG and dynamic-sampling state start afresh")
            return
        self._train_rng = state["rng"]  # applied at the start of the next training step
        if self.dynamic_sampler is not None:
            self.dynamic_sampler.load_state_dict(state)
        self._group_counter = int(state["group_counter"])
        self.skipped_steps = int(state["skipped_steps"])
        self.consecutive_skips = int(state["consecutive_skips"])
        self.skipped_rows = int(state["skipped_rows"])
