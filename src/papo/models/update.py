"""The policy update of one rollout batch, without Lightning: mini-batches, micro-batches, the loss normaliser.

:class:`PolicyUpdate` splits a rollout batch into ``algo.ppo_epochs x algo.num_minibatches`` mini-batches (one
optimiser step each, taken by the caller) and accumulates the gradient of one mini-batch over its
micro-batches: the method's advantage shapers (:class:`papo.blocks.composition.MethodBlocks`; the identity
without any) turn the group advantages into per-token ones, every active loss component is evaluated on the same
:class:`papo.losses.base.LossInputs` (with the full-vocabulary entropies when a term needs them), scaled by the
normaliser of :func:`papo.algos.micro_batch_normalization`, and summed; the backward runs even on a
non-finite loss (data-parallel ranks must all reach the gradient all-reduce) and the names of the non-finite
terms are returned, so the caller can skip the step.

The model, the backward and the reductions over ranks are passed in (``logps``, ``backward``, ``reduce``), so the
loop runs on plain tensors in the tests. Differences from the released actor: the first on-policy update uses
the policy's own log-probs as ``old_logps`` when no old-log-prob pass ran (identical values); the token-mean
normaliser is the global token count over all ranks (``algo.loss_normalizer=global_token_mean``) unless the
released per-micro-batch mean is chosen.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from papo.algos import micro_batch_normalization, sampled_entropy
from papo.blocks.composition import MethodBlocks
from papo.config.training import AlgoConfig
from papo.losses.base import LossComponent, LossInputs, MetricPool
from papo.losses.policy_gradient import PolicyGradientLoss
from papo.losses.reference_kl import ReferenceKLLoss
from papo.rollout.experience import Experience
from papo.rollout.micro_batches import plan_micro_batches, split_to_count

log = logging.getLogger(__name__)

__all__ = ["PolicyUpdate", "Reduce", "active_components"]

#: ``(value, op) -> value`` reduced over the data-parallel ranks (``op``: sum | min | max)
Reduce = Callable[[float, str], float]
#: ``(model, experience, masked) -> (n, T)`` log-probs of the responses (with grad when grad is enabled)
LogProbs = Callable[..., Tensor]


def active_components(algo: AlgoConfig, components: dict[str, LossComponent] | None) -> list[LossComponent]:
    """The loss terms summed by the update: the algo's policy gradient (+ the reference KL when ``algo.kl_in`` is
    ``loss``), then the loss group's components; those with a zero coefficient are left out (logged)."""
    chosen: list[LossComponent] = [
        PolicyGradientLoss(algo.policy_loss, algo.clip_low, algo.clip_high, algo.dual_clip)
    ]
    if algo.kl_in == "loss":
        chosen.append(ReferenceKLLoss(algo.kl_coef, algo.kl_estimator))
    for name, comp in (components or {}).items():
        chosen.append(comp)
        if not comp.active:
            log.info("loss component %s inactive (zero coefficient): skipped", name)
    return [c for c in chosen if c.active]


