"""The RL LightningModule: policy (+ frozen reference when needed), rollouts, rewards, and an update that SUMS
loss components chosen by config (policy gradient, reference KL, perception KL, double entropy, ...). Manual
optimisation: one rollout batch -> ppo_epochs x num_minibatches optimiser steps.

Orchestration only: Lightning hooks -> collaborators. The maths is in :mod:`papo.algos` and :mod:`papo.losses`;
the collaborators, each testable without Lightning: :class:`papo.rollout.experience_source.ExperienceSource`
(rollouts, rewards, DAPO's refill, the no-grad passes and the blocks' sensitivity signal: the experience of one
batch), :class:`papo.models.update.PolicyUpdate` (mini- and micro-batch loops, loss normaliser),
:class:`papo.models.step_guard.StepGuard` (non-finite steps), :class:`papo.models.resume_state.ResumeState`
(RNG and counters in checkpoints), :class:`papo.evaluation.validation.ValidationSuite` (validation protocols),
:class:`papo.blocks.composition.MethodBlocks` (the method's rollout view, visual-sensitivity signal and
advantage shapers: never named here), the rollout backend and the optimiser / LR schedule (``_partial_``
targets). Reductions over ranks use the strategy's API. Differences from EasyR1/verl: rollouts decoded on the
policy itself (or a colocated vLLM engine); DAPO's dynamic sampling accumulates kept groups across
``training_step`` calls.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import lightning as L
import torch

from papo.blocks.composition import MethodBlocks
from papo.config import AlgoConfig, ModelConfig, OptimConfig, RewardConfig, RolloutConfig, parse_group
from papo.evaluation.perception import heldout_perception_kl
from papo.evaluation.val_sets import ValSet
from papo.evaluation.validation import ValidationOutput, ValidationSuite
from papo.losses.base import LossComponent, MetricPool
from papo.models.loading import is_lora, load_policy
from papo.models.resume_state import NO_REFILL, ResumeState
from papo.models.step_guard import NonFiniteTrainingError, StepGuard
from papo.models.update import PolicyUpdate, active_components
from papo.rollout.backends import PolicyDecoding
from papo.rollout.experience import Experience
from papo.rollout.experience_source import ExperienceSource, Placement
from papo.utils.checkpointing import checkpoint_dir
from papo.utils.distributed import (
    clip_grad_norm,
    engine_grad_norm,
    fully_shard_model,
    fused_optimizer_ok,
    generation_context,
    is_sharded,
)

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
        self.source = src = ExperienceSource(
            self.policy,
            self.processor,
            a,
            r,
            reward_cfg.reward_fn(),
            reward_cfg.on_error,
            self.blocks,
            self.update,
            rollout_backend(str(policy_path)),  # rollout.backend: the policy itself, or vLLM
            placement=self._placement,
        )
        # frozen copy, loaded only when a term needs it; with LoRA the reference is the frozen base model itself
        # (adapters disabled in ExperienceSource.prepare), so no second copy is loaded
        self.reference = None
        if src.needs_ref and not is_lora(self.policy):
            self.reference, _ = load_policy(policy_path, **{**self.model_cfg.load_kwargs(), "lora": None})
            self.reference.requires_grad_(False).eval()
        log.info(
            "loss components: %s; masked forward: %s (grad: %s); reference model: %s; blocks: %s",
            [c.name for c in active],
            src.needs_masked,
            self.update.masked_grad,
            src.needs_ref,
            self.blocks,
        )
        # protocols and metrics of training-time validation, per val set
        self.validation = ValidationSuite(r, val_sets)
        self.last_val: dict[str, float] = {}
        # global step of the last validation run inside fit (None: none yet, or it ran in trainer.validate)
        self.last_val_fit_step: int | None = None
        self.guard = StepGuard(self.optim_cfg.max_consecutive_skips)
        self.resume_state = ResumeState(src.dynamic_sampler or NO_REFILL, self.guard)

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

    def _placement(self) -> Placement:
        """Where the experience source runs: this module's device, rank and strategy."""
        return Placement(
            self.device, self.global_rank, self._world_size(), self._reduce, is_sharded(self._trainer)
        )

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        src = self.source
        offset, steps = self.resume_state.group_counter, self._rollout_steps()
        exp, metrics = src.collect(self.policy, self.reference, batch, offset, steps)
        self.resume_state.group_counter += len(batch["prompt"])
        if exp is None:  # DAPO: too few groups passed the filter so far, sample again on the next batch
            self.log_dict(metrics, on_step=True)
            return
        metrics.update(self._update(exp))
        src.mark_stale()  # the next rollout must use the updated weights
        secs = src.timer.pop()
        metrics.update({f"time/{k}_s": v for k, v in secs.items()})
        metrics["time/step_s"] = total = sum(secs.values())
        metrics["perf/tokens_per_s"] = exp.num_tokens / max(total, 1e-9)
        self.log_dict(metrics, on_step=True, prog_bar=False)
        self.log("reward", metrics["train/reward/mean"], prog_bar=True, on_step=True, logger=False)

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
                self.source.micro_batches(mb),
                tokens_per_rank=tokens / self._world_size(),
                progress=progress,
                logps=self.source.logps,
                policy=self.policy,
                backward=self.manual_backward,
                timer=self.source.timer,
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
        generate = partial(self.source.generate, self.policy, batch)
        kl = partial(
            heldout_perception_kl,
            self.policy,
            suppress_ids=self.source.suppress_ids,
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
