"""load_image: every image representation and mode -> RGB, errors that name their context."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from papo.data.images import ImageLoadError, load_image, load_images


def _png(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _px(img: Image.Image, xy=(0, 0)) -> tuple:
    assert img.mode == "RGB"
    return img.getpixel(xy)


def test_rgb_passthrough():
    img = Image.new("RGB", (5, 4), (1, 2, 3))
    out = load_image(img)
    assert out.size == (5, 4) and _px(out) == (1, 2, 3)


def test_rgba_composited_on_white():
    img = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (0, 0, 0, 255))
    out = load_image(img)
    assert _px(out, (0, 0)) == (255, 255, 255)  # transparent -> white, not black
    assert _px(out, (1, 0)) == (0, 0, 0)
    half = load_image(Image.new("RGBA", (1, 1), (0, 0, 0, 128)))
    assert 120 <= _px(half)[0] <= 135


def test_la_and_pa_modes():
    assert _px(load_image(Image.new("LA", (1, 1), (0, 0)))) == (255, 255, 255)
    pa = Image.new("RGBA", (1, 1), (255, 0, 0, 0)).convert("PA")
    assert _px(load_image(pa)) == (255, 255, 255)


def test_palette_modes():
    p = Image.new("RGB", (2, 1), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert _px(load_image(p)) == (10, 200, 30)
    # palette with a transparent index (PNG tRNS): composite on white
    pt = Image.new("P", (1, 1), 0)
    pt.putpalette([0, 0, 0] * 256)
    pt.info["transparency"] = 0
    assert _px(load_image(Image.open(io.BytesIO(_png(pt))))) == (255, 255, 255)


def test_greyscale_and_bilevel():
    assert _px(load_image(Image.new("L", (1, 1), 77))) == (77, 77, 77)
    assert _px(load_image(Image.new("1", (1, 1), 1))) == (255, 255, 255)


def test_cmyk():
    assert _px(load_image(Image.new("CMYK", (1, 1), (0, 0, 0, 0)))) == (255, 255, 255)
    assert _px(load_image(Image.new("CMYK", (1, 1), (255, 0, 0, 0)))) == (0, 255, 255)


def test_high_bit_depth_scaled_to_8_bit():
    i16 = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16))
    assert i16.mode.startswith("I;16")
    out = load_image(i16)
    assert [_px(out, (x, 0))[0] for x in range(3)] == [0, 100, 255]
    i32 = Image.fromarray(np.array([[0, 1000, 2000]], dtype=np.int32))
    assert i32.mode == "I"
    assert [_px(load_image(i32), (x, 0))[0] for x in range(3)] == [0, 4, 8]  # / 257 for [0, 65535]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert [_px(load_image(f), (x, 0))[0] for x in range(3)] == [0, 128, 255]  # [0, 1] floats * 255
    # a 16-bit PNG file round trip
    assert _px(load_image(_png(i16)), (2, 0)) == (255, 255, 255)


def test_bytes_path_dict_forms(tmp_path):
    img = Image.new("RGB", (3, 2), (9, 8, 7))
    data = _png(img)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    for obj in (
        data,
        bytearray(data),
        {"bytes": data, "path": None},
        {"bytes": None, "path": str(path)},
        str(path),
        path,
    ):
        out = load_image(obj)
        assert out.size == (3, 2) and _px(out) == (9, 8, 7), type(obj)
    # bytes win over a (stale) path, as in datasets' storage
    assert _px(load_image({"bytes": data, "path": "/nonexistent.png"})) == (9, 8, 7)


def test_numpy_arrays():
    assert _px(load_image(np.full((2, 3, 3), 5, dtype=np.uint8))) == (5, 5, 5)
    with pytest.raises(ImageLoadError, match="uint8"):
        load_image(np.zeros((2, 3), dtype=np.float64), context="ctx")


def test_exif_orientation_applied():
    img = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _png(img, "JPEG", exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).size == (20, 10)
    assert load_image(data).size == (10, 20)


def test_corrupt_bytes_error_names_context():
    with pytest.raises(ImageLoadError, match="dataset=virl39k row=17") as err:
        load_image(b"definitely not an image", context="dataset=virl39k row=17")
    assert isinstance(err.value, ValueError)
    assert "not a recognised image format" in str(err.value)
    with pytest.raises(ImageLoadError, match=r"row=2.*corrupt"):
        load_image(b"\x89PNG\r\n\x1a\nnot really a png", context="row=2")
    truncated = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(ImageLoadError, match=r"row=3.*corrupt"):
        load_image(truncated[: len(truncated) // 2], context="row=3")


def test_missing_path_and_bad_inputs():
    with pytest.raises(ImageLoadError, match=r"ctx.*file not found: '/no/such/file.png'"):
        load_image("/no/such/file.png", context="ctx")
    with pytest.raises(ImageLoadError, match="neither 'bytes' nor 'path'"):
        load_image({"bytes": None, "path": None})
    with pytest.raises(ImageLoadError, match="unsupported image type int"):
        load_image(3)
    with pytest.raises(ImageLoadError, match="None"):
        load_image(None)


def test_decompression_bomb_limit():
    data = _png(Image.new("RGB", (100, 100)))
    with pytest.raises(ImageLoadError, match="max_pixels=5000"):
        load_image(data, max_pixels=5000, context="big")
    with pytest.raises(ImageLoadError, match="exceeds"):
        load_image(Image.new("RGB", (100, 100)), max_pixels=5000)
    assert load_image(data, max_pixels=10_000).size == (100, 100)


def test_load_images_single_list_none_and_context():
    img = Image.new("L", (2, 2), 3)
    assert len(load_images(img)) == 1
    assert [i.mode for i in load_images([img, _png(img)])] == ["RGB", "RGB"]
    assert load_images(None) == []
    with pytest.raises(ImageLoadError, match="dataset=x row=1 image=1"):
        load_images([img, b"garbage"], context="dataset=x row=1")