class PolicyUpdate:
    """Mini-batch and micro-batch loops of the update (see the module docstring).

    Args:
        components: the active loss components, summed.
        algo: the ``algo`` group (epochs, mini-batches, micro-batch size / token budget, normaliser, agg mode).
        norm_len: seq-mean-token-sum-norm's constant length (``algo.norm_len`` or ``rollout.max_new_tokens``).
        blocks: the method's blocks; their shapers act on each micro-batch's advantages (None: no shaper).
    """

    def __init__(
        self,
        components: Sequence[LossComponent],
        algo: AlgoConfig,
        norm_len: int,
        blocks: MethodBlocks | None = None,
    ) -> None:
        self.components = list(components)
        self.algo = algo
        self.norm_len = int(norm_len)
        self.needs_masked = any(c.needs_masked for c in self.components)
        self.masked_grad = any(c.masked_grad for c in self.components)
        # a term that needs the full-vocabulary entropies: the log-prob pass computes them from its logits
        self.needs_entropy = any(c.needs_entropy for c in self.components)
        # the method's advantage shapers (papo.blocks.composition; the identity without any)
        self.blocks = blocks if blocks is not None else MethodBlocks()

    def minibatches(self, n_rows: int) -> Iterator[Tensor]:
        """Row indices of each mini-batch, epoch after epoch: a fresh random split per epoch, or contiguous rows
        in rollout order (the released actor's split, ``algo.shuffle_minibatches=false``)."""
        n_mb = self.algo.num_minibatches
        for _epoch in range(self.algo.ppo_epochs):
            shuffle = n_mb > 1 and self.algo.shuffle_minibatches
            order = torch.randperm(n_rows) if shuffle else torch.arange(n_rows)
            yield from torch.tensor_split(order, n_mb)

    def plan(self, exp: Experience, world_size: int, reduce: Reduce) -> list[list[int]]:
        """Row indices of each micro-batch of ``exp``: ``algo.micro_batch_size`` rows at a time, or packed by the
        token budget ``algo.micro_batch_tokens`` (papo.rollout.micro_batches), then split to the largest count of
        any rank (every rank runs the same number of forwards and backwards)."""
        prompts = exp.prompt_mask.sum(1).long().tolist()
        responses = exp.response_mask.sum(1).long().tolist()
        budget = self.algo.micro_batch_tokens
        plan = plan_micro_batches(prompts, responses, self.algo.micro_batch_size, budget)
        if budget is not None and world_size > 1:
            plan = split_to_count(plan, prompts, responses, int(reduce(len(plan), "max")))
        return plan

    def accumulate(
        self,
        mb: Experience,
        plan: list[list[int]],
        *,
        tokens_per_rank: float,
        progress: float,
        logps: LogProbs,
        policy: torch.nn.Module,
        backward: Callable[[Tensor], Any],
        timer: Any,
        pool: MetricPool,
        device: torch.device | str,
    ) -> list[str]:
        """Accumulate the gradient of mini-batch ``mb`` over the micro-batches of ``plan``; metrics go to ``pool``.

        ``tokens_per_rank``: the mini-batch's token count over all ranks / world size (global_token_mean).
        Returns the names of the loss terms that were not finite (``["total"]`` when no single term was).
        """
        agg, normalizer = self.algo.agg_mode, self.algo.loss_normalizer
        nonfinite: list[str] = []
        # what the advantage shapers need from the whole mini-batch (VPPO: its min-max range)
        populations = self.blocks.populations(mb.sensitivity, mb.response_mask)
        for idx in plan:
            micro = mb.select(idx)
            with timer("forward"):
                entropies = None
                if self.needs_entropy:  # (n, T) full-vocabulary entropies from the same logits
                    lp, entropies = logps(policy, micro, with_entropy=True)
                else:
                    lp = logps(policy, micro)  # (n, T) with grad
                T = lp.shape[1]
                mask = micro.response_mask[:, :T].to(device)
                lp_masked = None
                if self.needs_masked:
                    if self.masked_grad:
                        lp_masked = logps(policy, micro, masked=True)
                    else:
                        lp_masked = micro.logps_masked[:, :T].to(device)
                old = micro.old_logps[:, :T].to(device) if micro.old_logps is not None else lp.detach()
                num_tokens, scale = micro_batch_normalization(
                    normalizer,
                    agg,
                    micro_rows=len(micro),
                    mini_rows=len(mb),
                    num_micro=len(plan),
                    tokens_per_rank=tokens_per_rank,
                )
                scores = None if micro.sensitivity is None else micro.sensitivity[:, :T].to(device)
                advantages, shaping = self.blocks.shape(  # the identity without shapers
                    micro.advantages.to(device)[:, None].expand_as(lp), mask, scores, populations
                )
                pool.add(shaping, float(mask.sum()), prefix="train/")
                inputs = LossInputs(
                    logps=lp,
                    old_logps=old,
                    advantages=advantages,
                    response_mask=mask,
                    agg_mode=agg,
                    num_tokens=num_tokens,
                    ref_logps=micro.ref_logps[:, :T].to(device) if micro.ref_logps is not None else None,
                    logps_masked=lp_masked,
                    progress=progress,
                    norm_len=self.norm_len,
                    entropies=entropies,
                )
                total = lp.new_zeros(())
                weight = float(mask.sum())
                terms: list[tuple[str, Tensor]] = []
                for comp in self.components:
                    loss, metrics = comp(inputs)
                    total = total + loss * scale
                    terms.append((comp.name, loss.detach()))
                    pool.add(metrics, weight, prefix=f"train/{comp.name}/")
            # backward even on a non-finite loss: DDP ranks must all reach the gradient all-reduce
            with timer("backward"):
                backward(total)
            total_value = float(total.detach())
            if not math.isfinite(total_value):
                nonfinite += [n for n, v in terms if not bool(torch.isfinite(v).all())] or ["total"]
            step = {
                "train/loss/total": total_value,
                # sampled-token entropy surrogate -log p(o_t), real image
                "train/response/entropy": float(sampled_entropy(lp.detach(), mask)),
            }
            if lp_masked is not None:  # whenever a masked forward ran (PAPO-G too, eta = 0)
                step["train/response/entropy_masked"] = float(sampled_entropy(lp_masked.detach(), mask))
            pool.add(step, weight)
        return nonfinite
