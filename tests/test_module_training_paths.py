"""PapoModule training paths that the loss-matrix and integration tests do not pin down: the ``linear``
coefficient schedule, ``algo.kl_in=reward``, DAPO's overlong reward shaping and dynamic-sampling refill
(and its error after ``max_tries``), Dr. GRPO's constant normaliser, the truncation ``clip_ratio``, the
suppressed ids (padded vocabulary, image placeholder), and how micro-batch metrics are pooled into one value per step.

Training runs are tiny (a few seconds each): 4 prompts x 4 responses of at most 8 tokens, no validation.
"""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import spy_module
from papo.losses.base import MetricPool
from papo.pipeline import train
from papo.rewards import REWARD_FUNCTIONS

FAST = ["logger=csv", "validate_before=false", "validate_after=false"]


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "csv" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _series(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in ("", None)]


def _spy_advantage_inputs(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record, for every rollout batch that reaches the update, the experience and the rewards the
    advantage estimator received."""
    from papo.models import preparation
    from papo.rollout.experience_source import ExperienceSource

    records: list[dict] = []
    original = ExperienceSource.prepare
    estimators = preparation.ADVANTAGE_ESTIMATORS

    def spy_prepare(self, exp, policy, reference):
        rec: dict = {}

        def spy_get(name):
            fn = estimators.get(name)

            def advantage_fn(rewards, group_ids):
                rec["rewards"] = rewards.clone()
                return fn(rewards, group_ids)

            return advantage_fn

        with monkeypatch.context() as m:
            m.setattr(preparation, "ADVANTAGE_ESTIMATORS", SimpleNamespace(get=spy_get))
            out = original(self, exp, policy, reference)
        rec["exp"] = exp
        records.append(rec)
        return out

    monkeypatch.setattr(ExperienceSource, "prepare", spy_prepare)
    return records


@pytest.fixture
def scripted_reward():
    """A reward registered as ``scripted``: accuracy from ``script(call_index)`` (calls are sequential,
    in rollout order: the G responses of a prompt are consecutive)."""
    state = {"calls": 0, "script": lambda i: 0.0}

    def reward(response: str, truth: str, format_weight: float = 0.1, timeout_s: float = 2.0) -> dict:
        acc = float(state["script"](state["calls"]))
        state["calls"] += 1
        return {"overall": acc, "accuracy": acc, "format": 1.0}

    REWARD_FUNCTIONS.register("scripted")(reward)
    yield state
    REWARD_FUNCTIONS.unregister("scripted")


# ---------------------------------------------------------------- metric pooling (unit)
def test_metric_pool_max_min_and_pooled_variance():
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(n, generator=g) + shift for n, shift in ((5, 0.0), (3, 4.0), (1, -2.0))]
    pool = MetricPool()
    for c in chunks:
        m = {
            "kl_token_mean": float(c.mean()),
            "kl_token_max": float(c.max()),
            "ratio_min": float(c.min()),
            "kl_token_var": float(c.var()) if len(c) > 1 else 0.0,  # masked_var: 0 for one token
        }
        pool.add(m, float(len(c)), prefix="train/x/")
    pool.add({"kl_token_max": 99.0, "kl_token_mean": 0.0, "kl_token_var": 0.0}, 0.0, prefix="train/x/")
    out = pool.compute()
    allv = torch.cat(chunks)
    assert out["train/x/kl_token_max"] == pytest.approx(float(allv.max()))  # not an average of maxima
    assert out["train/x/ratio_min"] == pytest.approx(float(allv.min()))
    assert out["train/x/kl_token_mean"] == pytest.approx(float(allv.mean()), rel=1e-6)
    # within- AND between-micro-batch variance (the shifted chunks make the latter dominate)
    assert out["train/x/kl_token_var"] == pytest.approx(float(allv.var()), rel=1e-5)
    only_empty = MetricPool()
    only_empty.add({"ratio_max": 5.0}, 0.0)
    assert only_empty.compute() == {"ratio_max": 0.0}


# ---------------------------------------------------------------- module construction (no training)
def _build(make_cfg, overrides: list[str] | None = None):
    from papo.data.synthetic import synthetic_corpus
    from papo.pipeline import build_module, resolve_model_dir

    cfg = make_cfg(overrides)
    return build_module(cfg, resolve_model_dir(cfg.model, corpus_fn=synthetic_corpus), total_steps=2)


def test_clip_ratio_is_the_fraction_truncated_at_max_new_tokens(make_cfg):
    from papo.models.preparation import rollout_metrics

    module = _build(make_cfg, ["loss=none", "masking=none", "algo.kl_coef=0"])
    tok = module.processor.tokenizer
    # every end token of the model's generation config: <|im_end|> and <|endoftext|>, as Qwen2.5-VL
    assert module.source.generator.eos_ids == tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    eos, eos2 = module.source.generator.eos_ids
    max_new = module.rollout_cfg.max_new_tokens
    other = (eos + 1) % 100

    def metrics(rows: list[list[int]]) -> dict[str, float]:
        T = max(len(r) for r in rows)
        ids = torch.tensor([r + [eos] * (T - len(r)) for r in rows])
        mask = torch.tensor([[1.0] * len(r) + [0.0] * (T - len(r)) for r in rows])
        n = len(rows)
        exp = SimpleNamespace(
            response_ids=ids, response_mask=mask, rewards=torch.zeros(n), accuracy=torch.zeros(n),
            format=torch.zeros(n),
        )  # fmt: skip
        return rollout_metrics(exp, 0, module.source.generator.eos_ids, max_new)

    # three responses of the same length that all ended with EOS: none was cut
    assert metrics([[other, other, eos]] * 3)["train/response/clip_ratio"] == 0.0
    # full length with an end token as the last token (either of them): finished, not cut
    assert metrics([[other] * (max_new - 1) + [eos], [other, eos]])["train/response/clip_ratio"] == 0.0
    assert metrics([[other] * (max_new - 1) + [eos2], [other, eos]])["train/response/clip_ratio"] == 0.0
    # full length without EOS: cut (1 of 2), a shorter unfinished-looking row cannot be cut
    cut = metrics([[other] * max_new, [other, eos]])
    assert cut["train/response/clip_ratio"] == 0.5


def test_suppressed_ids_padded_vocabulary_and_image_placeholder(make_cfg, monkeypatch: pytest.MonkeyPatch):
    """A stand-in for real Qwen2.5-VL, whose output layer has more rows than the tokenizer has ids: the padded
    ids are never sampled (training rollouts and the evaluator) nor scored (training log-probs); the image
    placeholder is never sampled (as the released rollout's logit bias) but is scored; every other id, special
    tokens included, is both sampled and scored (the released runs use the full vocabulary)."""
    from papo.evaluation.evaluator import Evaluator
    from papo.models import papo_module
    from papo.models.loading import load_policy

    def padded_load_policy(*args, **kwargs):
        policy, processor = load_policy(*args, **kwargs)
        policy.resize_token_embeddings(len(processor.tokenizer) + 24)
        return policy, processor

    monkeypatch.setattr(papo_module, "load_policy", padded_load_policy)
    module = _build(make_cfg, ["loss=none", "masking=none", "algo.kl_coef=0"])
    tok = module.processor.tokenizer
    n_tok = len(tok)
    padded = list(range(n_tok, n_tok + 24))
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert module.policy.get_output_embeddings().weight.shape[0] == n_tok + 24
    assert module.source.generator.suppress_ids == sorted([image_pad, *padded])
    assert module.source.suppress_ids.tolist() == padded  # training log-probs
    evaluator = Evaluator(module.policy, module.processor, module.source.reward_fn)
    assert evaluator.generator.suppress_ids == sorted([image_pad, *padded])
    assert evaluator.suppress_ids.tolist() == padded
    assert evaluator.generator.eos_ids == module.source.generator.eos_ids


# ---------------------------------------------------------------- training runs
def test_linear_schedule_scales_gamma_and_both_etas_together(make_cfg, tmp_path: Path):
    # 2 steps, one optimiser step each: progress 0 then 1/2 during the updates; annealing over the whole
    # run -> factors 1 then 1/2
    schedule = ["loss.schedule=linear", "loss.anneal_fraction=1.0"]
    cfg = make_cfg(["loss=papo_d", "algo=grpo", "algo.kl_coef=0", *schedule, *FAST])
    train(cfg)
    rows = _rows(tmp_path)
    assert _series(rows, "train/progress") == pytest.approx([0.5, 1.0])  # logged after the step
    assert _series(rows, "train/perception_kl/gamma") == pytest.approx([0.01, 0.005])
    assert _series(rows, "train/double_entropy/eta_real") == pytest.approx([0.03, 0.015])
    assert _series(rows, "train/double_entropy/eta_masked") == pytest.approx([0.03, 0.015])


def test_kl_in_reward_and_dr_grpo_constant_normaliser(
    make_cfg, monkeypatch: pytest.MonkeyPatch, scripted_reward
):
    """algo.kl_in=reward: no KL loss term, the reference model is loaded, and the advantages see
    reward - beta * sum_t KL_t. Dr. GRPO: every loss term gets norm_len = rollout.max_new_tokens."""
    from papo.algos import kl_estimate
    from papo.losses.policy_gradient import PolicyGradientLoss

    scripted_reward["script"] = lambda i: float(i % 4 == 0)  # mixed groups: the policy moves
    captured = spy_module(monkeypatch)
    records = _spy_advantage_inputs(monkeypatch)
    norm_lens: list = []
    original_call = PolicyGradientLoss.__call__

    def spy_call(self, inputs):
        norm_lens.append(inputs.norm_len)
        return original_call(self, inputs)

    monkeypatch.setattr(PolicyGradientLoss, "__call__", spy_call)
    algo = ["algo=dr_grpo", "algo.kl_coef=0.5", "algo.kl_in=reward", "algo.num_minibatches=2"]
    # 2 optimiser steps per rollout batch: 4 steps = 2 rollout batches
    cfg = make_cfg([*algo, "loss=none", "masking=none", "reward.name=scripted", "trainer.max_steps=4", *FAST])
    train(cfg)
    module = captured["module"]
    assert module.algo.kl_in_reward and module.reference is not None
    assert [c.name for c in module.update.components] == ["pg"]  # no ref_kl term in the loss
    assert norm_lens and set(norm_lens) == {8}
    assert len(records) == 2
    penalties = []
    for rec in records:
        exp = rec["exp"]
        kl = kl_estimate(exp.old_logps, exp.ref_logps, "k3")
        expected = exp.rewards - 0.5 * (kl * exp.response_mask).sum(1)
        torch.testing.assert_close(rec["rewards"], expected)
        penalties.append(float((exp.rewards - rec["rewards"]).abs().max()))
    assert penalties[0] == pytest.approx(0.0, abs=1e-5)  # step 1: policy == reference
    assert penalties[1] > 0.0  # step 2: the policy moved away from the reference


def test_overlong_reward_shaping_in_the_module(make_cfg, monkeypatch: pytest.MonkeyPatch, scripted_reward):
    records = _spy_advantage_inputs(monkeypatch)
    overlong = [
        "algo.overlong.enabled=true",
        "algo.overlong.buffer_length=4",
        "algo.overlong.penalty_factor=0.5",
    ]
    cfg = make_cfg(
        ["algo=grpo", "algo.kl_coef=0", "loss=none", "masking=none", "reward.name=scripted", *overlong, *FAST]
    )
    train(cfg)
    assert records
    lengths_seen = set()
    for rec in records:
        lengths = rec["exp"].response_mask.sum(1)
        lengths_seen |= set(lengths.tolist())
        # raw reward 0; L_max 8, buffer 4: 0 up to 4 tokens, then -0.5 (L - 4) / 4
        expected = -0.5 * ((lengths - 4) / 4).clamp(min=0, max=1)
        torch.testing.assert_close(rec["rewards"], expected.to(rec["rewards"].dtype))
    assert any(n > 4 for n in lengths_seen), f"no response long enough to be penalised: {lengths_seen}"


def test_dynamic_sampling_refills_the_batch(make_cfg, tmp_path: Path, monkeypatch, scripted_reward):
    """First rollout batch: only groups 0 and 1 (of 4) have mixed accuracy -> 2 < 4 kept, sample again;
    second batch: all 4 mixed -> the update gets exactly 4 groups (the 2 kept first, then 2 new)."""
    from papo.models import papo_module

    G = 4
    scripted_reward["script"] = lambda i: float(i % G == 0 and (i < 2 * G or i >= 4 * G))
    updates = []
    original = papo_module.PapoModule._update

    def spy_update(self, exp):
        updates.append(
            (len(exp), exp.accuracy.clone(), exp.group_ids.clone(), len(self.source.dynamic_sampler.buffer))
        )
        return original(self, exp)

    monkeypatch.setattr(papo_module.PapoModule, "_update", spy_update)
    cfg = make_cfg(
        ["algo=dapo", "loss=none", "masking=none", "reward.name=scripted", *FAST, "trainer.max_steps=1"]
    )
    train(cfg)
    assert scripted_reward["calls"] == 2 * 4 * G  # two rollout batches
    assert len(updates) == 1
    n, acc, groups, _ = updates[0]
    assert n == 4 * G
    means = [float(acc[groups == g].mean()) for g in groups.unique()]
    assert len(means) == 4 and all(0.01 < m < 0.99 for m in means)
    assert groups.unique().tolist() == [0, 1, 4, 5]  # the first batch's kept groups, then the new ones
    rows = _rows(tmp_path)
    assert _series(rows, "train/dynamic_sampling/tries") == [2.0]
    assert _series(rows, "train/dynamic_sampling/kept_fraction") == pytest.approx([0.5, 1.0])


def test_dynamic_sampling_gives_up_with_a_clear_error(make_cfg, scripted_reward):
    algo = ["algo=dapo", "algo.dynamic_sampling.max_tries=2"]
    cfg = make_cfg([*algo, "loss=none", "masking=none", "reward.name=scripted", *FAST])
    with pytest.raises(RuntimeError, match=r"only 0/4 groups .* after 2 rollout batches") as err:
        train(cfg)
    assert "algo.dynamic_sampling.max_tries" in str(err.value)
    assert scripted_reward["calls"] == 2 * 4 * 4  # gave up after exactly max_tries rollout batches
