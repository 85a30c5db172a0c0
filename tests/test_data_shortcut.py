"""The shortcut testbed (papo.data.shortcut): determinism, the shortcut rate, labels, answers that match the
pixels, balance, validation, and the data=shortcut config feeding the datamodule."""

from __future__ import annotations

from collections import Counter

import hydra
import numpy as np
import pytest
from omegaconf import open_dict

from papo.data.shortcut import WORDINGS, build_shortcut_split, generate_shortcut_example
from papo.data.synthetic import DEFAULT_COLORS, SyntheticTaskConfig

ALL_TASKS = {"count": 1.0, "color": 1.0, "shape": 1.0}
PRIOR = {q: a for wordings in WORDINGS.values() for q, a in wordings}


def test_same_seed_same_rows_and_a_longer_split_extends_it() -> None:
    a = build_shortcut_split("train", 30, seed=5)
    b = build_shortcut_split("train", 50, seed=5)
    for key in ("problem", "answer", "shortcut", "uid"):
        assert a[key] == b[key][:30]
    assert a["problem"] != build_shortcut_split("val", 30, seed=5)["problem"]


@pytest.mark.parametrize(("rate", "expected"), [(1.0, {"consistent"}), (0.0, {"breaking"})])
def test_rate_one_and_zero_are_all_consistent_or_all_breaking(rate: float, expected: set[str]) -> None:
    ds = build_shortcut_split("train", 60, seed=0, shortcut_rate=rate, task_weights=ALL_TASKS)
    assert set(ds["shortcut"]) == expected


def test_labels_follow_the_wordings_prior_and_set_vision_dependency() -> None:
    ds = build_shortcut_split("val", 300, seed=1, shortcut_rate=0.5, task_weights=ALL_TASKS)
    for problem, answer, label, vd in zip(
        ds["problem"], ds["answer"], ds["shortcut"], ds["vision_dependency"], strict=True
    ):
        assert label == ("consistent" if PRIOR[problem] == answer else "breaking")
        assert vd == {"consistent": "low", "breaking": "high"}[label]
    assert 0.4 < Counter(ds["shortcut"])["consistent"] / 300 < 0.6


def test_no_shortcut_draws_the_wording_independently() -> None:
    ds = build_shortcut_split("train", 800, seed=2, shortcut_rate=None, task_weights={"count": 1.0})
    assert 0.18 < Counter(ds["shortcut"])["consistent"] / 800 < 0.32  # chance: 1 wording in 4
    trained = build_shortcut_split("train", 800, seed=2, shortcut_rate=0.9, task_weights={"count": 1.0})
    assert Counter(trained["shortcut"])["consistent"] / 800 > 0.85


def test_answers_are_balanced_despite_the_shortcut() -> None:
    ds = build_shortcut_split("train", 800, seed=3, shortcut_rate=0.9, task_weights={"count": 1.0})
    shares = [n / 800 for n in Counter(ds["answer"]).values()]
    assert len(shares) == 4 and min(shares) > 0.18 and max(shares) < 0.32


def test_answers_match_the_pixels() -> None:
    cfg = SyntheticTaskConfig(image_size=56, max_objects=4)
    weights = {"count": 1.0, "color": 1.0, "shape": 1.0}
    background = np.array((200, 200, 200))
    for i in range(60):
        ex = generate_shortcut_example(np.random.default_rng([0, i]), cfg, weights, 0.5)
        pixels = np.asarray(ex["image"]).reshape(-1, 3)
        ink = pixels[(pixels != background).any(1)]
        if ex["task_type"] == "count":
            occupied = {
                (r, c)
                for r in range(2)
                for c in range(2)
                if (np.asarray(ex["image"])[28 * r : 28 * r + 28, 28 * c : 28 * c + 28] != background).any()
            }
            assert len(occupied) == int(ex["answer"])
        elif ex["task_type"] == "color":
            assert {tuple(p) for p in ink} == {DEFAULT_COLORS[ex["answer"]]}
        else:
            assert {o["shape"] for o in ex["objects"]} == {ex["answer"]}


def test_bad_arguments_name_the_key() -> None:
    with pytest.raises(ValueError, match="shortcut_rate"):
        build_shortcut_split("train", 4, shortcut_rate=1.5)
    with pytest.raises(ValueError, match=r"Valid names: \['count', 'color', 'shape'\]"):
        build_shortcut_split("train", 4, task_weights={"spatial": 1.0})
    with pytest.raises(ValueError, match="max_objects=4"):
        build_shortcut_split("train", 4, max_objects=3)


def test_data_shortcut_config_feeds_the_datamodule() -> None:
    from conftest import compose_cfg

    cfg = compose_cfg(
        [
            "data=shortcut",
            "data.train_dataset.size=8",
            "data.batch_size=4",
            "data.val_dataset.size=6",
            "data.val_batch_size=6",
        ]
    )
    with open_dict(cfg):
        cfg.data.masking = None
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert len(batch["prompt"]) == 6 and set(batch["vision_dependency"]) <= {"low", "high"}
    assert set(dm.val_set["shortcut"]) <= {"consistent", "breaking"}
    assert cfg.data.train_dataset.shortcut_rate == 0.9 and cfg.data.val_dataset.shortcut_rate == 0.5
