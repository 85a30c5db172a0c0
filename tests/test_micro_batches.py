"""Micro-batch planning (papo.rollout.micro_batches) and the module's use of it: the token-budget split by hand,
the same optimiser step as the fixed-size split for the split-independent normalisers, the same no-grad
log-probs in the rows' own order, and the config error under a per-micro-batch normaliser."""

from __future__ import annotations

import pytest
import torch

from papo.config_validation import ConfigError, validate_config
from papo.pipeline import train
from papo.rewards import REWARD_FUNCTIONS
from papo.rollout.micro_batches import (
    fixed_size_split,
    padded_tokens,
    plan_micro_batches,
    split_to_count,
    token_budget_split,
)

PROMPTS = [10, 12, 10, 30, 11, 10]
RESPONSES = [5, 2, 20, 4, 1, 7]  # totals 15 14 30 34 12 17


def test_fixed_size_split_keeps_the_order() -> None:
    assert fixed_size_split(5, 2) == [[0, 1], [2, 3], [4]]
    assert plan_micro_batches(PROMPTS, RESPONSES, max_rows=4) == [[0, 1, 2, 3], [4, 5]]
    with pytest.raises(ValueError, match="rows_per_micro_batch=0"):
        fixed_size_split(3, 0)


def test_token_budget_split_by_hand() -> None:
    # longest first: 3 (30+4), 2 (10+20), 5, 0, 1, 4. Padded size = rows x (longest prompt + longest response)
    # [3]: 34; + row 2 -> 2 x (30 + 20) = 100 > 60: new batch. [2, 5]: 2 x (10+20) = 60; + row 0 -> 90 > 60.
    # [0, 1]: 2 x (12 + 5) = 34; + row 4 -> 3 x 17 = 51; 4 rows would need more rows: none left.
    plan = token_budget_split(PROMPTS, RESPONSES, max_tokens=60)
    assert plan == [[3], [2, 5], [0, 1, 4]]
    assert sorted(i for mb in plan for i in mb) == list(range(6))
    assert [padded_tokens(PROMPTS, RESPONSES, mb) for mb in plan] == [34, 60, 51]
    # a row longer than the budget on its own still gets a micro-batch; max_rows caps the rows
    assert token_budget_split(PROMPTS, RESPONSES, max_tokens=20)[0] == [3]
    assert token_budget_split(PROMPTS, RESPONSES, max_tokens=10_000, max_rows=4) == [[3, 2, 5, 0], [1, 4]]
    assert plan_micro_batches(PROMPTS, RESPONSES, max_rows=2, max_tokens=10_000) == [[3, 2], [5, 0], [1, 4]]


def test_split_to_count_halves_the_largest_micro_batches() -> None:
    plan = [[3], [2, 5], [0, 1, 4]]  # padded sizes 34, 60, 51
    assert split_to_count(plan, PROMPTS, RESPONSES, 3) == plan
    assert split_to_count(plan, PROMPTS, RESPONSES, 4) == [[3], [2], [5], [0, 1, 4]]
    # then [0, 1, 4] (51) is the largest: halves [0, 1] and [4]
    assert split_to_count(plan, PROMPTS, RESPONSES, 5) == [[3], [2], [5], [0, 1], [4]]
    assert len(split_to_count(plan, PROMPTS, RESPONSES, 6)) == 6
    with pytest.raises(ValueError, match="cannot split 6 rows into 7"):
        split_to_count(plan, PROMPTS, RESPONSES, 7)


def test_ranks_split_to_the_largest_count(make_cfg, monkeypatch, mixed_reward) -> None:
    """Under data parallelism every rank runs as many micro-batches as the rank that needs the most."""
    from papo.data.synthetic import synthetic_corpus
    from papo.pipeline import build_module, resolve_model_dir
    from test_rollout_generation import _batch, _reward

    cfg = make_cfg([*RUN, "algo.micro_batch_tokens=100000", "algo.micro_batch_size=64"])
    module = build_module(cfg, resolve_model_dir(cfg.model, corpus_fn=synthetic_corpus), total_steps=1)
    exp, _ = module.source.generator.rollout(
        module.policy, _batch(3), module.source.generation_config(), _reward
    )
    assert len(module.source.micro_batches(exp)) == 1
    seen: list = []
    monkeypatch.setattr(module, "_world_size", lambda: 2)
    monkeypatch.setattr(module, "_reduce", lambda v, op: seen.append((v, op)) or 5)
    plan = module.source.micro_batches(exp)
    assert seen == [(1, "max")] and len(plan) == 5
    assert sorted(i for mb in plan for i in mb) == list(range(len(exp)))


# ---------------------------------------------------------------- the module's update
@pytest.fixture
def mixed_reward():
    """A reward registered as ``by_length``: 1 for responses of an even character count, so groups are mixed
    and the advantages (hence the gradients) are not zero; the same responses get the same rewards."""

    def reward(response: str, truth: str, format_weight: float = 0.1, timeout_s: float = 2.0) -> dict:
        acc = float(len(response) % 2 == 0)
        return {"overall": acc, "accuracy": acc, "format": 1.0}

    REWARD_FUNCTIONS.register("by_length")(reward)
    yield
    REWARD_FUNCTIONS.unregister("by_length")


