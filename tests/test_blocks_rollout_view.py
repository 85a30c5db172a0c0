"""NoisyRollout's rollout-side view (papo.blocks.rollout_view_noisy): the annealed noise step, the seeded noisy
copy of a batch, and the merged experience (one group per prompt, clean-image inputs on every row)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from papo.blocks.rollout_view_noisy import NoisyRolloutView, merge_clean_and_noisy
from papo.rollout.experience import Experience


def _exp(prompts: int, per_prompt: int, tag: float, offset: int = 0) -> Experience:
    """Rows tagged by ``tag``: prompt p's rows have group id offset + p and visual tensors filled with tag + p."""
    n = prompts * per_prompt
    rows = torch.arange(prompts).repeat_interleave(per_prompt)
    return Experience(
        prompt_ids=(rows[:, None] + 10).expand(n, 3).clone(),
        prompt_mask=torch.ones(n, 3),
        response_ids=torch.arange(n)[:, None].expand(n, 2).clone() + int(tag) * 100,
        response_mask=torch.ones(n, 2),
        group_ids=rows + offset,
        rewards=torch.full((n,), tag),
        accuracy=torch.full((n,), tag),
        format=torch.ones(n),
        visual=[{"pixel_values": torch.full((1, 2), tag + p)} for p in rows.tolist()],
        task_type=["count"] * n,
        vision_dependency=["high"] * n,
        texts=[f"{tag}-{i}" for i in range(n)],
    )


def test_merge_keeps_groups_contiguous_and_the_clean_image_on_every_row() -> None:
    clean, noisy = _exp(2, 1, 0.0, offset=7), _exp(2, 2, 1.0, offset=7)
    merged = merge_clean_and_noisy(clean, noisy, n_clean=1, n_noisy=2)
    assert merged.group_ids.tolist() == [7, 7, 7, 8, 8, 8]
    # responses (and rewards) come from their own rollout: clean row, then the prompt's two noisy rows
    assert merged.response_ids[:, 0].tolist() == [0, 100, 101, 1, 102, 103]
    assert merged.rewards.tolist() == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    # the image inputs are the clean rollout's (value tag + p = 0 + p) on every row
    assert [float(v["pixel_values"][0, 0]) for v in merged.visual] == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="per prompt"):
        merge_clean_and_noisy(clean, noisy, n_clean=1, n_noisy=3)
    with pytest.raises(ValueError, match="same prompts"):
        merge_clean_and_noisy(clean, _exp(2, 2, 1.0, offset=9), 1, 2)


def test_noise_step_follows_the_released_sigmoid_schedule() -> None:
    view = NoisyRolloutView(initial_step=500, decay="sigmoid", coef=30, mid_step=40)
    # first rollout: released t = 1 of T = 60: int(500 (1 - sigmoid(30 (1/60 - 40/60)))) = int(499.99999...)
    assert view.noise_step(0, 60) == 499
    # halfway point t = 40: 1 - sigmoid(0) = 0.5
    assert view.noise_step(39, 60) == 250
    # last step t = 60: 500 (1 - sigmoid(10)) = 0.0227 -> 0
    assert view.noise_step(59, 60) == int(500 * (1 - 1 / (1 + math.exp(-10)))) == 0
    # a run far shorter than the midpoint (exp(1170) would overflow): the full initial strength
    assert view.noise_step(0, 1) == 500
    # the midpoint as a fraction of the run: halfway at 2/3 of 120 steps too
    assert NoisyRolloutView(initial_step=500, mid_fraction=2 / 3).noise_step(79, 120) == 250


def _batch(n: int) -> dict:
    rng = np.random.default_rng(0)
    images = [[Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))] for _ in range(n)]
    return {
        "uid": [f"train-{i}" for i in range(n)],
        "images": images,
        "prompt": ["q"] * n,
        "answer": ["1"] * n,
    }


def test_distort_is_seeded_by_seed_step_and_uid_and_keeps_the_rest() -> None:
    view, batch = NoisyRolloutView(seed=1), _batch(2)
    a, b = view.distort(batch, 300, step=4), view.distort(batch, 300, step=4)
    assert [im[0].tobytes() for im in a["images"]] == [im[0].tobytes() for im in b["images"]]
    assert a["images"][0][0].tobytes() != batch["images"][0][0].tobytes()  # noised
    assert a["images"][0][0].tobytes() != view.distort(batch, 300, step=5)["images"][0][0].tobytes()
    assert a["uid"] is batch["uid"] and a["prompt"] is batch["prompt"]
    assert batch["images"][0][0].tobytes() == _batch(2)["images"][0][0].tobytes()  # input untouched


def test_rollout_samples_clean_and_noisy_parts_of_each_group() -> None:
    view, batch, calls = NoisyRolloutView(num_noisy=None, initial_step=400, decay="none"), _batch(2), []

    def sample(b: dict, n: int) -> Experience:
        calls.append((b, n))
        return _exp(len(b["uid"]), n, float(len(calls) - 1))

    exp, metrics = view.rollout(sample, batch, group_size=4, step=3, total_steps=10)
    assert [n for _, n in calls] == [2, 2]  # num_noisy null: half of the group
    assert calls[0][0] is batch and calls[1][0]["images"] != batch["images"]
    assert len(exp) == 8 and exp.group_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert metrics == {"noise_step": 400.0, "accuracy_clean": 0.0, "accuracy_noisy": 1.0}
    with pytest.raises(ValueError, match="num_noisy"):
        NoisyRolloutView(num_noisy=4).rollout(sample, batch, group_size=4, step=0, total_steps=10)
