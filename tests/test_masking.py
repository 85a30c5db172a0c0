"""Masked views of raw images: exact pixels, truncated edge patches, ratios, controls, configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from papo.data.masking import (
    VIEWS,
    BlankView,
    ExactRatioPatchMask,
    GaussianNoiseView,
    GridAlignedPatchMask,
    RandomPatchMask,
    ShuffledImageView,
    exact_ratio_patch_mask,
    grid_aligned_patch_mask,
    no_masking,
    random_patch_mask,
    smart_resize,
)

MASKING_DIR = Path(__file__).resolve().parents[1] / "configs" / "masking"


def _noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    """Random RGB image with no zero pixels, so masked (0) pixels are unambiguous."""
    arr = np.random.default_rng(seed).integers(1, 256, size=(h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, mode="RGB")


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_random_patch_mask_edges_truncated_50x37():
    mask = random_patch_mask(37, 50, 14, 0.6, _rng(3))
    assert mask.shape == (37, 50) and mask.dtype == bool
    cells = _rng(3).random((3, 4)) < 0.6  # ceil(37/14) x ceil(50/14) squares, edge ones included
    for r in range(3):
        for c in range(4):
            block = mask[r * 14 : (r + 1) * 14, c * 14 : (c + 1) * 14]
            # last row block is 37 - 28 = 9 px tall, last column block 50 - 42 = 8 px wide
            assert block.shape == (14 if r < 2 else 9, 14 if c < 3 else 8)
            assert np.all(block == cells[r, c])


def test_random_patch_mask_probability():
    frac = random_patch_mask(1400, 1400, 14, 0.6, _rng(0)).mean()  # 10,000 squares
    assert abs(frac - 0.6) < 0.02
    assert not random_patch_mask(30, 30, 14, 0.0, _rng(0)).any()
    assert random_patch_mask(30, 30, 14, 1.0, _rng(0)).all()


def test_random_patch_view_changes_only_masked_pixels():
    img = _noise_image(50, 37)
    original = np.asarray(img).copy()
    (out,) = RandomPatchMask(mask_prob=0.6, patch_size=14)([[img]], [_rng(9)])[0]
    mask = random_patch_mask(37, 50, 14, 0.6, _rng(9))
    arr = np.asarray(out)
    assert out.mode == "RGB" and out.size == img.size
    assert np.array_equal(arr[~mask], original[~mask])  # outside: identical
    assert np.all(arr[mask] == 0)  # inside: the fill
    assert 0 < mask.mean() < 1
    assert np.array_equal(np.asarray(img), original)  # input not modified


def test_fill_colour_and_multi_image_prompt():
    a, b = _noise_image(30, 20, 1), _noise_image(16, 40, 2)
    view = RandomPatchMask(mask_prob=0.5, patch_size=14, fill=(1, 2, 3))
    out = view([[a, b]], [_rng(4)])[0]
    rng = _rng(4)  # every image masked, drawn in order from the prompt's generator
    for img, got in zip([a, b], out, strict=True):
        mask = random_patch_mask(img.height, img.width, 14, 0.5, rng)
        arr = np.asarray(got)
        assert np.all(arr[mask] == (1, 2, 3)) and np.array_equal(arr[~mask], np.asarray(img)[~mask])


def test_views_are_reproducible_from_rngs():
    imgs = [[_noise_image(40, 40, i)] for i in range(3)]
    for view in (RandomPatchMask(), ExactRatioPatchMask(), GridAlignedPatchMask(), GaussianNoiseView()):
        first = view(imgs, [_rng(i) for i in range(3)])
        second = view(imgs, [_rng(i) for i in range(3)])
        other = view(imgs, [_rng(i + 10) for i in range(3)])
        as_bytes = [[im.tobytes() for im in p] for p in first]
        assert as_bytes == [[im.tobytes() for im in p] for p in second], view.name
        assert as_bytes != [[im.tobytes() for im in p] for p in other], view.name


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.6, 1.0])
def test_exact_ratio_count(ratio):
    n = 3 * 4  # 50x37 image, 14 px squares
    expected = int(np.floor(ratio * n + 0.5))
    for seed in range(5):
        mask = exact_ratio_patch_mask(37, 50, 14, ratio, _rng(seed))
        cells = mask[::14, ::14]  # top-left pixel of each square
        assert cells.shape == (3, 4) and cells.sum() == expected
        assert np.array_equal(np.repeat(np.repeat(cells, 14, 0), 14, 1)[:37, :50], mask)
    out = np.asarray(ExactRatioPatchMask(ratio=ratio)([[_noise_image(50, 37)]], [_rng(0)])[0][0])
    assert np.array_equal((out == 0).all(axis=2), exact_ratio_patch_mask(37, 50, 14, ratio, _rng(0)))


def test_smart_resize_matches_qwen_processor():
    # reference values computed with transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize
    cases = {
        (56, 56, 3136, 1003520): (56, 56),
        (100, 100, 3136, 1003520): (112, 112),
        (37, 50, 3136, 1003520): (56, 84),
        (56, 56, 200704, 1003520): (448, 448),
        (3000, 2000, 3136, 1003520): (1204, 812),
        (480, 640, 200704, 1003520): (476, 644),
        (20, 2000, 3136, 1003520): (28, 1988),
    }
    for (h, w, lo, hi), expected in cases.items():
        assert smart_resize(h, w, 28, lo, hi) == expected
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 3000)


def test_grid_aligned_equals_random_patch_when_no_resize():
    # 56x56 is kept as is by smart_resize, so 14 px encoder patches are 14 raw px
    m1 = grid_aligned_patch_mask(56, 56, 0.6, _rng(2), patch_size=14, merge_size=1)
    m2 = random_patch_mask(56, 56, 14, 0.6, _rng(2))
    assert np.array_equal(m1, m2)
    # merge_size 2: masking unit is a 2x2 merged token = 28 px
    m3 = grid_aligned_patch_mask(56, 56, 0.6, _rng(2), merge_size=2)
    assert np.array_equal(m3, random_patch_mask(56, 56, 28, 0.6, _rng(2)))


def test_grid_aligned_cells_scale_with_resize():
    # 100x100 -> 112x112: 8x8 encoder patches, each 14 * 100 / 112 = 12.5 raw px
    mask = grid_aligned_patch_mask(100, 100, 0.5, _rng(5))
    cells = _rng(5).random((8, 8)) < 0.5
    centres = np.arange(100) + 0.5
    idx = np.floor(centres / 12.5).astype(int)
    assert np.array_equal(mask, cells[idx[:, None], idx[None, :]])
    img = _noise_image(100, 100)
    out = np.asarray(GridAlignedPatchMask(mask_prob=0.5)([[img]], [_rng(5)])[0][0])
    assert np.all(out[mask] == 0) and np.array_equal(out[~mask], np.asarray(img)[~mask])


def test_noise_and_blank_views():
    img = Image.new("RGB", (20, 10), (128, 128, 128))
    noisy = np.asarray(GaussianNoiseView(std=0.5)([[img]], [_rng(0)])[0][0]).astype(float)
    assert noisy.shape == (10, 20, 3) and 40 < noisy.std() < 128
    same = GaussianNoiseView(std=0.0)([[img]], [_rng(0)])[0][0]
    assert same.tobytes() == img.tobytes()
    blank = BlankView(fill=7)([[img, _noise_image(3, 5)]], [_rng(0)])[0]
    assert [b.size for b in blank] == [(20, 10), (3, 5)]
    assert all(np.all(np.asarray(b) == 7) for b in blank)


def test_shuffled_view_never_returns_own_image():
    colours = [(i * 20, 255 - i * 20, 7) for i in range(6)]
    images = [[Image.new("RGB", (10 + i, 12), c)] for i, c in enumerate(colours)]
    view = ShuffledImageView()
    seen_donors = set()
    for seed in range(30):
        out = view(images, [_rng([seed, i]) for i in range(6)])
        for i, imgs in enumerate(out):
            assert imgs[0].size == images[i][0].size  # resized to the original size
            donor = colours.index(imgs[0].getpixel((0, 0)))
            assert donor != i
            seen_donors.add((i, donor))
    assert len(seen_donors) > 12  # not a fixed cyclic shift
    # two prompts: always swapped; multi-image prompts keep their image count
    two = view(
        [[Image.new("RGB", (4, 4), (1, 1, 1))] * 2, [Image.new("RGB", (4, 4), (2, 2, 2))]], [_rng(0), _rng(1)]
    )
    assert [len(p) for p in two] == [2, 1]
    assert two[0][0].getpixel((0, 0)) == (2, 2, 2) and two[1][0].getpixel((0, 0)) == (1, 1, 1)
    no_resize = ShuffledImageView(resize_to_original=False)(images[:2], [_rng(0), _rng(1)])
    assert no_resize[0][0].size == images[1][0].size


def test_shuffled_view_needs_two_prompts():
    with pytest.raises(ValueError, match="at least 2 prompts"):
        ShuffledImageView()([[Image.new("RGB", (4, 4))]], [_rng(0)])


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: RandomPatchMask(mask_prob=1.5), "mask_prob"),
        (lambda: RandomPatchMask(patch_size=0), "patch_size"),
        (lambda: ExactRatioPatchMask(ratio=-0.1), "ratio"),
        (lambda: BlankView(fill=(1, 2)), "fill"),
        (lambda: GaussianNoiseView(std=-1), "std"),
    ],
)
def test_invalid_view_parameters(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_rng_count_must_match_prompts():
    with pytest.raises(ValueError, match="one rng per prompt"):
        RandomPatchMask()([[Image.new("RGB", (4, 4))]], [])


#: masking options that are another method's settings of a view: option -> the view it configures
VIEW_PRESETS = {"vppo_patch": "random_patch"}


def test_masking_configs_instantiate_with_matching_names():
    files = sorted(p.stem for p in MASKING_DIR.glob("*.yaml"))
    assert set(files) == {*VIEWS, "none", *VIEW_PRESETS}
    for stem in files:
        text = (MASKING_DIR / f"{stem}.yaml").read_text()
        assert text.startswith("#"), f"{stem}.yaml must start with a comment"
        if stem in VIEW_PRESETS:  # a defaults list: composed by Hydra
            from conftest import compose_cfg

            view = instantiate(compose_cfg([f"masking={stem}"]).masking)
        else:
            view = instantiate(OmegaConf.load(MASKING_DIR / f"{stem}.yaml"))
        if stem == "none":
            assert view is None and no_masking() is None
        else:
            name = VIEW_PRESETS.get(stem, stem)
            assert view.name == name and isinstance(view, VIEWS[name])
    assert instantiate(OmegaConf.load(MASKING_DIR / "random_patch.yaml")) == RandomPatchMask(0.6, 14, 0)
    from conftest import compose_cfg

    vppo = RandomPatchMask(0.5, 14, 0, per_response=True)  # one mask per response (VPPO's released code)
    assert instantiate(compose_cfg(["masking=vppo_patch"]).masking) == vppo
