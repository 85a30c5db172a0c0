"""Hub / local-file loading (papo.data.hub), the setup scan (bad rows, over-long prompts; papo.data.scan) and
the offline handwritten-digits task (papo.data.digits). Local files stand in for hub datasets: the same
loader, mapping and decoding run; only the download is skipped."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from PIL import Image

from papo.data.datamodule import PapoDataModule
from papo.data.digits import build_digits_split, compose_digits, digit_pools
from papo.data.hub import load_split, resolve_source
from papo.data.images import load_images
from papo.data.masking import RandomPatchMask
from papo.data.scan import image_size, scan_split
from papo.rollout.prompt_length import PromptLength


def _png(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_vlm_processor(cache_dir: Path):
    """The embedded Qwen2.5-VL's processor (the same cached build the pipeline uses)."""
    from transformers import AutoProcessor

    from papo.data.synthetic import synthetic_corpus
    from papo.models.stand_in import ensure_stand_in

    path = ensure_stand_in("qwen2_5_vl", cache_dir / "models", corpus_fn=synthetic_corpus)
    return AutoProcessor.from_pretrained(str(path), local_files_only=True)


@pytest.fixture(scope="module")
def digits_train() -> Dataset:
    return build_digits_split("train", 12, seed=0)


# ----------------------------------------------------------------------------------------------- loader
def test_parquet_with_image_bytes_roundtrips(tmp_path: Path, digits_train: Dataset) -> None:
    path = tmp_path / "train.parquet"
    digits_train.select_columns(["images", "problem", "answer"]).to_parquet(str(path))
    ds = load_split(str(path), defaults={"task_type": "digits"})
    assert len(ds) == 12 and {"images", "problem", "answer", "task_type"} <= set(ds.column_names)
    row = ds.with_format("arrow")[0:1].to_pylist()[0]
    assert isinstance(row["images"], list) and row["images"][0]["bytes"]  # undecoded {bytes, path}
    imgs = load_images(row["images"])
    assert imgs[0].mode == "RGB" and imgs[0].size == (56, 56)
    assert row["problem"] == digits_train[0]["problem"] and row["task_type"] == "digits"


def test_jsonl_with_image_folder_and_column_mapping(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    rows = []
    for i in range(3):
        Image.new("L", (30 + i, 20), 100 + i).save(tmp_path / "imgs" / f"{i}.png")  # greyscale on disk
        rows.append({"question": f"<image>How many {i}?", "solution": i, "image": f"imgs/{i}.png"})
    rows.append({"question": "Two images?", "solution": "7", "image": ["imgs/0.png", "imgs/1.png"]})
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:3]) + "\n")
    mapping = {"question": "problem", "solution": "answer", "image": "images"}
    ds = load_split(str(tmp_path / "data.jsonl"), columns=mapping)
    # an integer answer column is converted value by value; bad_value names values that are not text
    assert set(ds.column_names) == {"problem", "answer", "images", "bad_value"}
    assert ds["bad_value"] == [None] * 3
    assert ds[0]["problem"] == "How many 0?"  # <image> placeholder stripped
    assert ds[1]["answer"] == "1"  # ints cast to strings
    img = load_images(ds[2]["images"])[0]
    assert img.mode == "RGB" and img.size == (32, 20)
    # multi-image rows: a list per row, every image resolved against the folder
    (tmp_path / "multi.jsonl").write_text(json.dumps(rows[3]) + "\n")
    multi = load_split(str(tmp_path / "multi.jsonl"), columns=mapping)
    assert [im.size for im in load_images(multi[0]["images"])] == [(30, 20), (31, 20)]


def test_saved_dataset_dir_glob_and_limit(tmp_path: Path, digits_train: Dataset) -> None:
    digits_train.save_to_disk(str(tmp_path / "saved"))
    assert len(load_split(str(tmp_path / "saved"), limit=5)) == 5
    for i in range(2):
        digits_train.select(range(i * 6, i * 6 + 6)).to_parquet(str(tmp_path / f"part{i}.parquet"))
    assert len(load_split(str(tmp_path / "part*.parquet"))) == 12


def test_a_limit_that_cuts_rows_is_logged(
    tmp_path: Path, digits_train: Dataset, caplog: pytest.LogCaptureFixture
) -> None:
    """A held-out val file under data=local_files keeps its limit (64) but never silently: the cut is logged."""
    from conftest import compose_cfg

    path = tmp_path / "val.parquet"
    digits_train.select_columns(["images", "problem", "answer"]).to_parquet(str(path))
    with caplog.at_level(logging.INFO, logger="papo.data.hub"):
        assert len(load_split(str(path), limit=5)) == 5
        assert len(load_split(str(path), limit=50)) == 12
    cuts = [r.getMessage() for r in caplog.records if "kept the first" in r.getMessage()]
    assert cuts == [
        f"data source {path} (train): kept the first 5 of 12 rows (limit=5; limit=null keeps all)"
    ]
    cfg = compose_cfg(["data=local_files", "data.train_dataset.source=/x/train.jsonl"])
    assert cfg.data.val_dataset.source == "/x/train.jsonl" and cfg.data.val_dataset.limit == 64


