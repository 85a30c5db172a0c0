"""Masked "views" of the RAW images, for PAPO's implicit perception loss and its controls.

PAPO's perception KL compares the policy given the real image with the policy given a corrupted copy
``I_mask``. The copy is made from the raw decoded image (before the processor's resize / normalise), one per
prompt, shared by all G responses of that prompt (``per_response=True``: one per response, as VPPO's released
code), and freshly drawn every time the prompt is drawn.

Every view has the same interface::

    view(images: list[list[Image]], rngs: list[np.random.Generator]) -> list[list[Image]]

The outer list is the prompts of a batch, the inner list that prompt's images; ``rngs`` holds one generator
per prompt, so a prompt's view depends only on its own generator (the datamodule seeds it from
``(seed, epoch, row)``), never on batch composition or worker scheduling. Views never modify their inputs
and return RGB images of the input sizes (except ``ShuffledImageView(resize_to_original=False)``). ``name``
is the config-file / registry name (``masking=random_patch`` <-> ``configs/masking/random_patch.yaml`` <->
:data:`VIEWS`).

Views:

- :class:`RandomPatchMask` (PAPO's default): tile with ``patch_size`` squares anchored top-left (edge squares
  truncated), blacken each independently with ``mask_prob``. Same draw order (row-major) and distribution as
  the released ``random_patch_blackening``, which however draws from numpy's global RNG (unseeded per prompt)
  and masks whatever mode the image has (alpha / palette indices included); here images are RGB first and the
  generator is per prompt, so masks are reproducible.
- :class:`ExactRatioPatchMask`: exactly ``round(ratio * n_patches)`` patches (no variance in the masked area).
- :class:`GridAlignedPatchMask`: patches aligned with what the vision encoder sees after Qwen's
  ``smart_resize``: one masking cell = ``patch_size * merge_size`` resized pixels, i.e.
  ``patch_size * merge_size * raw_dim / resized_dim`` raw pixels, so each masked cell maps onto whole
  encoder patches (``merge_size=2``: whole LLM image tokens). Not in the paper.
- Controls for the paper's open question "perception or just any regulariser?": :class:`GaussianNoiseView`,
  :class:`BlankView` (image fully replaced by ``fill``) and :class:`ShuffledImageView` (KL against ANOTHER
  prompt's image from the batch).

``no_masking()`` returns ``None``; ``configs/masking/none.yaml`` targets it so that ``masking=none``
instantiates to ``None`` (no masked views, no masked forward) with no special case anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from PIL import Image

__all__ = [
    "VIEWS",
    "BlankView",
    "ExactRatioPatchMask",
    "GaussianNoiseView",
    "GridAlignedPatchMask",
    "ImageView",
    "RandomPatchMask",
    "ShuffledImageView",
    "apply_mask",
    "exact_ratio_patch_mask",
    "grid_aligned_patch_mask",
    "no_masking",
    "random_patch_mask",
    "smart_resize",
]

Fill = int | Sequence[int]


# --------------------------------------------------------------------------------------------------------------
# Pure helpers (numpy in, numpy out)
# --------------------------------------------------------------------------------------------------------------
def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_positive(name: str, value: int) -> None:
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _normalize_fill(fill: Fill) -> tuple[int, int, int]:
    """An int (grey level) or an RGB triple -> an RGB triple of ints in [0, 255]."""
    values = [int(fill)] * 3 if np.ndim(fill) == 0 else [int(c) for c in fill]
    if len(values) != 3 or not all(0 <= c <= 255 for c in values):
        raise ValueError(f"fill must be an int in [0, 255] or an RGB triple of them, got {fill!r}")
    return values[0], values[1], values[2]


def _cells_to_pixels(cells: np.ndarray, height: int, width: int, patch_size: int) -> np.ndarray:
    """Expand a (nh, nw) cell mask to an (H, W) pixel mask of patch_size squares; edge squares truncated."""
    return np.repeat(np.repeat(cells, patch_size, axis=0), patch_size, axis=1)[:height, :width]


def random_patch_mask(
    height: int, width: int, patch_size: int, mask_prob: float, rng: np.random.Generator
) -> np.ndarray:
    """Boolean (H, W) mask, True = masked: patch_size squares from the top-left, each masked with mask_prob.

    Draws ``rng.random((ceil(H/p), ceil(W/p)))`` (row-major, one number per square, edge squares included).
    """
    _check_positive("patch_size", patch_size)
    _check_prob("mask_prob", mask_prob)
    nh, nw = -(-height // patch_size), -(-width // patch_size)
    cells = rng.random((nh, nw)) < mask_prob  # (nh, nw)
    return _cells_to_pixels(cells, height, width, patch_size)  # (H, W)


def exact_ratio_patch_mask(
    height: int, width: int, patch_size: int, ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """Boolean (H, W) mask with exactly ``floor(ratio * n + 0.5)`` of the n squares masked (round half up)."""
    _check_positive("patch_size", patch_size)
    _check_prob("ratio", ratio)
    nh, nw = -(-height // patch_size), -(-width // patch_size)
    n = nh * nw
    k = math.floor(ratio * n + 0.5)
    cells = np.zeros(n, dtype=bool)
    cells[rng.permutation(n)[:k]] = True
    return _cells_to_pixels(cells.reshape(nh, nw), height, width, patch_size)


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280
) -> tuple[int, int]:
    """Qwen2-VL / Qwen2.5-VL processor resize: sides divisible by ``factor``, area in [min_pixels, max_pixels].

    Same arithmetic as ``transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize`` (round each side
    to a multiple of factor, then rescale by sqrt of the area ratio if outside the pixel range).
    """
    if min(height, width) <= 0:
        raise ValueError(f"image sides must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {height}x{width}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def grid_aligned_patch_mask(
    height: int,
    width: int,
    mask_prob: float,
    rng: np.random.Generator,
    *,
    patch_size: int = 14,
    merge_size: int = 1,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
) -> np.ndarray:
    """Boolean (H, W) raw-pixel mask whose cells are the encoder's patches after :func:`smart_resize`.

    A cell is ``patch_size * merge_size`` resized pixels. Raw pixel y belongs to resized coordinate
    ``(y + 0.5) * resized_h / H`` (pixel-centre convention of the resize), hence to cell
    ``floor(that / cell)``; cells are masked independently with ``mask_prob``, drawn row-major.
    """
    _check_prob("mask_prob", mask_prob)
    _check_positive("patch_size", patch_size)
    _check_positive("merge_size", merge_size)
    cell = patch_size * merge_size
    resized_h, resized_w = smart_resize(height, width, factor, min_pixels, max_pixels)
    nh, nw = -(-resized_h // cell), -(-resized_w // cell)
    cells = rng.random((nh, nw)) < mask_prob  # (nh, nw)
    rows = np.minimum(((np.arange(height) + 0.5) * resized_h / height // cell).astype(int), nh - 1)  # (H,)
    cols = np.minimum(((np.arange(width) + 0.5) * resized_w / width // cell).astype(int), nw - 1)  # (W,)
    return cells[rows[:, None], cols[None, :]]  # (H, W)


def apply_mask(img: Image.Image, mask: np.ndarray, fill: Fill = 0) -> Image.Image:
    """New RGB image: pixels where ``mask`` is True set to ``fill`` (int or RGB triple), others unchanged."""
    arr = np.array(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)  # (H, W, 3), a copy
    if mask.shape != arr.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image size (H, W) = {arr.shape[:2]}")
    arr[mask] = np.asarray(_normalize_fill(fill), dtype=np.uint8)
    return Image.fromarray(arr, mode="RGB")


# --------------------------------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------------------------------
class ImageView:
    """Base class: ``__call__(images, rngs)`` -> one view per prompt; subclasses implement ``view_image``.

    Views are plain classes (not dataclasses) on purpose: ``hydra.utils.instantiate(cfg, masking=view)``
    passes plain objects through untouched, but would turn a dataclass into a config node.
    Equality and repr come from the constructor parameters stored as attributes.

    Every view takes ``per_response``: False, one view per prompt shared by its G responses (PAPO); True, the
    datamodule draws G views of each train prompt, one per response (VPPO's released code), continuing the
    prompt's generator, so the first of them is the one-per-prompt view.
    """

    name: ClassVar[str] = "base"
    #: smallest batch the view can handle (the datamodule pads smaller batches with donor rows)
    min_batch_size: ClassVar[int] = 1
    #: one view per response instead of one per prompt (set by each view's constructor)
    per_response: bool = False

    def view_image(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        raise NotImplementedError

    def __call__(
        self, images: list[list[Image.Image]], rngs: list[np.random.Generator]
    ) -> list[list[Image.Image]]:
        _check_lengths(images, rngs)
        # every image of a multi-image prompt gets its own draw from that prompt's generator, in order
        return [[self.view_image(img, rng) for img in imgs] for imgs, rng in zip(images, rngs, strict=True)]

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    __hash__ = None  # mutable parameters


def _check_lengths(images: list, rngs: list) -> None:
    if len(images) != len(rngs):
        raise ValueError(f"need one rng per prompt: got {len(images)} prompts and {len(rngs)} rngs")


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


class RandomPatchMask(ImageView):
    """PAPO's mask: patch_size squares from the top-left, each set to ``fill`` with probability mask_prob."""

    name: ClassVar[str] = "random_patch"

    def __init__(
        self, mask_prob: float = 0.6, patch_size: int = 14, fill: Fill = 0, per_response: bool = False
    ) -> None:
        _check_prob("mask_prob", mask_prob)
        _check_positive("patch_size", patch_size)
        self.mask_prob, self.patch_size, self.fill = float(mask_prob), int(patch_size), _normalize_fill(fill)
        self.per_response = bool(per_response)

    def view_image(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        mask = random_patch_mask(img.height, img.width, self.patch_size, self.mask_prob, rng)
        return apply_mask(img, mask, self.fill)


class ExactRatioPatchMask(ImageView):
    """Exactly round(ratio * n_patches) squares (round half up) set to ``fill``; removes mask-area variance."""

    name: ClassVar[str] = "exact_ratio"

    def __init__(
        self, ratio: float = 0.6, patch_size: int = 14, fill: Fill = 0, per_response: bool = False
    ) -> None:
        _check_prob("ratio", ratio)
        _check_positive("patch_size", patch_size)
        self.ratio, self.patch_size, self.fill = float(ratio), int(patch_size), _normalize_fill(fill)
        self.per_response = bool(per_response)

    def view_image(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        mask = exact_ratio_patch_mask(img.height, img.width, self.patch_size, self.ratio, rng)
        return apply_mask(img, mask, self.fill)


class GridAlignedPatchMask(ImageView):
    """Mask cells aligned with the vision encoder's patch grid after Qwen's smart_resize.

    ``factor``/``min_pixels``/``max_pixels`` must match the model's image processor (the defaults are the
    transformers Qwen2-VL processor defaults; the published PAPO runs used min_pixels = 256 * 28 * 28).
    ``merge_size=2`` masks whole LLM image tokens (2x2 merged patches) instead of single encoder patches.
    """

    name: ClassVar[str] = "grid_aligned"

    def __init__(
        self,
        mask_prob: float = 0.6,
        patch_size: int = 14,
        merge_size: int = 1,
        factor: int = 28,
        min_pixels: int = 56 * 56,
        max_pixels: int = 28 * 28 * 1280,
        fill: Fill = 0,
        per_response: bool = False,
    ) -> None:
        _check_prob("mask_prob", mask_prob)
        _check_positive("patch_size", patch_size)
        _check_positive("merge_size", merge_size)
        _check_positive("factor", factor)
        if min_pixels > max_pixels:
            raise ValueError(f"min_pixels ({min_pixels}) > max_pixels ({max_pixels})")
        self.mask_prob, self.patch_size, self.merge_size = float(mask_prob), int(patch_size), int(merge_size)
        self.factor, self.min_pixels, self.max_pixels = int(factor), int(min_pixels), int(max_pixels)
        self.fill, self.per_response = _normalize_fill(fill), bool(per_response)

    def view_image(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        mask = grid_aligned_patch_mask(
            img.height,
            img.width,
            self.mask_prob,
            rng,
            patch_size=self.patch_size,
            merge_size=self.merge_size,
            factor=self.factor,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
        )
        return apply_mask(img, mask, self.fill)


class GaussianNoiseView(ImageView):
    """Control: add N(0, std^2) noise per pixel and channel, in [0, 1] intensity units, then clip."""

    name: ClassVar[str] = "noise"

    def __init__(self, std: float = 0.5, per_response: bool = False) -> None:
        if std < 0:
            raise ValueError(f"std must be >= 0, got {std}")
        self.std, self.per_response = float(std), bool(per_response)

    def view_image(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        arr = np.asarray(_rgb(img), dtype=np.float32) / 255.0  # (H, W, 3)
        noisy = arr + rng.normal(0.0, self.std, size=arr.shape).astype(np.float32)
        return Image.fromarray(np.rint(np.clip(noisy, 0.0, 1.0) * 255.0).astype(np.uint8), mode="RGB")


class BlankView(ImageView):
    """Control: the whole image replaced by ``fill`` (mask ratio 1.0; same size, so same image tokens)."""

    name: ClassVar[str] = "blank"

    def __init__(self, fill: Fill = 0, per_response: bool = False) -> None:
        self.fill, self.per_response = _normalize_fill(fill), bool(per_response)

    def view_image(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        return Image.new("RGB", img.size, self.fill)


class ShuffledImageView(ImageView):
    """Control: each prompt gets ANOTHER prompt's images from the batch (a random derangement).

    Image k of prompt i becomes image ``k mod len`` of its donor prompt, so every prompt keeps its number of
    images. With ``resize_to_original`` (default) each donor image is resized (bicubic) to the size of the
    image it replaces, so the masked forward has exactly the same image-token layout as the real one; otherwise
    the consumer must re-tokenise the prompt with the donor images. Prompts without images get ``[]`` and are
    not donors. Needs >= 2 prompts with images (the datamodule pads short batches with donor rows).
    The derangement is drawn from a generator seeded by one draw from each prompt's generator.
    """

    name: ClassVar[str] = "shuffled"
    min_batch_size: ClassVar[int] = 2

    def __init__(self, resize_to_original: bool = True, per_response: bool = False) -> None:
        self.resize_to_original, self.per_response = bool(resize_to_original), bool(per_response)

    def __call__(
        self, images: list[list[Image.Image]], rngs: list[np.random.Generator]
    ) -> list[list[Image.Image]]:
        _check_lengths(images, rngs)
        with_images = [i for i, imgs in enumerate(images) if imgs]
        if len(with_images) < 2:
            raise ValueError(
                f"ShuffledImageView needs at least 2 prompts with images in a batch to give each prompt another "
                f"prompt's image; got {len(with_images)} (of {len(images)} prompts)."
            )
        batch_rng = np.random.default_rng([int(r.integers(2**32)) for r in rngs])
        perm = _derangement(len(with_images), batch_rng)
        out: list[list[Image.Image]] = [[] for _ in images]
        for pos, i in enumerate(with_images):
            donor = images[with_images[perm[pos]]]
            views = []
            for k, img in enumerate(images[i]):
                src = donor[k % len(donor)]
                view = _rgb(src)
                if self.resize_to_original and view.size != img.size:
                    view = view.resize(img.size, Image.Resampling.BICUBIC)
                views.append(view.copy() if view is src else view)  # never alias another prompt's image
            out[i] = views
        return out


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform random permutation with no fixed point (rejection sampling; ~e tries on average)."""
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2, got {n}")
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def no_masking() -> None:
    """Hydra target of ``configs/masking/none.yaml``: instantiates to ``None`` (no masked views)."""
    return None


#: registry name -> view class (names match configs/masking/*.yaml and each class's ``name``)
VIEWS: dict[str, type[ImageView]] = {
    cls.name: cls
    for cls in (
        RandomPatchMask,
        ExactRatioPatchMask,
        GridAlignedPatchMask,
        GaussianNoiseView,
        BlankView,
        ShuffledImageView,
    )
}
