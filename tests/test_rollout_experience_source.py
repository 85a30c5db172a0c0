"""papo.rollout.experience_source without Lightning: one training batch's experience from the embedded model
(group ids from the given offset, the no-grad passes with the rollout parameters, the phases timed, the policy's
train mode restored), and DAPO's refill reducing over the ranks through the given placement."""

from __future__ import annotations

import torch

from papo.blocks.composition import MethodBlocks
from papo.config import AlgoConfig, ModelConfig, RolloutConfig, parse_group
from papo.data.synthetic import synthetic_corpus
from papo.models.loading import load_policy
from papo.models.update import PolicyUpdate, active_components
from papo.pipeline import resolve_model_dir
from papo.rollout.backends import PolicyDecoding
from papo.rollout.experience_source import ExperienceSource, Placement
from test_rollout_generation import _batch

BASE = ["masking=none", "loss=none", "warm_start.enabled=false", "rollout.max_new_tokens=8"]


def _by_index(text: str, truth: str) -> dict[str, float]:
    """Accuracy 1 for even calls: every group of G >= 2 consecutive responses has mixed accuracy."""
    _by_index.calls = getattr(_by_index, "calls", 0) + 1
    acc = float(_by_index.calls % 2)
    return {"overall": acc, "accuracy": acc, "format": 1.0}


def _zero(text: str, truth: str) -> dict[str, float]:
    return {"overall": 0.0, "accuracy": 0.0, "format": 0.0}


def _source(
    make_cfg, overrides: list[str], reward, placement=Placement
) -> tuple[ExperienceSource, torch.nn.Module]:
    cfg = make_cfg([*BASE, *overrides])
    model_cfg = parse_group(ModelConfig, cfg.model, "model")
    algo = parse_group(AlgoConfig, cfg.algo, "algo")
    rollout = parse_group(RolloutConfig, cfg.rollout, "rollout")
    policy, processor = load_policy(
        str(resolve_model_dir(cfg.model, corpus_fn=synthetic_corpus)), **model_cfg.load_kwargs()
    )
    blocks = MethodBlocks()
    update = PolicyUpdate(active_components(algo, {}), algo, norm_len=rollout.max_new_tokens, blocks=blocks)
    source = ExperienceSource(
        policy,
        processor,
        algo,
        rollout,
        reward,
        "raise",
        blocks,
        update,
        PolicyDecoding(),
        placement=placement,
    )
    return source, policy


def test_collect_prepares_one_batch(make_cfg) -> None:
    source, policy = _source(make_cfg, ["algo=grpo", "algo.num_minibatches=2"], _by_index)
    assert source.needs_ref and not source.needs_masked  # GRPO's reference KL, no masked view
    policy.train()
    torch.manual_seed(0)
    exp, metrics = source.collect(policy, policy, _batch(2), group_offset=7, rollout_steps=(0, 1))
    G = source.algo.group_size
    assert len(exp) == 2 * G and exp.group_ids.tolist() == [7] * G + [8] * G
    assert policy.training  # sampled in eval mode, handed back in train mode
    # two mini-batches: the old log-probs are the rollout parameters'; the reference here is the policy itself
    expected = source.logps_nograd(policy, exp)
    torch.testing.assert_close(exp.old_logps, expected)
    torch.testing.assert_close(exp.ref_logps, expected)
    assert exp.advantages.shape == (2 * G,) and float(exp.advantages.abs().sum()) > 0
    assert "train/reward/mean" in metrics
    assert set(source.timer.pop()) == {"generate", "score", "old_logps"}


def test_dynamic_sampling_waits_for_enough_groups(make_cfg) -> None:
    seen: list[tuple[float, str]] = []

    def reduce(value: float, op: str) -> float:
        seen.append((value, op))
        return value

    source, policy = _source(
        make_cfg,
        ["algo=dapo", "algo.dynamic_sampling.keep_all_when_none_pass=false"],
        _zero,
        placement=lambda: Placement(reduce=reduce),
    )
    exp, metrics = source.collect(policy, None, _batch(2), group_offset=0, rollout_steps=(0, 1))
    assert exp is None  # no group has mixed accuracy: nothing to update on yet
    assert any(k.startswith("train/dynamic_sampling/") for k in metrics)
    assert (0, "min") in seen  # the ranks agree on the groups they hold
    assert "old_logps" not in source.timer.pop()  # no pass ran for an empty update