def test_uncached_hub_dataset_offline_says_how_to_allow_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub access is off unless PAPO_ALLOW_HUB=1 (papo.utils.run_env): an uncached hub dataset must say so,
    not only datasets' "OfflineModeIsEnabled". Offline mode fails fast: nothing is downloaded."""
    from papo.data.hub import HUB_OFFLINE_HINT, HubOfflineError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(HubOfflineError, match="PAPO_ALLOW_HUB=1") as info:
        load_split("papo-tests/not-cached-anywhere", split="train")
    assert HUB_OFFLINE_HINT in str(info.value) and "papo-tests/not-cached-anywhere" in str(info.value)
    assert isinstance(info.value, ConnectionError)  # callers catching the original type still do


def test_missing_columns_and_sources_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text(json.dumps({"question": "q", "image": "a.png"}) + "\n")
    with pytest.raises(ValueError, match=r"no column\(s\) \['answer'\].*present columns"):
        load_split(str(tmp_path / "x.jsonl"), columns={"question": "problem", "image": "images"})
    with pytest.raises(ValueError, match="not found"):
        load_split(str(tmp_path / "x.jsonl"), columns={"nope": "problem"})
    with pytest.raises(FileNotFoundError):
        load_split(str(tmp_path / "missing.parquet"))
    assert resolve_source("PAPOGalaxy/PAPO_ViRL39K_train") == ("hub", "PAPOGalaxy/PAPO_ViRL39K_train")


# ----------------------------------------------------------------------------------------------- scan
def _rows_with_bad(bad: dict) -> Dataset:
    good = {"images": [[{"bytes": _png((200, 0, 0)), "path": None}]], "problem": ["What?"], "answer": ["1"]}
    cols = {k: good[k] * 3 for k in good}
    for k, v in bad.items():
        cols[k][1] = v
    return Dataset.from_dict(cols)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"problem": ""}, "problem is empty"),
        ({"answer": None}, "answer is missing"),
        ({"images": [{"bytes": b"not an image", "path": None}]}, "image 0: cannot open image"),
        ({"images": [{"bytes": None, "path": "/no/such/file.png"}]}, "image 0: no such file"),
    ],
)
def test_bad_row_error_names_the_row_or_skip_counts_it(bad: dict, reason: str, caplog) -> None:
    ds = _rows_with_bad(bad)
    with pytest.raises(
        ValueError, match=rf"dataset=d split=train row=1 uid=train-1: {reason}.*on_bad_row=skip"
    ):
        scan_split(ds, dataset_name="d", on_bad_row="error")
    report = scan_split(ds, dataset_name="d", on_bad_row="skip")
    assert report.keep == [0, 2] and report.bad[0][0] == 1 and reason in report.bad[0][1]
    # through the datamodule: skipped, counted and logged; the original row number survives in the uid
    dm = PapoDataModule(train_dataset=ds, batch_size=1, on_bad_row="skip", dataset_name="d")
    with caplog.at_level(logging.INFO, logger="papo.data.datamodule"):
        dm.setup("fit")
    assert len(dm.train_set) == 2 and list(dm.train_set["uid"]) == ["train-0", "train-2"]
    assert any("skipped 1 bad row" in r.message and "row 1" in r.message for r in caplog.records)


def test_prompt_length_is_exact_and_filters_with_a_logged_count(tiny_vlm_processor, caplog) -> None:
    from papo.rollout.inputs import chat_texts, encode_prompts

    proc = tiny_vlm_processor
    lengths = PromptLength(proc)
    prompts = ["How many?", "A much longer question " * 8]
    sizes = [[(56, 56)], [(56, 56), (112, 84)]]
    images = [[Image.new("RGB", s) for s in ss] for ss in sizes]
    enc = encode_prompts(proc, chat_texts(proc, prompts, [1, 2]), images)
    assert lengths(prompts, sizes) == enc["attention_mask"].sum(1).tolist()

    ds = Dataset.from_dict(
        {
            "images": [[{"bytes": _png((0, 0, 0), (56, 56)), "path": None}]] * 2,
            "problem": prompts,
            "answer": ["1", "2"],
        }
    )
    short = lengths([p + "\n\nx" for p in prompts[:1]], [[(56, 56)]])[0]
    dm = PapoDataModule(
        train_dataset=ds,
        batch_size=1,
        prompt_template="{problem}\n\nx",
        max_prompt_length=short,
        prompt_length_fn=lengths,
        dataset_name="lens",
    )
    with caplog.at_level(logging.INFO, logger="papo.data.datamodule"):
        dm.setup("fit")
    assert len(dm.train_set) == 1 and dm.train_set[0]["problem"] == "How many?"
    assert any("filtered 1 prompt(s) longer than max_prompt_length" in r.message for r in caplog.records)


