"""``algo.loss_normalizer``: the released actor's per-micro-batch mean (each term's masked mean over its
micro-batch, the micro-batch loss divided by the number of gradient-accumulation micro-batches) and the
global token mean (one mean over all tokens of the mini-batch, all micro-batches and ranks), checked against
hand-computed values (papo.algos.micro_batch_normalization)."""

from __future__ import annotations

import pytest
import torch

from papo.algos import LOSS_NORMALIZERS, aggregate_loss, micro_batch_normalization

# one mini-batch, split into two micro-batches of one sequence each (per-token losses, response mask)
MICRO = [
    (torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 1.0, 1.0]])),  # 3 tokens, mean 2
    (torch.tensor([[6.0, 9.0, 9.0]]), torch.tensor([[1.0, 0.0, 0.0]])),  # 1 token, mean 6 (9s are padding)
]


def _mini_batch_loss(normalizer: str, agg: str, micro=MICRO, tokens_per_rank: float | None = 4.0) -> float:
    """What PapoModule._update backpropagates over the mini-batch: sum over micro-batches of scale * term."""
    total = 0.0
    for loss_mat, mask in micro:
        num_tokens, scale = micro_batch_normalization(
            normalizer,
            agg,
            micro_rows=1,
            mini_rows=len(micro),
            num_micro=len(micro),
            tokens_per_rank=tokens_per_rank,
        )
        total += scale * float(aggregate_loss(loss_mat, mask, agg, num_tokens=num_tokens))
    return total


def test_micro_batch_mean_is_the_released_actors_normaliser() -> None:
    # (mean 2 + mean 6) / 2 micro-batches = 4: the lone token of the second micro-batch weighs 3x the others
    assert _mini_batch_loss("micro_batch_mean", "token-mean") == pytest.approx(4.0)
    assert micro_batch_normalization(
        "micro_batch_mean", "token-mean", micro_rows=4, mini_rows=8, num_micro=3
    ) == (
        None,
        pytest.approx(1 / 3),
    )


def test_global_token_mean_weighs_every_token_alike() -> None:
    # (1 + 2 + 3 + 6) / 4 tokens = 3
    assert _mini_batch_loss("global_token_mean", "token-mean") == pytest.approx(3.0)
    # two ranks, one micro-batch each: each divides by (4 global tokens / 2 ranks); DDP averages the ranks
    per_rank = [_mini_batch_loss("global_token_mean", "token-mean", [m], tokens_per_rank=2.0) for m in MICRO]
    assert per_rank == [pytest.approx(3.0), pytest.approx(3.0)] and sum(per_rank) / 2 == pytest.approx(3.0)


def test_sequence_mean_aggregations_weight_micro_batches_by_their_sequences() -> None:
    # seq-mean-token-mean: (2 + 6) / 2 sequences = 4 under both normalisers (equal-size micro-batches)
    for normalizer in LOSS_NORMALIZERS:
        assert _mini_batch_loss(normalizer, "seq-mean-token-mean") == pytest.approx(4.0), normalizer
    assert micro_batch_normalization(
        "global_token_mean", "seq-mean-token-mean", micro_rows=3, mini_rows=4, num_micro=2
    ) == (None, 0.75)


def test_the_two_coincide_when_micro_batches_hold_equal_token_counts() -> None:
    equal = [(torch.tensor([[1.0, 2.0]]), torch.ones(1, 2)), (torch.tensor([[5.0, 8.0]]), torch.ones(1, 2))]
    released = _mini_batch_loss("micro_batch_mean", "token-mean", equal)
    assert released == pytest.approx(_mini_batch_loss("global_token_mean", "token-mean", equal)) == 4.0


def test_unknown_normalizer_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"algo.loss_normalizer='mean'.*micro_batch_mean.*global_token_mean"):
        micro_batch_normalization("mean", "token-mean", micro_rows=1, mini_rows=1, num_micro=1)


def test_config_key_is_validated_and_published_experiments_use_the_released_form() -> None:
    from conftest import compose_cfg
    from papo.config_validation import ConfigError, validate_config

    assert compose_cfg([]).algo.loss_normalizer == "global_token_mean"  # the embedded default
    for name in ("grpo_3b", "papo_g_7b", "papo_d_3b", "papo_g_nokl_3b"):
        cfg = compose_cfg([f"experiment={name}"])
        assert cfg.algo.loss_normalizer == "micro_batch_mean" and cfg.algo.micro_batch_size == 4, name
    with pytest.raises(ConfigError, match=r"algo\.loss_normalizer='tokens' is unknown"):
        validate_config(compose_cfg(["algo.loss_normalizer=tokens"]))
