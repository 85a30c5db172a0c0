"""Image sizing as in the released runs: each image (real and masked) is resized with PIL into
[min_pixels, max_pixels] before the processor (the released ``verl/utils/dataset.py`` ``process_image``), so the
number of image tokens on odd sizes is the released path's, not only the processor's own resize."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from PIL import Image

from papo.data.datamodule import PapoDataModule
from papo.data.images import pixel_range_size, resize_into_pixel_range
from papo.data.masking import RandomPatchMask

MIN_PIXELS, MAX_PIXELS = 256 * 28 * 28, 1280 * 28 * 28  # the published bounds
# odd sizes: far above max_pixels, far below min_pixels, awkward aspect ratios, one already in range
SIZES = [(3000, 2000), (2049, 1531), (97, 1203), (401, 13), (333, 777), (1000, 1000), (14, 2600)]


def released_process_image(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """verl/utils/dataset.py process_image of the released code (MikeWangWZHL/PAPO), for a PIL image."""
    if max_pixels is not None and (image.width * image.height) > max_pixels:
        resize_factor = math.sqrt(max_pixels / (image.width * image.height))
        width, height = int(image.width * resize_factor), int(image.height * resize_factor)
        image = image.resize((width, height))
    if min_pixels is not None and (image.width * image.height) < min_pixels:
        resize_factor = math.sqrt(min_pixels / (image.width * image.height))
        width, height = int(image.width * resize_factor), int(image.height * resize_factor)
        image = image.resize((width, height))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


@pytest.fixture(scope="module")
def image_processor(cache_dir: Path):
    """The stock Qwen2.5-VL image processor (the embedded model's) with the published pixel bounds."""
    from transformers import AutoProcessor

    from papo.models.loading import set_pixel_bounds
    from papo.models.tiny_vlm import ensure_tiny_vlm

    proc = AutoProcessor.from_pretrained(str(ensure_tiny_vlm(cache_dir / "models")), local_files_only=True)
    set_pixel_bounds(proc, MIN_PIXELS, MAX_PIXELS)
    return proc.image_processor


def _image_tokens(image_processor, image: Image.Image) -> int:
    grid = image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
    return int(grid.prod()) // image_processor.merge_size**2


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize(("w", "h"), SIZES)
def test_pixel_range_size_is_the_released_resize(w: int, h: int) -> None:
    img = _image(w, h)
    ours = resize_into_pixel_range(img, MIN_PIXELS, MAX_PIXELS)
    assert (
        ours.size
        == released_process_image(img, MIN_PIXELS, MAX_PIXELS).size
        == pixel_range_size(w, h, MIN_PIXELS, MAX_PIXELS)
    )
    assert np.array_equal(np.asarray(ours), np.asarray(released_process_image(img, MIN_PIXELS, MAX_PIXELS)))


def test_the_datamodule_gives_the_released_number_of_image_tokens(image_processor) -> None:
    rows = {
        "images": [[_image(w, h, i)] for i, (w, h) in enumerate(SIZES)],
        "problem": [f"q{i}" for i in range(len(SIZES))],
        "answer": ["1"] * len(SIZES),
    }
    dm = PapoDataModule(
        val_dataset=Dataset.from_dict(rows),
        masking=RandomPatchMask(),
        val_batch_size=len(SIZES),
        resize_min_pixels=MIN_PIXELS,
        resize_max_pixels=MAX_PIXELS,
        max_aspect_ratio=None,
    )
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    released = [
        _image_tokens(image_processor, released_process_image(r[0], MIN_PIXELS, MAX_PIXELS))
        for r in rows["images"]
    ]
    ours = [_image_tokens(image_processor, imgs[0]) for imgs in batch["images"]]
    ours_masked = [_image_tokens(image_processor, imgs[0]) for imgs in batch["images_masked"]]
    assert ours == ours_masked == released
    # the processor's own resize alone (no PIL resize first) gives other counts on some of these sizes
    processor_only = [_image_tokens(image_processor, r[0]) for r in rows["images"]]
    assert processor_only != released


def test_masks_are_drawn_on_the_raw_image_before_the_resize() -> None:
    """The released trainer blackens 14-px squares of the RAW image, then the worker resizes both views."""
    raw = _image(401, 13)
    rows = {"images": [[raw]], "problem": ["q"], "answer": ["1"]}
    kwargs = {"masking": RandomPatchMask(), "val_batch_size": 1, "max_aspect_ratio": None}
    plain = PapoDataModule(val_dataset=Dataset.from_dict(rows), **kwargs)
    sized = PapoDataModule(
        val_dataset=Dataset.from_dict(rows),
        resize_min_pixels=MIN_PIXELS,
        resize_max_pixels=MAX_PIXELS,
        **kwargs,
    )
    for dm in (plain, sized):
        dm.setup("validate")
    masked_raw = next(iter(plain.val_dataloader()))["images_masked"][0][0]
    masked_sized = next(iter(sized.val_dataloader()))["images_masked"][0][0]
    assert masked_sized.size == pixel_range_size(401, 13, MIN_PIXELS, MAX_PIXELS)
    assert np.array_equal(
        np.asarray(masked_sized), np.asarray(released_process_image(masked_raw, MIN_PIXELS, MAX_PIXELS))
    )


def test_published_experiments_resize_into_the_models_pixel_range() -> None:
    from conftest import compose_cfg

    cfg = compose_cfg(["experiment=papo_g_3b"])
    assert (cfg.data.resize_min_pixels, cfg.data.resize_max_pixels) == (MIN_PIXELS, MAX_PIXELS)
    assert compose_cfg([]).data.get("resize_min_pixels") is None  # the embedded task: no extra resize
