"""Write the test fixture ``tests/data/papo_eval/``: a few rows per benchmark of PAPO's evaluation suite, laid out
like the hub dataset ``PAPO-Galaxy/PAPO_eval`` (``data/<split>-00000-of-00001.parquet`` with ShareGPT
``messages`` + ``images`` paths + ``id``, and one zip of images per split at the root).

The questions and answers are made up (no benchmark content); the shapes are the real ones: ``<image>``
placeholders in the user turn, PAPO's instruction appended to it, multiple-choice and free-form items in
MathVista and MathVerse, a two-image row. Deterministic: rerunning writes identical rows and images.

    python scripts/make_papo_eval_fixture.py [--out tests/data/papo_eval]
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from papo.data.prompts import PAPO_INSTRUCTION

MC = "multi-choice"
FF = "free-form"
# split -> (zip name, image folder, rows: (question, answer, kind, number of images))
SPLITS: dict[str, tuple[str, str, list[tuple[str, str, str, int]]]] = {
    "hiyouga_geometry3k": (
        "hiyouga_geometry3k_images.zip",
        "geometry3k",
        [("Find x.", "3", FF, 1), ("Find the area of the figure.", "12", FF, 1)],
    ),
    "AI4Math_MathVista": (
        "AI4Math_MathVista_images.zip",
        "mathvista",
        [
            ("Which shape is red?\nChoices:\n(A) circle\n(B) square", "B", MC, 1),
            ("How many dots are there?", "4", FF, 1),
            ("Is the bar taller than 2?\nChoices:\n(A) yes\n(B) no", "yes", MC, 1),
            ("What is the value of the largest bar?", "7", FF, 1),
        ],
    ),
    "We_Math": (
        "We-Math_We-Math_images.zip",
        "we_math",
        [("Which angle is larger? A. angle 1 B. angle 2", "A", MC, 1), ("What is 3 + 4?", "7", FF, 1)],
    ),
    "PAPO_MMK12": ("PAPO_MMK12_test_images.zip", "mmk12", [("What is the length of AB?", "5", FF, 1)]),
    "AI4Math_MathVerse": (
        "AI4Math_MathVerse_images.zip",
        "mathverse",
        [
            ("As shown in the figure, find the angle.\nChoices:\nA:30°\nB:60°\nC:90°", "B", MC, 1),
            ("Find the perimeter of the triangle.", "12", FF, 1),
            ("Which is larger?\nChoices:\nA:left\nB:right", "A", MC, 1),
        ],
    ),
    "lscpku_LogicVista": (
        "lscpku_LogicVista_images.zip",
        "logicvista",
        [("Which figure comes next? (A) 1 (B) 2 (C) 3", "C", MC, 1)],
    ),
    "BUAADreamer_clevr_count_70k": (
        "BUAADreamer_clevr_count_70k_images.zip",
        "clevr_count",
        [("How many items are there in the image?", "3", FF, 1), ("How many cubes are there?", "1", FF, 1)],
    ),
    "MMMU_MMMU_Pro": (
        "MMMU_MMMU_Pro_images.zip",
        "mmmu_pro",
        [("Compare <image> and <image>. Which is brighter?\nA. first\nB. second", "A", MC, 2)],
    ),
    "AI4Math_MathVerse_vision_dependent": (
        "AI4Math_MathVerse_vision_dependent_images.zip",
        "mathverse_v",
        [("Find the angle in the figure.\nChoices:\nA:45°\nB:60°", "A", MC, 1)],
    ),
}


def _png(seed: int) -> bytes:
    color = ((37 * seed) % 256, (91 * seed) % 256, (53 * seed + 90) % 256)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


def write(out: Path) -> None:
    (out / "data").mkdir(parents=True, exist_ok=True)
    seed = 0
    for split, (zip_name, folder, rows) in SPLITS.items():
        records, files = [], {}
        for i, (question, answer, _kind, n_images) in enumerate(rows):
            paths = []
            for j in range(n_images):
                seed += 1
                name = f"{folder}/{i}_{j}.png"
                files[name] = _png(seed)
                paths.append(f"./data/images/{name}")
            text = question if "<image>" in question else "<image>" + question
            records.append(
                {
                    "messages": [
                        {"role": "user", "content": f"{text} {PAPO_INSTRUCTION}"},
                        {"role": "assistant", "content": answer},
                    ],
                    "images": paths,
                    "id": f"{folder}-{i}",
                }
            )
        pq.write_table(pa.Table.from_pylist(records), out / "data" / f"{split}-00000-of-00001.parquet")
        with zipfile.ZipFile(out / zip_name, "w") as zf:
            for name, data in files.items():
                info = zipfile.ZipInfo(name, date_time=(2025, 1, 1, 0, 0, 0))  # fixed: identical bytes
                zf.writestr(info, data)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "data" / "papo_eval")
    )
    write(Path(parser.parse_args().out))


if __name__ == "__main__":
    main()
