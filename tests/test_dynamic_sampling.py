"""DAPO's dynamic-sampling state machine (papo.rollout.dynamic_sampling.DynamicSampler), without Lightning:
refill across rounds, the released trainer's "keep the whole round when no group passes" fallback (decided
over all ranks), the kept count reduced with min over ranks, the error after max_tries, and a checkpoint
round trip that continues exactly as an uninterrupted run. One module-level run checks the fallback end to
end (``algo.dynamic_sampling.keep_all_when_none_pass=true``)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from papo.rollout.dynamic_sampling import DynamicSampler
from papo.rollout.experience import Experience

G = 2


def _round(accuracies: list[list[float]], first_group: int) -> Experience:
    """One generation round: a group of G rows per entry of ``accuracies`` (group ids from ``first_group``)."""
    acc = torch.tensor([a for group in accuracies for a in group])
    n = len(acc)
    groups = torch.arange(first_group, first_group + len(accuracies)).repeat_interleave(G)
    return Experience(
        prompt_ids=torch.arange(n)[:, None].repeat(1, 2),
        prompt_mask=torch.ones(n, 2),
        response_ids=torch.arange(n)[:, None] + 100,
        response_mask=torch.ones(n, 1),
        group_ids=groups,
        rewards=acc.clone(),
        accuracy=acc,
        format=torch.ones(n),
        visual=[None] * n,
        task_type=["t"] * n,
        vision_dependency=["high"] * n,
        texts=[""] * n,
    )


MIXED, RIGHT, WRONG = [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]


def test_refills_across_rounds_and_keeps_the_earliest_groups() -> None:
    ds = DynamicSampler(G, max_tries=5)
    batch, m = ds.add(_round([MIXED, RIGHT, MIXED, WRONG], 0), need=3)
    assert batch is None and m == {"kept_fraction": 0.5, "kept_whole": 0.0} and ds.tries == 1
    batch, m = ds.add(_round([RIGHT, MIXED, MIXED, MIXED], 4), need=3)
    assert m["tries"] == 2.0 and m["kept_fraction"] == 0.75
    assert batch is not None and batch.group_ids.unique().tolist() == [0, 2, 5]  # surplus (6, 7) dropped
    assert len(batch) == 3 * G and ds.buffer == [] and ds.tries == 0


def test_a_round_where_no_group_passes_is_kept_whole_with_the_fallback() -> None:
    ds = DynamicSampler(G, keep_all_when_none_pass=True)
    batch, m = ds.add(_round([RIGHT, WRONG, RIGHT], 0), need=3)
    assert m == {"kept_fraction": 0.0, "kept_whole": 1.0, "tries": 1.0}
    assert batch is not None and batch.group_ids.unique().tolist() == [0, 1, 2]
    # a round with at least one passing group is filtered as usual
    batch, m = ds.add(_round([RIGHT, MIXED, RIGHT], 3), need=3)
    assert batch is None and m["kept_whole"] == 0.0 and [len(e) for e in ds.buffer] == [G]


def test_without_the_fallback_it_gives_up_after_max_tries() -> None:
    ds = DynamicSampler(G, max_tries=2)
    assert ds.add(_round([RIGHT, WRONG], 0), need=2)[0] is None
    with pytest.raises(RuntimeError, match=r"only 0/2 groups .* after 2 rollout batches") as err:
        ds.add(_round([RIGHT, WRONG], 2), need=2)
    assert "algo.dynamic_sampling.max_tries" in str(err.value) and "keep_all_when_none_pass" in str(err.value)


def test_ranks_decide_together() -> None:
    calls: list[tuple[int, str]] = []

    def other_rank_passed(value: int, op: str) -> int:
        """This rank's value against a second rank that kept one group and had a passing group."""
        calls.append((value, op))
        return min(value, 1) if op == "min" else max(value, 1)

    ds = DynamicSampler(G, keep_all_when_none_pass=True)
    # nothing passes HERE, but the other rank had a passing group: the round is not kept whole
    batch, m = ds.add(_round([RIGHT, WRONG], 0), need=1, all_reduce=other_rank_passed)
    assert m["kept_whole"] == 0.0 and calls[0] == (0, "max")
    assert batch is None and calls[1] == (0, "min")
    # this rank has 2 groups now, the other only 1: the minimum decides, so a 2-group batch must wait
    ds.add(_round([MIXED, MIXED], 2), need=2, all_reduce=other_rank_passed)
    assert calls[-1] == (2, "min") and len(ds.buffer) == 2


def test_state_dict_round_trip_continues_identically(tmp_path: Path) -> None:
    rounds = [_round([MIXED, RIGHT, WRONG], 0), _round([WRONG, MIXED, MIXED], 3)]
    a = DynamicSampler(G, max_tries=4)
    assert a.add(rounds[0], need=3)[0] is None
    torch.save({"papo": a.state_dict()}, tmp_path / "c.ckpt")
    b = DynamicSampler(G, max_tries=4)
    b.load_state_dict(torch.load(tmp_path / "c.ckpt", weights_only=True)["papo"])
    assert b.tries == 1 and len(b.buffer) == 1
    (batch_a, m_a), (batch_b, m_b) = a.add(rounds[1], need=3), b.add(rounds[1], need=3)
    assert m_a == m_b and m_a["tries"] == 2.0
    for name in ("group_ids", "response_ids", "prompt_ids", "accuracy"):
        assert torch.equal(getattr(batch_a, name), getattr(batch_b, name)), name


@pytest.mark.slow
def test_module_keeps_an_all_wrong_round_whole(make_cfg, tmp_path: Path) -> None:
    """A policy that never solves a prompt: with the fallback the first round is the update batch (its
    groups have zero advantage); without it the run would stop after max_tries (tested above)."""
    from papo.pipeline import train
    from papo.rewards import REWARD_FUNCTIONS

    REWARD_FUNCTIONS.register("always_wrong")(
        lambda response, truth, format_weight=0.1, timeout_s=2.0: {
            "overall": 0.0,
            "accuracy": 0.0,
            "format": 0.0,
        }
    )
    try:
        fast = ["logger=csv", "validate_before=false", "validate_after=false", "trainer.max_steps=1"]
        ds = ["algo.dynamic_sampling.keep_all_when_none_pass=true", "algo.dynamic_sampling.max_tries=1"]
        train(make_cfg(["algo=dapo", "loss=none", "masking=none", "reward.name=always_wrong", *ds, *fast]))
    finally:
        REWARD_FUNCTIONS.unregister("always_wrong")
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/dynamic_sampling/tries")]
    assert len(rows) == 1
    assert float(rows[0]["train/dynamic_sampling/tries"]) == 1.0
    assert float(rows[0]["train/dynamic_sampling/kept_whole"]) == 1.0
    assert float(rows[0]["train/dynamic_sampling/kept_fraction"]) == 0.0
