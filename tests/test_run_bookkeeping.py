"""What a run leaves on disk besides weights: the last K step checkpoints (older ones pruned) plus
``last.ckpt``, and the full list of rows the setup-time scan dropped (``<output_dir>/dropped_rows.jsonl``,
counted once in the ``data/dropped_rows_setup`` metric)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset

from papo.data.scan import scan_split

LONG_ROW, BAD_ANSWER_ROW, BAD_IMAGE_ROW = 2, 1, 5


def spoiled_split(**kwargs: Any) -> Dataset:
    """The synthetic split with three rows the setup scan drops: an empty answer, a question thousands of
    tokens long and undecodable image bytes (used as ``data.train_dataset._target_``)."""
    from papo.data.synthetic import build_synthetic_split

    rows = build_synthetic_split(**kwargs).to_list()
    rows[BAD_ANSWER_ROW]["answer"] = ""
    rows[LONG_ROW]["problem"] = "How many objects? " * 600
    rows[BAD_IMAGE_ROW]["images"] = [{"bytes": b"\x00garbage" * 9, "path": None}]
    return Dataset.from_list(rows, features=build_synthetic_split(size=1).features)


@pytest.mark.slow
def test_keep_last_k_checkpoints_and_setup_drops_reach_the_run_dir_and_a_metric(
    make_cfg, tmp_path: Path
) -> None:
    from papo.pipeline import DROPPED_ROWS_FILE, DROPPED_ROWS_METRIC, train

    cfg = make_cfg(
        [
            "trainer.max_steps=4",
            "callbacks.model_checkpoint.every_n_train_steps=1",
            "callbacks.model_checkpoint.save_top_k=2",
            "loss=none",
            "masking=none",
            "logger=csv",
            "validate_before=false",
            "validate_after=false",
            "data.on_bad_row=skip",
            "data.train_dataset._target_=test_run_bookkeeping.spoiled_split",
        ]
    )
    train(cfg)

    # keep-last-K: a checkpoint was written after every step, only the newest K=2 are left (+ last.ckpt)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert names == ["last.ckpt", "step000003.ckpt", "step000004.ckpt"], names

    # every dropped row, with dataset, split, row, uid and reason
    rows = [json.loads(line) for line in (tmp_path / DROPPED_ROWS_FILE).read_text().splitlines()]
    assert [(r["dataset"], r["split"], r["row"], r["uid"]) for r in rows] == [
        ("synthetic", "train", BAD_ANSWER_ROW, f"train-{BAD_ANSWER_ROW}"),
        ("synthetic", "train", LONG_ROW, f"train-{LONG_ROW}"),
        ("synthetic", "train", BAD_IMAGE_ROW, f"train-{BAD_IMAGE_ROW}"),
    ]
    assert "answer" in rows[0]["reason"] and "image 0" in rows[2]["reason"]
    assert rows[1]["reason"].endswith("tokens > max_prompt_length=512") and rows[1]["prompt_tokens"] > 512

    # ... and their count is a metric, logged once when fitting starts
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        logged = [float(r[DROPPED_ROWS_METRIC]) for r in csv.DictReader(f) if r.get(DROPPED_ROWS_METRIC)]
    assert logged == [3.0]


def test_scan_report_lists_every_dropped_row_with_uid_and_reason() -> None:
    """All dropped rows (not only the first three of the log line), in row order; the uid column when there
    is one, else the datamodule's ``<split>-<row>``; the token count of an over-long prompt."""
    n = 8
    base = {
        "images": [None] * n,
        "problem": [f"q{i}" for i in range(n)],
        "answer": [str(i) for i in range(n)],
    }
    base["problem"][6] = "x" * 500
    base["answer"][1] = None
    base["problem"][3] = ""
    base["answer"][4] = None
    base["answer"][7] = ""
    for with_uid in (False, True):
        cols = dict(base, uid=[f"id{i}" for i in range(n)]) if with_uid else base
        report = scan_split(
            Dataset.from_dict(cols),
            dataset_name="d",
            split="val",
            on_bad_row="skip",
            max_prompt_length=100,
            prompt_length_fn=lambda prompts, sizes: [len(p) if "xxx" in p else 10 for p in prompts],
        )
        dropped = report.dropped_rows("d", "val", 100)
        assert [r["row"] for r in dropped] == [1, 3, 4, 6, 7]
        assert [r["uid"] for r in dropped] == [f"id{i}" if with_uid else f"val-{i}" for i in (1, 3, 4, 6, 7)]
        assert all(r["dataset"] == "d" and r["split"] == "val" and r["reason"] for r in dropped)
        assert dropped[3]["prompt_tokens"] > 500 and "> max_prompt_length=100" in dropped[3]["reason"]
        assert "row 6: " in report.summary("d", "val", 100)
