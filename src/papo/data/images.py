"""Robust image decoding to RGB ``PIL.Image`` for every image representation the datasets use.

:func:`load_image` accepts

- a ``PIL.Image`` in any mode: ``RGB``; ``1``/``L``/``P``/``YCbCr`` (converted); images with alpha (``RGBA``,
  ``LA``, ``PA``, ``RGBa``, ``La``, or a ``transparency`` entry such as a PNG palette's tRNS) are composited
  on WHITE, so transparent regions do not turn black (black is the masking fill); ``CMYK`` (converted);
  high-bit-depth greyscale ``I;16*`` (divided by 257), ``I`` and ``F`` (see :func:`_scale_to_uint8`);
- a ``{"bytes": ..., "path": ...}`` dict, the storage form of a Hugging Face ``datasets.Image`` feature
  (bytes win when both are present). The released PAPO code crashed on these: it expected decoded images;
- a file path (``str`` or ``os.PathLike``), raw ``bytes``/``bytearray``/``memoryview``, or a ``uint8`` numpy
  array (H, W) / (H, W, 3) / (H, W, 4).

EXIF orientation is applied (as photo viewers do; the Qwen processor does not), a decompression-bomb limit
(``max_pixels``) is enforced before pixel data is decoded, and the first frame of multi-frame files is used.
Every failure raises :class:`ImageLoadError` (a ``ValueError``) whose message contains the caller's
``context`` (e.g. ``"dataset=virl39k split=train row=17 image=0"``) and the reason, so one bad row in a
39k-row dataset names itself instead of killing a run with a bare PIL traceback.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageLoadError", "load_image", "load_images", "pixel_range_size", "resize_into_pixel_range"]

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_ORIENTATION_TAG = int(ExifTags.Base.Orientation)


class ImageLoadError(ValueError):
    """An image could not be decoded; the message names the context (dataset, row) and the reason."""


def _fail(reason: str, context: str) -> ImageLoadError:
    where = f" ({context})" if context else ""
    return ImageLoadError(f"Could not load image{where}: {reason}")


def _check_size(img: Image.Image, max_pixels: int, context: str) -> None:
    width, height = img.size
    if width * height > max_pixels:
        raise _fail(
            f"{width}x{height} = {width * height} pixels exceeds the decompression-bomb limit "
            f"max_pixels={max_pixels}",
            context,
        )
    if width == 0 or height == 0:
        raise _fail(f"empty image of size {width}x{height}", context)


def _open_bytes(data: bytes, max_pixels: int, context: str) -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG, ...) fully, checking the pixel limit before decoding."""
    try:
        with warnings.catch_warnings():
            # our own max_pixels check replaces PIL's global MAX_IMAGE_PIXELS warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_size(img, max_pixels, context)
            img.load()  # Image.open is lazy: force decoding here so corrupt data fails here
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as err:
        raise _fail(f"decompression bomb: {err}", context) from err
    except UnidentifiedImageError as err:
        raise _fail(f"not a recognised image format ({len(data)} bytes)", context) from err
    except (OSError, SyntaxError, ValueError) as err:  # truncated / corrupt files
        raise _fail(f"corrupt image data ({type(err).__name__}: {err})", context) from err
    return img


def _read_path(path: str | os.PathLike, context: str) -> bytes:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise _fail(f"file not found: {path!r}", context)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise _fail(f"cannot read {path!r}: {err}", context) from err


def _scale_to_uint8(img: Image.Image) -> Image.Image:
    """Map a high-bit-depth greyscale image (``I;16*``, ``I``, ``F``) to an 8-bit ``L`` image.

    ``I;16*`` use the full 16-bit range (x / 257). ``I`` and ``F`` keep values already in [0, 255] (``F`` in
    [0, 1] is multiplied by 255), use x / 257 for [0, 65535], and otherwise min-max normalise.
    """
    arr = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16"):
        out = arr / 257.0
    else:
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
            out = arr * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            out = arr
        elif lo >= 0.0 and hi <= 65535.0:
            out = arr / 257.0
        else:
            out = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="L")