def test_image_size_reads_headers_of_every_form(tmp_path: Path) -> None:
    data = _png((1, 2, 3), (40, 30))
    (tmp_path / "a.png").write_bytes(data)
    for obj in (data, {"bytes": data, "path": None}, str(tmp_path / "a.png"), Image.new("RGB", (40, 30))):
        assert image_size(obj) == (40, 30)
    assert image_size(np.zeros((30, 40, 3), dtype=np.uint8)) == (40, 30)
    with pytest.raises(ValueError, match="decompression-bomb"):
        image_size(data, max_pixels=100)


# ----------------------------------------------------------------------------------------------- digits
def test_digits_task_is_real_offline_and_correct() -> None:
    from sklearn.datasets import load_digits

    pools = digit_pools()
    assert not set(pools["train"]) & set(pools["val"]) and not set(pools["val"]) & set(pools["test"])
    assert sum(len(p) for p in pools.values()) == len(load_digits().target)
    ds = build_digits_split("val", 6, seed=3, images_per_row=2, task_weights={"sum": 1, "read": 1})
    assert ds.column_names == ["images", "problem", "answer", "task_type", "vision_dependency", "uid"]
    for row in ds:
        assert len(load_images(row["images"])) == 2 and row["vision_dependency"] == "high"
        assert row["task_type"] in ("digits_sum", "digits_read") and row["answer"].isdigit()
    same = build_digits_split("val", 6, seed=3, images_per_row=2, task_weights={"sum": 1, "read": 1})
    assert ds["answer"] == same["answer"]  # seeded
    img = compose_digits([np.full((8, 8), 16.0), np.zeros((8, 8))], 56)
    arr = np.asarray(img.convert("L"))
    assert arr[28, 10] == 0 and arr[28, 40] == 255 and arr[2, 10] == 255  # dark ink left, blank right


def test_digits_sum_answers_match_the_labels() -> None:
    import papo.data.digits as digits

    _, labels = digits._digits()
    ds = build_digits_split("train", 20, seed=0, digits_per_image=2)
    rng_rows = []
    for i in range(20):
        rng = np.random.default_rng([0, digits._split_key("train"), i])
        rng.choice(1, p=[1.0])  # the task draw
        picks = rng.choice(digit_pools()["train"], size=2, replace=True)
        rng_rows.append(str(int(labels[picks].sum())))
    assert ds["answer"] == rng_rows


def test_digits_datamodule_masks_every_image() -> None:
    ds = build_digits_split("train", 8, seed=0, images_per_row=2)
    dm = PapoDataModule(
        train_dataset=ds, masking=RandomPatchMask(), batch_size=4, seed=0, dataset_name="digits"
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert [len(x) for x in batch["images"]] == [2] * 4
    assert [len(x) for x in batch["images_masked"]] == [2] * 4
    for real, masked in zip(batch["images"], batch["images_masked"], strict=True):
        for a, b in zip(real, masked, strict=True):
            assert a.size == b.size and not np.array_equal(np.asarray(a), np.asarray(b))


def test_a_local_source_that_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    """Local sources (file, glob, folder) are checked by the config validation, one line each, before the
    processor or any data loads; src/train.py prints them and exits 2. Hub ids are left to the loader."""
    import subprocess
    import sys

    from conftest import ROOT, compose_cfg
    from papo.config_validation import ConfigError, validate_config

    (tmp_path / "empty").mkdir()
    cfg = compose_cfg(
        [
            "data=local_files",
            f"data.train_dataset.source={tmp_path / 'train.jsonl'}",
            f"data.val_dataset.source={tmp_path / 'empty'}",
            f"+data.test_dataset.source={tmp_path / 'part*.parquet'}",
            "+data.test_dataset._target_=papo.data.hub.load_split",
        ]
    )
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    lines = [p for p in err.value.problems if p.startswith("data.")]
    assert [p.split("=")[0] for p in lines] == [
        "data.train_dataset.source",
        "data.val_dataset.source",
        "data.test_dataset.source",
    ], lines
    assert (
        "does not exist" in lines[0]
        and "neither a saved dataset" in lines[1]
        and "no file matches" in lines[2]
    )
    with pytest.raises(ConfigError, match=r"data\.train_dataset\.source is required"):
        validate_config(compose_cfg(["data=local_files"]))
    validate_config(compose_cfg(["data=virl39k"]))  # a hub id: not checked here
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "src" / "train.py"),
            "data=local_files",
            "data.train_dataset.source=/no/such.jsonl",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert (
        "data.train_dataset.source='/no/such.jsonl': local data source '/no/such.jsonl' does not exist"
        in run.stderr
    )
    assert "Traceback" not in run.stderr
