"""NoisyRollout's image distortion as pure maths: the annealed strength schedule and the Gaussian noise.

NoisyRollout (Liu et al., arXiv 2504.13055, NeurIPS 2025; released code ``verl/utils/image_aug.py``) distorts
each training image with the forward process of a diffusion model and anneals the strength over training.

Strength schedule (:func:`annealed_noise_step`). At training step t of T, with initial strength alpha_0
(``gaussian_noise_step``, published 450 or 500) the noise step is ``int(alpha_0 * decay(t))``, truncated
toward zero as the released code does, with

* ``none``:    decay = 1
* ``linear``:  decay = 1 - t / T
* ``pow``:     decay = 1 - (t / T) ** c
* ``exp``:     decay = 1 - c ** (T - t)
* ``sigmoid``: decay = 1 - sigmoid(c (t / T - t_mid / T))   (published: c = 30 or 60, t_mid = 40 steps)

t counts from 1 at the first optimiser step in the released trainer (``global_step``), T is the run's
total number of steps.

Noise (:func:`diffusion_noise`). With the DDPM-style table of 1,000 steps
beta_s = sigmoid(linspace(-6, 6, 1000))_s (5e-3 - 1e-5) + 1e-5, alpha_bar_s = prod_{r <= s} (1 - beta_r),
an image x_0 with values in [0, 1] becomes

    x = clamp(sqrt(alpha_bar_s) x_0 + sqrt(1 - alpha_bar_s) eps, 0, 1),   eps ~ N(0, I)

at noise step s in [0, 999]. The released code then converts back to 8-bit with torchvision's
``ToPILImage`` (value * 255, truncated); :func:`papo.data.distortion.diffusion_noise_image` does the same on
PIL images with a seeded generator. Even s = 0 adds a little noise (sqrt(1 - alpha_bar_0) ~ 0.0047).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

__all__ = [
    "DECAY_MODES",
    "NUM_NOISE_STEPS",
    "annealed_noise_step",
    "diffusion_alpha_bars",
    "diffusion_noise",
    "noise_decay",
]

DECAY_MODES: tuple[str, ...] = ("none", "linear", "pow", "exp", "sigmoid")
NUM_NOISE_STEPS = 1000


def noise_decay(
    step: int, total_steps: int, mode: str = "sigmoid", coef: float = 30.0, mid_step: float = 40.0
) -> float:
    """The factor in [0, 1] that multiplies the initial strength at ``step`` of ``total_steps`` (module doc).

    Raises:
        ValueError: unknown ``mode`` (names the valid ones) or ``total_steps < 1``.
    """
    if mode not in DECAY_MODES:
        raise ValueError(f"Unknown noise decay mode '{mode}'. Valid names: {list(DECAY_MODES)}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    frac = step / total_steps
    if mode == "none":
        return 1.0
    if mode == "linear":
        return 1.0 - frac
    if mode == "pow":
        return 1.0 - frac**coef
    if mode == "exp":
        return 1.0 - coef ** (total_steps - step)
    x = coef * (frac - mid_step / total_steps)
    # 1 - sigmoid(x) = sigmoid(-x), written so that exp never overflows (x reaches -1e3 on short runs)
    return 1.0 / (1.0 + math.exp(x)) if x <= 0 else math.exp(-x) / (1.0 + math.exp(-x))


def annealed_noise_step(
    step: int,
    total_steps: int,
    initial: int = 500,
    mode: str = "sigmoid",
    coef: float = 30.0,
    mid_step: float = 40.0,
) -> int:
    """NoisyRollout's noise step at training ``step``: ``int(initial * noise_decay(...))`` (truncated),
    clipped to [0, 999]."""
    if not 0 <= initial < NUM_NOISE_STEPS:
        raise ValueError(f"initial noise step must be in [0, {NUM_NOISE_STEPS - 1}], got {initial}")
    s = int(initial * noise_decay(step, total_steps, mode, coef, mid_step))
    return min(max(s, 0), NUM_NOISE_STEPS - 1)


@lru_cache(maxsize=1)
def diffusion_alpha_bars() -> Tensor:
    """alpha_bar_s for s = 0..999 (fp32, the released code's table), (1000,)."""
    betas = torch.sigmoid(torch.linspace(-6, 6, NUM_NOISE_STEPS)) * (0.5e-2 - 1e-5) + 1e-5  # (1000,)
    return torch.cumprod(1 - betas, dim=0)  # (1000,)


def diffusion_noise(x: Tensor, noise_step: int, noise: Tensor) -> Tensor:
    """clamp(sqrt(alpha_bar_s) x + sqrt(1 - alpha_bar_s) noise, 0, 1).

    Args:
        x: image tensor with values in [0, 1], any shape (e.g. (C, H, W)).
        noise_step: s in [0, 999].
        noise: standard normal noise of ``x``'s shape (the caller owns the generator).

    Returns:
        Tensor of ``x``'s shape in [0, 1].
    """
    if not 0 <= noise_step < NUM_NOISE_STEPS:
        raise ValueError(f"noise_step must be in [0, {NUM_NOISE_STEPS - 1}], got {noise_step}")
    if noise.shape != x.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must have the image's shape {tuple(x.shape)}")
    ab = diffusion_alpha_bars()[noise_step]  # ()
    return torch.clamp(ab.sqrt() * x + (1 - ab).sqrt() * noise, 0.0, 1.0)