def _to_rgb(img: Image.Image, context: str) -> Image.Image:
    """Apply EXIF orientation and convert any mode to RGB (alpha composited on white)."""
    try:
        orientation = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # broken EXIF blocks must not lose an otherwise valid image
        orientation = 1
    if orientation not in (None, 1):
        with contextlib.suppress(Exception):
            img = ImageOps.exif_transpose(img)
    mode = img.mode
    try:
        if mode == "RGB":
            return img
        if mode in _ALPHA_MODES or "transparency" in img.info:
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        if mode.startswith("I") or mode == "F":
            return _scale_to_uint8(img).convert("RGB")
        return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, ...
    except (ValueError, OSError) as err:
        raise _fail(f"cannot convert mode {mode!r} to RGB ({err})", context) from err


def _from_array(arr: np.ndarray, context: str) -> Image.Image:
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise _fail(
            f"numpy arrays must be uint8 of shape (H, W), (H, W, 3) or (H, W, 4); got {arr.dtype} {arr.shape}",
            context,
        )
    return Image.fromarray(arr)


def load_image(obj: Any, *, max_pixels: int = 64_000_000, context: str = "") -> Image.Image:
    """Decode ``obj`` into an RGB ``PIL.Image`` (see the module docstring for the accepted forms).

    Args:
        obj: PIL image, ``{"bytes", "path"}`` dict, path, raw bytes or uint8 numpy array.
        max_pixels: refuse images with more pixels (decompression-bomb guard), checked before decoding.
        context: where the image comes from, included in every error message.

    Raises:
        ImageLoadError: the image is missing, corrupt, too large or of an unsupported type.
    """
    if isinstance(obj, Image.Image):
        img = obj
        _check_size(img, max_pixels, context)
    elif isinstance(obj, Mapping):
        data, path = obj.get("bytes"), obj.get("path")
        if data:
            img = _open_bytes(bytes(data), max_pixels, context)
        elif path:
            img = _open_bytes(_read_path(path, context), max_pixels, context)
        else:
            raise _fail(f"image dict has neither 'bytes' nor 'path' (keys: {sorted(obj)})", context)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        if len(obj) == 0:
            raise _fail("empty bytes", context)
        img = _open_bytes(bytes(obj), max_pixels, context)
    elif isinstance(obj, (str, os.PathLike)):
        img = _open_bytes(_read_path(obj, context), max_pixels, context)
    elif isinstance(obj, np.ndarray):
        img = _from_array(obj, context)
        _check_size(img, max_pixels, context)
    elif obj is None:
        raise _fail("image is None", context)
    else:
        raise _fail(f"unsupported image type {type(obj).__name__}", context)
    return _to_rgb(img, context)


def load_images(value: Any, context: str = "", *, max_pixels: int = 64_000_000) -> list[Image.Image]:
    """Decode a single image or a list/tuple of images into a list of RGB images.

    ``None`` gives an empty list (a text-only row). Each image's error context gets ``image=<j>`` appended.
    """
    if value is None:
        return []
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    sep = " " if context else ""
    return [
        load_image(item, max_pixels=max_pixels, context=f"{context}{sep}image={j}")
        for j, item in enumerate(items)
    ]


def pixel_range_size(
    width: int, height: int, min_pixels: int | None, max_pixels: int | None
) -> tuple[int, int]:
    """The size the released data loader (``verl/utils/dataset.py`` ``process_image``) resizes a
    ``width`` x ``height`` image to before the processor sees it: scaled down into ``max_pixels``, then up to
    ``min_pixels``, by sqrt(bound / pixels) on both sides, each side truncated to an int (so the result can
    fall a little short of ``min_pixels``; the processor's own resize then rounds to its patch grid)."""
    if max_pixels is not None and width * height > max_pixels:
        factor = math.sqrt(max_pixels / (width * height))
        width, height = int(width * factor), int(height * factor)
    if min_pixels is not None and width * height < min_pixels:
        factor = math.sqrt(min_pixels / (width * height))
        width, height = int(width * factor), int(height * factor)
    return width, height


def resize_into_pixel_range(img: Image.Image, min_pixels: int | None, max_pixels: int | None) -> Image.Image:
    """``img`` resized with PIL (its default resampling, as the released loader) to :func:`pixel_range_size`;
    the same object when the size does not change."""
    size = pixel_range_size(img.width, img.height, min_pixels, max_pixels)
    return img if size == img.size else img.resize(size)