RUN = [
    "reward.name=by_length",
    "algo=grpo",
    "algo.kl_coef=0",
    "loss=none",
    "masking=none",
    "warm_start.enabled=false",
    "logger=none",
    "validate_before=false",
    "validate_after=false",
    "trainer.max_steps=1",
    "optim.lr=1e-3",
    "optim.warmup_steps=0",
    "algo.micro_batch_size=4",
]


def _one_step(make_cfg, monkeypatch, overrides: list[str]) -> tuple[dict[str, torch.Tensor], list, dict]:
    """Train one optimiser step; returns (weights after it, the micro-batch plans, the initial weights)."""
    from papo.models import papo_module
    from papo.rollout.experience_source import ExperienceSource

    captured: dict = {}
    plans: list = []
    init = papo_module.PapoModule.__init__
    plan = ExperienceSource.micro_batches

    def spy_init(self, *a, **k):
        init(self, *a, **k)
        captured["module"] = self
        captured["start"] = {n: p.detach().clone() for n, p in self.policy.named_parameters()}

    def spy_plan(self, exp):
        out = plan(self, exp)
        plans.append(out)
        return out

    monkeypatch.setattr(papo_module.PapoModule, "__init__", spy_init)
    monkeypatch.setattr(ExperienceSource, "micro_batches", spy_plan)
    train(make_cfg(RUN + overrides))
    policy = captured["module"].policy
    weights = {n: p.detach().clone() for n, p in policy.named_parameters()}
    return weights, list(plans), captured["start"]


@pytest.mark.slow
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_token_budget_update_equals_the_fixed_size_split(
    make_cfg, monkeypatch, mixed_reward, agg: str
) -> None:
    """The same rollout (same seed) updated with 4 rows at a time in order, and with rows packed by a token
    budget: different micro-batches, the same weights after the AdamW step."""
    fixed, fixed_plans, start = _one_step(make_cfg, monkeypatch, [f"algo.agg_mode={agg}"])
    budget, budget_plans, _ = _one_step(
        make_cfg, monkeypatch, [f"algo.agg_mode={agg}", "algo.micro_batch_tokens=300"]
    )
    assert fixed_plans[-1] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert budget_plans[-1] != fixed_plans[-1]  # the budget really split differently
    assert 1 < len(budget_plans[-1]) < 16
    moved = max(float((fixed[n] - start[n]).abs().max()) for n in fixed)
    assert moved > 1e-4  # the step changed the weights (lr 1e-3)
    for n in fixed:
        # AdamW's first step is lr * g / (|g| + eps): float noise in a near-zero gradient moves a weight by a
        # small fraction of lr; a wrong normalisation moves many weights by ~lr
        torch.testing.assert_close(budget[n], fixed[n], atol=1e-2 * 1e-3, rtol=0, msg=n)


def test_nograd_logps_come_back_in_the_rows_order(make_cfg, mixed_reward) -> None:
    """ExperienceSource.logps_nograd under a token budget (rows reordered, several micro-batches) equals one pass over all
    rows in order."""
    from papo.data.synthetic import synthetic_corpus
    from papo.pipeline import build_module, resolve_model_dir
    from test_rollout_generation import _batch, _reward

    cfg = make_cfg([*RUN, "algo.micro_batch_tokens=250", "algo.micro_batch_size=64"])
    module = build_module(cfg, resolve_model_dir(cfg.model, corpus_fn=synthetic_corpus), total_steps=1)
    torch.manual_seed(0)
    exp, _ = module.source.generator.rollout(
        module.policy, _batch(3), module.source.generation_config(), _reward
    )
    T = exp.response_ids.shape[1]
    keep = torch.tensor([(3 * i) % T + 1 for i in range(len(exp))])  # varied response lengths
    exp.response_mask = (torch.arange(T)[None, :] < keep[:, None]).float()
    exp.response_ids = exp.response_ids.masked_fill(exp.response_mask == 0, module.source.generator.pad_id)
    plan = module.source.micro_batches(exp)
    assert len(plan) > 1 and [i for mb in plan for i in mb] != list(range(len(exp)))
    budget = module.source.logps_nograd(module.policy, exp)
    module.update.algo = module.algo.model_copy(
        update={"micro_batch_tokens": None, "micro_batch_size": len(exp)}
    )
    whole = module.source.logps_nograd(module.policy, exp)
    assert budget.shape == exp.response_ids.shape
    torch.testing.assert_close(budget, whole, atol=1e-5, rtol=1e-5)
    assert float(whole.abs().sum()) > 0


def test_token_budget_is_refused_under_a_per_micro_batch_normaliser(make_cfg) -> None:
    cfg = make_cfg(["algo.micro_batch_tokens=4096", "++algo.loss_normalizer=micro_batch_mean"])
    with pytest.raises(ConfigError, match=r"algo.micro_batch_tokens=4096 with algo.loss_normalizer"):
        validate_config(cfg)
    with pytest.raises(ConfigError, match=r"algo.micro_batch_tokens=0 must be an integer >= 1 or null"):
        validate_config(make_cfg(["algo.micro_batch_tokens=0"]))
    validate_config(make_cfg(["algo.micro_batch_tokens=4096"]))  # today's global token count: allowed
