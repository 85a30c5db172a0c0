"""NoisyRollout's annealed distortion: the strength schedule, the diffusion table and the noised image, against
hand-computed values and against the released code's torchvision round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from papo.algos.image_distortion import (
    DECAY_MODES,
    annealed_noise_step,
    diffusion_alpha_bars,
    diffusion_noise,
    noise_decay,
)
from papo.data.distortion import diffusion_noise_image


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_sigmoid_schedule_published_geo3k_values() -> None:
    # Geo3K: alpha_0 = 500, c = 30, t_mid = 40; with T = 60 steps
    assert noise_decay(40, 60, "sigmoid", 30, 40) == pytest.approx(0.5)
    assert annealed_noise_step(40, 60, 500, "sigmoid", 30, 40) == 250
    # step 0: decay = 1 - sigmoid(-20) = 1 - 2.06e-9 -> 500 * decay = 499.999999 truncates to 499
    assert noise_decay(0, 60, "sigmoid", 30, 40) == pytest.approx(1 - _sigmoid(-20.0), abs=1e-15)
    assert annealed_noise_step(0, 60, 500, "sigmoid", 30, 40) == 499
    # step 50: x = 30 (50/60 - 40/60) = 5 -> 500 (1 - sigmoid(5)) = 3.35 -> 3; the end: x = 10 -> 0
    assert annealed_noise_step(50, 60, 500, "sigmoid", 30, 40) == int(500 * (1 - _sigmoid(5.0))) == 3
    assert annealed_noise_step(60, 60, 500, "sigmoid", 30, 40) == 0


def test_other_decay_modes_hand_values() -> None:
    assert noise_decay(15, 60, "linear") == pytest.approx(0.75)
    assert noise_decay(30, 60, "pow", coef=2.0) == pytest.approx(0.75)  # 1 - (1/2)^2
    assert noise_decay(2, 4, "exp", coef=0.5) == pytest.approx(0.75)  # 1 - 0.5^(4 - 2)
    assert noise_decay(3, 4, "none") == 1.0
    assert annealed_noise_step(15, 60, 450, "linear") == 337  # int(337.5)
    assert set(DECAY_MODES) == {"none", "linear", "pow", "exp", "sigmoid"}
    with pytest.raises(ValueError, match="Valid names"):
        noise_decay(1, 10, "cosine")
    with pytest.raises(ValueError, match="initial noise step"):
        annealed_noise_step(1, 10, 1000)


def test_diffusion_table_hand_values() -> None:
    ab = diffusion_alpha_bars()
    beta = [_sigmoid(-6 + 12 * s / 999) * (5e-3 - 1e-5) + 1e-5 for s in range(3)]
    assert ab.shape == (1000,)
    assert ab[0].item() == pytest.approx(1 - beta[0], rel=1e-6)
    assert ab[2].item() == pytest.approx((1 - beta[0]) * (1 - beta[1]) * (1 - beta[2]), rel=1e-6)
    last = math.prod(1 - (_sigmoid(-6 + 12 * s / 999) * (5e-3 - 1e-5) + 1e-5) for s in range(1000))
    assert ab[999].item() == pytest.approx(last, rel=1e-4)
    assert 1 - ab[0].item() == pytest.approx(2.2338e-5, rel=1e-3)  # even step 0 adds a little noise
    assert bool((ab[1:] < ab[:-1]).all())


def test_diffusion_noise_hand_values_and_clamp() -> None:
    ab = diffusion_alpha_bars()[250].item()
    x, eps = torch.tensor([0.5, 1.0, 0.0]), torch.tensor([1.0, 10.0, -0.1])
    out = diffusion_noise(x, 250, eps)
    expected0 = math.sqrt(ab) * 0.5 + math.sqrt(1 - ab)
    assert out[0].item() == pytest.approx(expected0, rel=1e-6)
    assert out[1:].tolist() == [1.0, 0.0]  # clamped to [0, 1]
    with pytest.raises(ValueError, match="noise_step"):
        diffusion_noise(x, 1000, eps)


def test_noised_pil_image_matches_the_released_torchvision_round_trip() -> None:
    """ToTensor -> sqrt(ab) x + sqrt(1 - ab) eps -> clamp -> ToPILImage, with the same noise values."""
    T = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(7)
    img = Image.fromarray(rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8))
    ours = diffusion_noise_image(img, 400, np.random.default_rng(3))
    eps = torch.from_numpy(np.random.default_rng(3).standard_normal((6, 5, 3)).astype(np.float32))
    ab = diffusion_alpha_bars()[400]
    x0 = T.ToTensor()(img)  # (3, H, W)
    released = T.ToPILImage()(torch.clamp(ab.sqrt() * x0 + (1 - ab).sqrt() * eps.permute(2, 0, 1), 0.0, 1.0))
    assert np.array_equal(np.asarray(ours), np.asarray(released))


def test_noised_pil_image_is_seeded_and_grows_with_the_step() -> None:
    grey = Image.new("RGB", (16, 16), (128, 128, 128))
    a = np.asarray(diffusion_noise_image(grey, 300, np.random.default_rng(0)), dtype=float)
    b = np.asarray(diffusion_noise_image(grey, 300, np.random.default_rng(0)), dtype=float)
    c = np.asarray(diffusion_noise_image(grey, 300, np.random.default_rng(1)), dtype=float)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    spreads = [
        np.asarray(diffusion_noise_image(grey, s, np.random.default_rng(0)), dtype=float).std()
        for s in (0, 200, 500)
    ]
    assert spreads[0] < 2.0 < spreads[1] < spreads[2]
