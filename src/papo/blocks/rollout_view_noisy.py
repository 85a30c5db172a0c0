"""NoisyRollout's rollout-side view (``configs/rollout_view/noisy.yaml``; Liu et al., arXiv 2504.13055).

Each prompt's group of G responses mixes ``G - num_noisy`` responses sampled from the clean image and
``num_noisy`` sampled from a distorted copy (Gaussian noise of a diffusion forward process at a noise step
annealed over training: :func:`papo.algos.image_distortion.annealed_noise_step`, the image side
:func:`papo.data.distortion.diffusion_noise_image`). All G rows share the prompt's group id, hence one reward
baseline, and every row carries the CLEAN image's inputs, so the old log-probs and the policy update condition
on the clean image only (the released trainer repeats the clean batch for the update: the noisy responses'
ratio is pi_theta(o | I) / pi_old(o | I), without a correction for having been sampled from I').

Differences from the released code (docs/methods.md): the noise is drawn from a generator seeded by
(``seed``, step, the prompt's uid) instead of torch's global one; the image is the one the datamodule hands
over (the raw image, or the resized one when ``data.resize_min_pixels`` / ``resize_max_pixels`` are set, as
the published runs resize before noising); the released step count starts at 1 at the first update, here
``step`` is the number of optimiser steps done before the rollout, plus 1.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch

from papo.algos.image_distortion import DECAY_MODES, NUM_NOISE_STEPS, annealed_noise_step
from papo.blocks.base import RolloutView, SampleFn
from papo.data.distortion import diffusion_noise_image
from papo.rollout.experience import Experience

__all__ = ["NoisyRolloutView", "merge_clean_and_noisy"]


def merge_clean_and_noisy(clean: Experience, noisy: Experience, n_clean: int, n_noisy: int) -> Experience:
    """One experience with ``n_clean + n_noisy`` consecutive rows per prompt (clean first), every row with the
    clean rows' image inputs and the group id of its prompt.

    Args:
        clean: ``n_clean`` rows per prompt (consecutive), sampled from the clean image; ``n_clean >= 1``.
        noisy: ``n_noisy`` rows per prompt, sampled from the distorted image, same prompts in the same order.
    """
    B = len(clean) // n_clean
    if n_clean < 1 or len(clean) != B * n_clean or len(noisy) != B * n_noisy:
        raise ValueError(
            f"expected {n_clean} clean and {n_noisy} noisy rows per prompt, got {len(clean)} and {len(noisy)} rows"
        )
    both = Experience.cat([clean, noisy])
    order, source = [], []  # row of `both` at each merged position; the clean row whose inputs it takes
    for p in range(B):
        first_clean = p * n_clean
        order += [first_clean + j for j in range(n_clean)]
        order += [len(clean) + p * n_noisy + j for j in range(n_noisy)]
        source += [first_clean + j for j in range(n_clean)] + [first_clean] * n_noisy
    merged = both.select(order)
    src = torch.as_tensor(source, dtype=torch.long)
    if not torch.equal(both.group_ids[order], both.group_ids[src]):
        raise ValueError(
            "the clean and the noisy rollouts must come from the same prompts with the same group ids"
        )
    # the update and the old log-probs see the clean image: its prompt tokens, visual inputs and masked view
    merged.prompt_ids, merged.prompt_mask = both.prompt_ids[src], both.prompt_mask[src]
    merged.extra = {k: v[src] for k, v in both.extra.items()}
    merged.visual = [both.visual[i] for i in source]
    if both.visual_masked is not None:
        merged.visual_masked = [both.visual_masked[i] for i in source]
    return merged


class NoisyRolloutView(RolloutView):
    """G - ``num_noisy`` clean and ``num_noisy`` noisy responses per prompt, one group (module doc)."""

    name = "rollout_view"

    def __init__(
        self,
        num_noisy: int | None = None,
        initial_step: int = 500,
        decay: str = "sigmoid",
        coef: float = 30.0,
        mid_step: float = 40.0,
        seed: int = 0,
        mid_fraction: float | None = None,
    ) -> None:
        if num_noisy is not None and int(num_noisy) < 1:
            raise ValueError(f"rollout_view.num_noisy={num_noisy} must be >= 1 (or null: half of the group)")
        if not 0 <= int(initial_step) < NUM_NOISE_STEPS:
            raise ValueError(
                f"rollout_view.initial_step={initial_step} must be in [0, {NUM_NOISE_STEPS - 1}]"
            )
        if decay not in DECAY_MODES:
            raise ValueError(f"rollout_view.decay={decay!r} is unknown; valid: {list(DECAY_MODES)}")
        self.num_noisy = None if num_noisy is None else int(num_noisy)  # None: half of the group
        self.initial_step, self.decay = int(initial_step), decay
        if mid_fraction is not None and not 0.0 <= float(mid_fraction) <= 1.0:
            raise ValueError(
                f"rollout_view.mid_fraction={mid_fraction} must be in [0, 1] (or null: mid_step)"
            )
        self.coef, self.mid_step, self.seed = float(coef), float(mid_step), int(seed)
        # the sigmoid's midpoint as a fraction of the run's rollout steps (None: mid_step steps)
        self.mid_fraction = None if mid_fraction is None else float(mid_fraction)

    def noisy_count(self, group_size: int) -> int:
        """Noisy responses per group of ``group_size``: ``num_noisy``, or half the group (rounded down)."""
        n = int(group_size) // 2 if self.num_noisy is None else self.num_noisy
        if not 1 <= n < int(group_size):
            raise ValueError(
                f"rollout_view.num_noisy={n} must be in [1, algo.group_size - 1] (algo.group_size={group_size}): "
                "at least one clean response per group carries the clean image into the update"
            )
        return n

    def noise_step(self, step: int, total_steps: int) -> int:
        """The diffusion noise step of the rollout after ``step`` optimiser steps (released count: step + 1)."""
        total = max(int(total_steps), 1)
        mid = self.mid_step if self.mid_fraction is None else self.mid_fraction * total
        return annealed_noise_step(step + 1, total, self.initial_step, self.decay, self.coef, mid)

    def distort(self, batch: dict[str, Any], noise_step: int, step: int) -> dict[str, Any]:
        """A copy of the data batch whose images are noised at ``noise_step`` (seeded by seed, step, uid)."""
        noisy = []
        for uid, images in zip(batch["uid"], batch["images"], strict=True):
            rng = np.random.default_rng([self.seed, int(step), zlib.crc32(str(uid).encode())])
            noisy.append([diffusion_noise_image(im, noise_step, rng) for im in images])
        return {**batch, "images": noisy}

    def rollout(
        self, sample: SampleFn, batch: dict[str, Any], group_size: int, step: int, total_steps: int
    ) -> tuple[Experience, dict[str, float]]:
        n_noisy = self.noisy_count(group_size)
        n_clean = int(group_size) - n_noisy
        s = self.noise_step(step, total_steps)
        clean = sample(batch, n_clean)
        noisy = sample(self.distort(batch, s, step), n_noisy)
        metrics = {
            "noise_step": float(s),
            "accuracy_clean": float(clean.accuracy.mean()),
            "accuracy_noisy": float(noisy.accuracy.mean()),
        }
        return merge_clean_and_noisy(clean, noisy, n_clean, n_noisy), metrics

    def __repr__(self) -> str:
        return (
            f"NoisyRolloutView(num_noisy={self.num_noisy}, initial_step={self.initial_step}, decay={self.decay!r}, "
            f"coef={self.coef}, mid_step={self.mid_step})"
        )
