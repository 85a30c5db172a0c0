"""Handwritten-digit arithmetic on REAL images, offline: scikit-learn's bundled digits (UCI optdigits).

``sklearn.datasets.load_digits`` ships 1,797 scanned handwritten digits (8x8 greyscale, ink 0..16) with the
library, so no download is needed. Each item composes ``digits_per_image`` digits side by side (upscaled,
dark ink on white) into a square image and asks about them:

- ``sum``:  "What is the sum of the digits shown in the image?"  -> e.g. ``11`` for a 4 and a 7;
- ``read``: "What number is written in the image? Read the digits from left to right."  -> ``47``.

With ``images_per_row > 1`` a row holds several such images (a multi-image prompt; every image is masked by
the PAPO view) and the question covers all of them. The answer cannot be guessed from the text, so the task
is fully vision-dependent (``vision_dependency="high"``), like the synthetic task but with real, noisy
handwriting instead of rendered shapes.

The 1,797 scans are split once into disjoint pools (train 70 %, val 15 %, test 15 %, a fixed permutation), so
validation digits are handwriting the policy never saw. Item ``i`` of a split is drawn from
``default_rng([seed, crc32(split), i])``. Columns follow the hub convention (``images``, ``problem``,
``answer``, ``task_type``, ``vision_dependency``, ``uid``), so the same datamodule serves it. Not part of the
paper: an embedded stand-in for real-image data sets such as CLEVR counting.
"""

from __future__ import annotations

import io
import zlib
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["QUESTIONS", "build_digits_split", "compose_digits", "digit_pools"]

QUESTIONS = {
    "sum": {
        1: "What is the sum of the digits shown in the image?",
        2: "What is the sum of all the digits shown in the images?",
    },
    "read": {
        1: "What number is written in the image? Read the digits from left to right.",
        2: "What number do the images show? Read the digits from left to right, first image first.",
    },
}
_POOL_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)  # (1797, 8, 8) in [0, 16], (1797,)


def digit_pools() -> dict[str, np.ndarray]:
    """Disjoint indices of the 1,797 scans for train / val / test (fixed, independent of any seed)."""
    n = len(_digits()[1])
    order = np.random.default_rng(20240917).permutation(n)
    n_train, n_val = int(n * _POOL_FRACTIONS["train"]), int(n * _POOL_FRACTIONS["val"])
    return {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }


def compose_digits(scans: list[np.ndarray], image_size: int = 56) -> Image.Image:
    """Digits (8x8 arrays, ink 0..16) side by side on a white ``image_size`` square, dark ink, centred."""
    cell = image_size // len(scans)
    if cell < 8:
        raise ValueError(f"image_size={image_size} is too small for {len(scans)} digits (>= 8 px each)")
    canvas = Image.new("L", (image_size, image_size), 255)
    top = (image_size - cell) // 2
    left0 = (image_size - cell * len(scans)) // 2
    for k, scan in enumerate(scans):
        ink = np.clip(255.0 - scan * (255.0 / 16.0), 0, 255).astype(np.uint8)  # (8, 8) dark on white
        tile = Image.fromarray(ink, mode="L").resize((cell, cell), Image.BILINEAR)
        canvas.paste(tile, (left0 + k * cell, top))
    return canvas.convert("RGB")


def _split_key(split: str) -> int:
    return zlib.crc32(str(split).encode("utf-8"))


def build_digits_split(
    split: str = "train",
    size: int = 2000,
    seed: int = 0,
    digits_per_image: int = 2,
    images_per_row: int = 1,
    image_size: int = 56,
    task_weights: dict[str, float] | None = None,
) -> Any:
    """``size`` items of the digits task as a ``datasets.Dataset`` (see the module docstring).

    Args:
        split: ``train`` | ``val`` | ``test``: which pool of scans the digits come from.
        size: number of rows (rows are independent draws; a bigger size extends the split).
        seed: data seed.
        digits_per_image: digits composed side by side in each image (1 to 4).
        images_per_row: images per prompt (1 or 2; 2 makes a multi-image prompt).
        image_size: side of each square image in pixels (56 -> 4 image tokens on the tiny Qwen2.5-VL).
        task_weights: ``{"sum": w, "read": w}`` mix (default: sum only).
    """
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    try:
        from datasets import List as ListFeature
    except ImportError:  # datasets < 4
        from datasets import Sequence as ListFeature

    if split not in _POOL_FRACTIONS:
        raise ValueError(f"unknown digits split {split!r}; valid: {sorted(_POOL_FRACTIONS)}")
    if not 1 <= int(digits_per_image) <= 4:
        raise ValueError(f"digits_per_image must be in 1..4, got {digits_per_image}")
    if int(images_per_row) not in (1, 2):
        raise ValueError(f"images_per_row must be 1 or 2, got {images_per_row}")
    weights = dict(task_weights or {"sum": 1.0})
    unknown = sorted(set(weights) - set(QUESTIONS))
    if unknown or sum(weights.values()) <= 0:
        raise ValueError(
            f"task_weights {weights}: tasks must be in {sorted(QUESTIONS)} with a positive total"
        )
    tasks = [t for t in QUESTIONS if weights.get(t, 0) > 0]
    probs = np.array([weights[t] for t in tasks], dtype=np.float64)
    probs /= probs.sum()

    scans, labels = _digits()
    pool = digit_pools()[split]
    key = _split_key(split)
    columns: dict[str, list] = {
        k: [] for k in ("images", "problem", "answer", "task_type", "vision_dependency", "uid")
    }
    for i in range(int(size)):
        rng = np.random.default_rng([int(seed), key, i])
        task = tasks[int(rng.choice(len(tasks), p=probs))]
        picks = rng.choice(pool, size=int(digits_per_image) * int(images_per_row), replace=True)
        images = []
        for j in range(int(images_per_row)):
            idx = picks[j * int(digits_per_image) : (j + 1) * int(digits_per_image)]
            buf = io.BytesIO()
            compose_digits([scans[t] for t in idx], image_size).save(buf, format="PNG", compress_level=1)
            images.append({"bytes": buf.getvalue(), "path": None})
        values = [int(labels[t]) for t in picks]
        answer = str(sum(values)) if task == "sum" else str(int("".join(map(str, values))))
        columns["images"].append(images)
        columns["problem"].append(QUESTIONS[task][int(images_per_row)])
        columns["answer"].append(answer)
        columns["task_type"].append(f"digits_{task}")
        columns["vision_dependency"].append("high")
        columns["uid"].append(f"digits-{split}-{i}")
    features = Features(
        {
            "images": ListFeature(ImageFeature()),
            **{k: Value("string") for k in ("problem", "answer", "task_type", "vision_dependency", "uid")},
        }
    )
    return Dataset.from_dict(columns, features=features)
