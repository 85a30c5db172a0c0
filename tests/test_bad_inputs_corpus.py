"""Bad-input corpus: >= 20 kinds of bad rows and bad model outputs, each through the path a run takes.

Data rows go through ``PapoDataModule`` (setup -> ``PromptDataset`` -> collate -> the loader); model outputs go
through ``score_batch`` (what the rollout calls). Every kind either loads correctly (odd but valid images),
or fails with an error naming the dataset, split and row (``data.on_bad_row=error``, the default), or -- with
``data.on_bad_row=skip`` -- is dropped with a logged, counted skip. Never a silent drop.

The unit behaviour is tested where it is implemented; this module checks the end-to-end handling:

======================================  =================================================================
kind                                    unit tests
======================================  =================================================================
truncated / corrupt image bytes         test_data_images.py::test_corrupt_bytes_error_names_context
missing path, empty {bytes,path} dict   test_data_images.py::test_missing_path_and_bad_inputs
{bytes, path} dicts                     test_data_images.py::test_bytes_path_dict_forms
grey / RGBA / palette / CMYK / 16-bit   test_data_images.py::test_{greyscale_and_bilevel,rgba_composited_on_white,
                                        palette_modes,cmyk,high_bit_depth_scaled_to_8_bit}
oversized (decompression bomb)          test_data_images.py::test_decompression_bomb_limit
EXIF rotation                           test_data_images.py::test_exif_orientation_applied
missing columns                         test_data_datamodule.py::test_missing_column_error_names_dataset_and_columns
100k-character response                 test_rewards.py::TestScoreResponse::test_100k_response_under_a_second
LaTeX bomb, deep nesting                test_rewards.py::TestGradeBounded::test_bombs_return_quickly
reward function that raises             test_rewards.py::TestScoreBatch::test_raise_mode_names_index_and_previews
======================================  =================================================================

A reward function that raises inside a real run is tested end to end (checkpoint saved on the exception)
in :func:`test_reward_exception_in_a_run_keeps_a_checkpoint`.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, List, Value
from PIL import Image

from papo.data.datamodule import BadRowError, PapoDataModule
from papo.data.images import ImageLoadError
from papo.data.masking import RandomPatchMask
from papo.rewards import get_reward_fn, score_batch

N_ROWS, BAD = 6, 3  # every corpus dataset: 6 rows, row 3 is the odd one
NAME = "corpus"


# ------------------------------------------------------------------------------------------------ images
def _encode(img: Image.Image, fmt: str = "PNG", **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _noise_png(size: int = 48) -> bytes:
    arr = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return _encode(Image.fromarray(arr))


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees
    return _encode(Image.new("RGB", (40, 20), (200, 10, 10)), "JPEG", exif=exif.tobytes())


def _palette() -> bytes:
    return _encode(Image.new("RGB", (20, 20), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE))


def _sixteen_bit() -> bytes:
    return _encode(Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16)))


GOOD_PNG = _encode(Image.new("RGB", (28, 28), (90, 90, 90)))
IMAGE_STRUCT = Features(
    {
        "images": List({"bytes": Value("binary"), "path": Value("string")}),
        "problem": Value("string"),
        "answer": Value("string"),
    }
)


def _image_rows(bad_image: dict[str, Any]) -> Dataset:
    rows = [
        {"images": [{"bytes": GOOD_PNG, "path": None}], "problem": f"q{i}", "answer": str(i)}
        for i in range(N_ROWS)
    ]
    rows[BAD]["images"] = [bad_image]
    return Dataset.from_list(rows, features=IMAGE_STRUCT)


def _text_rows(column: str, bad_value: Any, values: Callable[[int], Any] | None = None) -> Dataset:
    rows = [
        {"images": [{"bytes": GOOD_PNG, "path": None}], "problem": f"q{i}", "answer": str(i)}
        for i in range(N_ROWS)
    ]
    if values is not None:
        for i, r in enumerate(rows):
            r[column] = values(i)
    rows[BAD][column] = bad_value
    return Dataset.from_list(rows)


def _dm(ds: Dataset, on_bad_row: str = "error", **kwargs: Any) -> PapoDataModule:
    dm = PapoDataModule(
        train_dataset=ds,
        masking=RandomPatchMask(),
        batch_size=2,
        dataset_name=NAME,
        on_bad_row=on_bad_row,
        **kwargs,
    )
    dm.setup("fit")
    return dm


# (kind, dataset builder, what the error says) -- rows that cannot be used
BAD_ROWS: list[tuple[str, Callable[[], Dataset], str]] = [
    ("truncated_image", lambda: _image_rows({"bytes": _noise_png()[:200], "path": None}), "corrupt"),
    (
        "corrupt_image_bytes",
        lambda: _image_rows({"bytes": b"\x00garbage" * 9, "path": None}),
        "not a recognised",
    ),
    ("png_header_only", lambda: _image_rows({"bytes": b"\x89PNG\r\n\x1a\n", "path": None}), "image"),
    ("missing_path", lambda: _image_rows({"bytes": None, "path": "/no/such/image.png"}), "no such|not found"),
    ("empty_image_dict", lambda: _image_rows({"bytes": None, "path": None}), "neither 'bytes' nor 'path'"),
    (
        "decompression_bomb",
        lambda: _image_rows({"bytes": _encode(Image.new("L", (5000, 4000))), "path": None}),
        "decompression-bomb limit",
    ),
    (
        "extreme_aspect_ratio",
        lambda: _image_rows({"bytes": _encode(Image.new("RGB", (600, 2))), "path": None}),
        "aspect ratio",
    ),
    ("answer_none", lambda: _text_rows("answer", None), "answer is missing|answer is missing or empty"),
    ("answer_empty", lambda: _text_rows("answer", "  "), "answer is empty|answer is missing or empty"),
    ("answer_nan", lambda: _text_rows("answer", float("nan"), float), "answer is nan"),
    ("problem_none", lambda: _text_rows("problem", None), "problem is missing"),
    ("problem_empty", lambda: _text_rows("problem", ""), "problem is empty|problem is missing or empty"),
    (
        "problem_not_utf8",
        lambda: _text_rows("problem", b"caf\xe9 \xff", lambda i: f"q{i}".encode()),
        "problem is not valid UTF-8|problem is missing or empty",
    ),
]


@pytest.mark.parametrize(("kind", "build", "reason"), BAD_ROWS, ids=[k for k, _, _ in BAD_ROWS])
def test_bad_row_error_names_dataset_and_row(kind: str, build: Callable, reason: str) -> None:
    """Default (data.on_bad_row=error): the first use of the row raises, naming dataset, split and row."""
    dm = _dm(build(), max_pixels=10_000_000)
    with pytest.raises((BadRowError, ImageLoadError)) as err:
        for _ in dm.train_dataloader():
            pass
    message = str(err.value)
    assert f"dataset={NAME} split=train row={BAD}" in message, message
    assert any(r in message for r in reason.split("|")), message


@pytest.mark.parametrize(("kind", "build", "reason"), BAD_ROWS, ids=[k for k, _, _ in BAD_ROWS])
def test_bad_row_skip_is_counted_and_logged(kind: str, build: Callable, reason: str, caplog) -> None:
    """data.on_bad_row=skip: the row never reaches a batch; the skip is logged with the row and counted
    (at setup by the scan, papo.data.scan, or at decode time as batch["skipped_rows"])."""
    caplog.set_level(logging.INFO)
    dm = _dm(build(), on_bad_row="skip", max_pixels=10_000_000)
    seen, skipped = [], []
    for batch in dm.train_dataloader():
        seen += batch["uid"]
        skipped += batch.get("skipped_rows", [])
    scanned_out = N_ROWS - len(dm.datasets["train"])  # dropped by the setup scan
    assert f"train-{BAD}" not in seen
    assert scanned_out + len(skipped) == 1, (scanned_out, skipped)
    assert len(seen) + len(skipped) == len(dm.datasets["train"]) - len(dm.datasets["train"]) % 2
    log_text = caplog.text + " ".join(skipped)
    assert f"row={BAD}" in log_text or f"row {BAD}:" in log_text, log_text
    assert "skip" in log_text


def test_every_row_of_a_batch_bad_is_an_error_not_an_empty_batch() -> None:
    rows = [{"images": [{"bytes": b"junk", "path": None}], "problem": "q", "answer": "1"}] * 4
    dm = PapoDataModule(
        train_dataset=Dataset.from_list(rows, features=IMAGE_STRUCT),
        masking=None,
        batch_size=2,
        dataset_name=NAME,
    )
    dm.setup("fit")
    for ds in dm.datasets.values():  # decode-time skip (the scan only opens headers)
        ds.on_bad_row = "skip"
    with pytest.raises(BadRowError, match=r"every row of this batch is bad \(2 skipped\).*dataset=corpus"):
        next(iter(dm.train_dataloader()))


# (kind, encoded image, expected RGB size, a pixel check) -- odd but valid images: decoded correctly
ODD_IMAGES: list[tuple[str, Any, tuple[int, int], Callable[[Image.Image], bool]]] = [
    (
        "greyscale",
        _encode(Image.new("L", (20, 20), 77)),
        (20, 20),
        lambda im: im.getpixel((0, 0)) == (77, 77, 77),
    ),
    (
        "rgba_transparent",
        _encode(Image.new("RGBA", (20, 20), (0, 0, 0, 0))),
        (20, 20),
        lambda im: im.getpixel((0, 0)) == (255, 255, 255),  # composited on white, not black
    ),
    ("palette", _palette(), (20, 20), lambda im: im.getpixel((0, 0)) == (10, 200, 30)),
    (
        "cmyk_jpeg",
        _encode(Image.new("CMYK", (20, 20), (0, 0, 0, 0)), "JPEG"),
        (20, 20),
        lambda im: min(im.getpixel((0, 0))) > 240,
    ),
    ("sixteen_bit", _sixteen_bit(), (20, 20), lambda im: im.getpixel((0, 0)) == (255, 255, 255)),
    (
        "one_by_one",
        _encode(Image.new("RGB", (1, 1), (5, 6, 7))),
        (1, 1),
        lambda im: im.getpixel((0, 0)) == (5, 6, 7),
    ),
    ("exif_rotated", _exif_rotated(), (20, 40), lambda im: im.getpixel((10, 20))[0] > 150),
]


def test_odd_but_valid_images_decode_to_rgb_and_reach_the_model_inputs(tiny_processor) -> None:
    """Grey, RGBA, palette, CMYK, 16-bit, 1x1 and EXIF-rotated images, given as {bytes, path} dicts
    (bytes win) and as a path-only dict: RGB at the right size, masked, and encodable by the processor."""
    from papo.rollout.inputs import encode_prompts

    rows = [
        {"images": [{"bytes": data, "path": "ignored.png"}], "problem": kind, "answer": "1"}
        for kind, data, _, _ in ODD_IMAGES
    ]
    ds = Dataset.from_list(rows + rows[:1], features=IMAGE_STRUCT)  # 8 rows: full batches of 2
    dm = PapoDataModule(val_dataset=ds, masking=RandomPatchMask(), val_batch_size=8, dataset_name=NAME)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    for (kind, _, size, ok), imgs, masked in zip(
        ODD_IMAGES, batch["images"], batch["images_masked"], strict=False
    ):
        assert imgs[0].mode == "RGB" and imgs[0].size == size, kind
        assert ok(imgs[0]), (kind, imgs[0].getpixel((0, 0)))
        assert masked[0].size == size, kind
    texts = [f"<|vision_start|><|image_pad|><|vision_end|>{p}" for p in batch["prompt"]]
    enc = encode_prompts(tiny_processor, texts, batch["images"])
    assert enc["image_grid_thw"].shape[0] == len(rows) + 1
    # a path-only dict is read from disk
    assert batch["images"][0][0].size == (20, 20)


def test_path_only_image_dict(tmp_path: Path) -> None:
    path = tmp_path / "img.png"
    path.write_bytes(_encode(Image.new("RGB", (9, 7), (1, 2, 3))))
    dm = _dm(_image_rows({"bytes": None, "path": str(path)}))
    assert dm.datasets["train"][BAD]["images"][0].size == (9, 7)


def test_missing_columns_name_dataset_and_columns() -> None:
    ds = Dataset.from_list([{"problem": "q", "answer": "1"}] * 4)
    with pytest.raises(
        ValueError, match=r"Dataset 'corpus' \(train split\) is missing required column\(s\) \['images'\]"
    ):
        _dm(ds)


def test_numeric_answers_are_text() -> None:
    dm = _dm(_text_rows("answer", 3, lambda i: i))
    assert dm.datasets["train"][BAD]["answer"] == "3"


def test_non_string_answer_column() -> None:
    """Arrow columns are homogeneous, so a non-text answer type (lists, bools) makes EVERY row bad: an error
    naming the first row, and with on_bad_row=skip an error too (all rows dropped), never an empty run."""
    ds = _text_rows("answer", ["1", "2"], lambda i: [str(i)])
    with pytest.raises(
        BadRowError, match=r"dataset=corpus split=train row=\d+ uid=train-\d+\): answer must be a string"
    ):
        next(iter(_dm(ds).train_dataloader()))
    with pytest.raises(
        ValueError, match=r"no usable rows.*dropped_rows.jsonl.*answer must be a string .*got list"
    ):
        _dm(ds, on_bad_row="skip")


def test_question_longer_than_max_prompt_length_is_filtered_with_a_count(tiny_processor, caplog) -> None:
    """Exact token counts (the model's processor); over-long prompts are dropped at setup with a logged count."""
    from papo.rollout.prompt_length import PromptLength

    caplog.set_level(logging.INFO)
    ds = _text_rows("problem", "why? " * 400)
    dm = _dm(ds, max_prompt_length=120, prompt_length_fn=PromptLength(tiny_processor))
    assert len(dm.datasets["train"]) == N_ROWS - 1
    assert f"train-{BAD}" not in {dm.datasets["train"][i]["uid"] for i in range(N_ROWS - 1)}
    assert "filtered 1 prompt(s) longer than max_prompt_length=120" in caplog.text


# ------------------------------------------------------------------------------------------ model outputs
def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


REWARD = get_reward_fn("math", format_weight=0.1, timeout_s=1.0)
BAD_RESPONSES = [
    ("response_100k_chars", "<think>" + "wait " * 20_000 + "</think> \\boxed{4}", "4", 1.0),
    ("response_100k_open_boxes", "\\boxed{" * 20_000, "4", 0.0),
    ("latex_frac_bomb", "<think>x</think> \\boxed{" + "\\frac{" * 5000 + "}", "1", 0.1),
    ("latex_power_tower", "<think>x</think> \\boxed{9^{9^{9^{9}}}}", "1", 0.1),
    ("deeply_nested_parens", "<think>x</think> \\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}", "1", 0.1),
    ("factorial_bomb", "<think>x</think> \\boxed{999999999!}", "1", 0.1),
    (
        "python_payload",
        "<think>x</think> \\boxed{__import__('os').system('touch /tmp/papo_pwned')}",
        "0",
        0.1,
    ),
    ("non_utf8_decoded_junk", "<think>\ufffd\ufffd</think> \\boxed{\udcff}", "1", 0.1),
]


@pytest.mark.parametrize(
    ("kind", "response", "truth", "overall"), BAD_RESPONSES, ids=[k for k, *_ in BAD_RESPONSES]
)
def test_bad_model_output_scores_in_bounded_time(
    kind: str, response: str, truth: str, overall: float
) -> None:
    score_batch(["\\boxed{\\frac{1}{2}}"], ["0.5"], REWARD)  # warm-up: the grading worker starts
    (scores, n_err), seconds = _timed(lambda: score_batch([response], [truth], REWARD))
    assert seconds < 3.0, seconds
    assert n_err == 0
    assert scores["overall"][0] == pytest.approx(overall)
    assert not Path("/tmp/papo_pwned").exists()


def test_reward_function_that_raises_names_the_item_or_is_counted() -> None:
    def fragile(response: str, truth: str) -> dict[str, float]:
        if "boom" in response:
            raise ZeroDivisionError("reward bug")
        return {"overall": 1.0}

    with pytest.raises(RuntimeError, match=r"item 1: ZeroDivisionError: reward bug; response='boom'"):
        score_batch(["ok", "boom"], ["1", "2"], fragile, on_error="raise")
    scores, n_err = score_batch(["ok", "boom", "nan"], ["1", "2", "3"], fragile, on_error="zero")
    assert n_err == 1 and scores["overall"] == [1.0, 0.0, 1.0]
    nan_fn = lambda r, t: {"overall": math.nan}  # noqa: E731
    assert score_batch(["x"], ["1"], nan_fn, on_error="zero") == (
        {"overall": [0.0], "accuracy": [0.0], "format": [0.0]},
        1,
    )


# ---------------------------------------------------------------------------------- end to end, in a run
_CALLS = {"n": 0}


def _raises_on_third_batch(response: str, truth: str, **kwargs: Any) -> dict[str, float]:
    _CALLS["n"] += 1
    if _CALLS["n"] > 2 * 16:  # batches of 4 prompts x 4 samples: steps 1 and 2 score, step 3 raises
        raise ValueError("reward service down")
    return {"overall": 0.5, "accuracy": 0.0, "format": 1.0}


@pytest.mark.slow
def test_reward_exception_in_a_run_keeps_a_checkpoint(make_cfg, tmp_path: Path) -> None:
    """A reward function that raises mid-run (reward.on_error=raise) stops the run with an error naming the
    item, and the state at the exception is checkpointed (ModelCheckpoint save_on_exception): resumable."""
    from papo.pipeline import train
    from papo.rewards.scoring import REWARD_FUNCTIONS

    REWARD_FUNCTIONS.register("test_raises")(_raises_on_third_batch)
    _CALLS["n"] = 0
    try:
        cfg = make_cfg(
            [
                "reward.name=test_raises",
                "trainer.max_steps=4",
                "callbacks.model_checkpoint.every_n_train_steps=10",
                "logger=csv",
                "validate_before=false",
                "validate_after=false",
                "++num_threads=1",
            ]
        )
        with pytest.raises(
            RuntimeError, match="reward function failed on item 0: ValueError: reward service down"
        ):
            train(cfg)
    finally:
        REWARD_FUNCTIONS._entries.pop("test_raises", None)
    ckpts = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert ckpts, "no checkpoint written on the exception"
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 2


@pytest.fixture(scope="module")
def tiny_processor(cache_dir: Path):
    """The embedded model's processor, from the session-wide model cache (built once per session)."""
    from omegaconf import open_dict
    from transformers import AutoProcessor

    from conftest import TINY_OVERRIDES, compose_cfg
    from papo.data.synthetic import synthetic_corpus
    from papo.models.loading import set_pixel_bounds
    from papo.pipeline import resolve_model_dir

    cfg = compose_cfg(TINY_OVERRIDES)
    with open_dict(cfg):
        cfg.paths.cache_dir = str(cache_dir)
        cfg.model.cache_dir = str(cache_dir / "models")
    path = resolve_model_dir(cfg.model, corpus_fn=synthetic_corpus)
    processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
    set_pixel_bounds(processor, cfg.model.min_pixels, cfg.model.max_pixels)
    return processor
