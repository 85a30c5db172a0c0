"""DAPO dynamic-sampling filter and soft overlong penalty."""

import pytest
import torch

from papo.algos import dynamic_sampling_keep, overlong_penalty


def test_dynamic_sampling_keep():
    # group 4: [1, 1] mean 1 -> drop;  group 0: [0, 0] mean 0 -> drop;  group 9: [1, 0, 0] mean 1/3 -> keep
    # group 2: [1, 0] mean 0.5 -> keep
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    ids = torch.tensor([4, 0, 9, 0, 9, 4, 9, 2, 2])
    keep = dynamic_sampling_keep(scores, ids)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [False, False, True, False, True, False, True, True, True]


def test_dynamic_sampling_bounds_are_strict():
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0])
    ids = torch.tensor([0, 0, 1, 1])  # means 0.5 and 1.0
    assert dynamic_sampling_keep(scores, ids, low=0.5, high=1.0).tolist() == [False] * 4
    assert dynamic_sampling_keep(scores, ids, low=0.49, high=1.01).tolist() == [True] * 4
    # near-1 accuracy with many samples: 99/100 correct -> mean 0.99 -> dropped at the default high
    many = torch.cat([torch.ones(99), torch.zeros(1)])
    assert not dynamic_sampling_keep(many, torch.zeros(100, dtype=torch.long)).any()


def test_overlong_penalty():
    lengths = torch.tensor([10, 16, 17, 18, 20, 25])  # max 20, buffer 4 -> penalty starts after 16
    assert overlong_penalty(lengths, 20, 4).tolist() == pytest.approx([0.0, 0.0, -0.25, -0.5, -1.0, -1.0])
    assert overlong_penalty(lengths, 20, 4, penalty_factor=2.0).tolist() == pytest.approx(
        [0.0, 0.0, -0.5, -1.0, -2.0, -2.0]
    )
    assert overlong_penalty(lengths, 20, 0).tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    with pytest.raises(ValueError, match="buffer_length"):
        overlong_penalty(lengths, 20, 21)
