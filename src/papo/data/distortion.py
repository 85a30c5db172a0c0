"""NoisyRollout's distorted image on raw PIL images, seeded: the image side of its rollout-side view.

:func:`diffusion_noise_image` applies :func:`papo.algos.image_distortion.diffusion_noise` at a given noise
step to an RGB image: 8-bit values / 255, plus noise drawn from the caller's ``numpy`` generator, clamped to
[0, 1], times 255 and truncated to 8 bits, as the released code's ``ToTensor`` -> noise -> ``ToPILImage``
round trip. Differences from the released code: the noise comes from a seeded per-image generator (the
released code draws from torch's global generator), and the image is the raw image, before the processor's
resize (the released code noises the image after its ``min_pixels`` / ``max_pixels`` resize), as PAPO's
masks are drawn on raw images here.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from papo.algos.image_distortion import diffusion_noise

__all__ = ["diffusion_noise_image"]


def diffusion_noise_image(image: Image.Image, noise_step: int, rng: np.random.Generator) -> Image.Image:
    """A noised copy of ``image`` (RGB) at diffusion step ``noise_step`` in [0, 999], noise from ``rng``."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)  # (H, W, 3)
    eps = torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))  # (H, W, 3)
    noisy = diffusion_noise(x, int(noise_step), eps)  # (H, W, 3) in [0, 1]
    return Image.fromarray((noisy * 255.0).to(torch.uint8).numpy())
