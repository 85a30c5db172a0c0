"""The hostile data corpus: one small dataset per storage format (jsonl, parquet, a ``save_to_disk`` folder)
holding a row of every class of awkward input next to good rows, built on demand (a few kB of tiny images).

:func:`build` writes the corpus for one format under a folder and returns where it is and what a correct
loader must do with each SOURCE row: the good rows reach the model with their values exactly as written,
every bad row is reported with its source row number, its uid and a reason. Classes (issue 14):

=====  ==========================================================  ==================================
row    what                                                        expected
=====  ==========================================================  ==================================
0, 1   good; jsonl: answer 7 written as a number (mixed column)     answers "3", "7"
2      an image the processor refuses (2 x 600 px)                 reported (aspect ratio)
3      answer ""                                                   reported (answer is empty)
4      answer null                                                 reported (answer is missing)
5      no image in a vision dataset                                reported (no image)
6      jsonl: answer [1, 2]; parquet/disk: image file missing      reported
7      truncated image data (its header reads fine)                reported when decoded (corrupt)
9      image given by a relative path only, after the 8th row      good (resolved like the others)
11     jsonl: answer true; parquet/disk: image with no bytes/path  reported
other  good
=====  ==========================================================  ==================================

``build_all_bad`` writes a file where every row is bad.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

FORMATS = ("jsonl", "parquet", "disk")
N_ROWS = 16
GOOD_ANSWERS = {0: "3", 1: "7", 8: "8", 9: "9", 10: "2.5", 12: "12", 13: "13", 14: "14", 15: "15"}
#: source row -> a substring of its reason, per format (rows reported by the setup scan)
SCAN_BAD = {
    "jsonl": {
        2: "aspect ratio",
        3: "answer is empty",
        4: "answer is missing",
        5: "no image",
        6: "got list",
        11: "got bool",
    },
    "parquet": {
        2: "aspect ratio",
        3: "answer is empty",
        4: "answer is missing",
        5: "no image",
        6: "no such file",
        11: "neither 'bytes' nor 'path'",
    },
}
SCAN_BAD["disk"] = SCAN_BAD["parquet"]
#: source row -> reason substring of rows whose image fails only when decoded
DECODE_BAD = {7: "corrupt image data"}


def _png(size: tuple[int, int], seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _images(root: Path) -> dict[str, bytes]:
    """Write the image files under ``root/imgs`` and return their bytes by name."""
    data = {
        "good.png": _png((28, 28)),
        "late.png": _png((30, 24), seed=1),
        "thin.png": _png((2, 600), seed=2),
        "truncated.png": _png((48, 48), seed=3)[:200],
    }
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    for name, blob in data.items():
        (root / "imgs" / name).write_bytes(blob)
    return data


def _answer(row: int) -> Any:
    return GOOD_ANSWERS.get(row, str(row))


def _jsonl_rows() -> list[dict[str, Any]]:
    rows = []
    for i in range(N_ROWS):
        rows.append(
            {
                "uid": f"h{i}",
                "problem": f"How many objects? ({i})",
                "answer": _answer(i),
                "images": ["imgs/good.png"],
            }
        )
    rows[1]["answer"] = 7  # a number in a column of strings: read as a Json column
    rows[2]["images"] = ["imgs/thin.png"]
    rows[3]["answer"] = ""
    rows[4]["answer"] = None
    rows[5]["images"] = []
    rows[6]["answer"] = [1, 2]
    rows[7]["images"] = ["imgs/truncated.png"]
    rows[9]["images"] = ["imgs/late.png"]
    rows[11]["answer"] = True
    return rows


def _struct_rows(images: dict[str, bytes]) -> list[dict[str, Any]]:
    def inline(name: str) -> dict[str, Any]:
        return {"bytes": images[name], "path": None}

    rows = []
    for i in range(N_ROWS):
        rows.append(
            {
                "uid": f"h{i}",
                "problem": f"How many objects? ({i})",
                "answer": str(_answer(i)),
                "images": [inline("good.png")],
            }
        )
    rows[2]["images"] = [inline("thin.png")]
    rows[3]["answer"] = ""
    rows[4]["answer"] = None
    rows[5]["images"] = []
    rows[6]["images"] = [{"bytes": None, "path": "imgs/missing.png"}]
    rows[7]["images"] = [inline("truncated.png")]
    rows[9]["images"] = [{"bytes": None, "path": "imgs/late.png"}]  # path only, after the 8th row
    rows[11]["images"] = [{"bytes": None, "path": None}]
    return rows


def _features() -> Any:
    from datasets import Features, List, Value

    return Features(
        {
            "uid": Value("string"),
            "problem": Value("string"),
            "answer": Value("string"),
            "images": List({"bytes": Value("binary"), "path": Value("string")}),
        }
    )


def build(root: Path, fmt: str) -> Path:
    """Write the corpus in format ``fmt`` (jsonl | parquet | disk) under ``root``; returns the source path."""
    from datasets import Dataset

    root.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        _images(root)
        path = root / "hostile.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in _jsonl_rows()))
        return path
    if fmt == "parquet":
        images = _images(root)
        path = root / "hostile.parquet"
        Dataset.from_list(_struct_rows(images), features=_features()).to_parquet(str(path))
        return path
    if fmt == "disk":
        path = root / "hostile_saved"
        Dataset.from_list(_struct_rows(_images(root)), features=_features()).save_to_disk(str(path))
        _images(path)  # relative paths of a saved dataset resolve against its folder
        return path
    raise ValueError(f"unknown format {fmt!r}; valid: {FORMATS}")


def build_all_bad(root: Path) -> Path:
    """A jsonl file whose every row is bad (no image, empty or missing answers)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "all_bad.jsonl"
    rows = [{"problem": "q", "answer": a, "images": []} for a in ("1", "", None, 2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
