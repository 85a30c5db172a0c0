"""The hostile data corpus (tests/data/hostile_corpus.py) through the loader, the setup scan and the decode,
as jsonl, parquet and a ``save_to_disk`` folder, with ``data.on_bad_row=skip`` and ``error``; and through a
real training run. Nothing crashes, every bad row is reported with its source row number, uid and reason,
and every good row reaches the batches with its values exactly as written."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from papo.data.datamodule import BadRowError, PapoDataModule
from papo.data.hub import load_split
from papo.data.masking import RandomPatchMask
from papo.data.scan import scan_split
from papo.rollout.prompt_length import PromptLength

_spec = importlib.util.spec_from_file_location(
    "hostile_corpus", Path(__file__).parent / "data" / "hostile_corpus.py"
)
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)  # type: ignore[union-attr]

NAME = "hostile"


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    return {fmt: corpus.build(root / fmt, fmt) for fmt in corpus.FORMATS}


@pytest.fixture(scope="module")
def prompt_length(cache_dir: Path) -> PromptLength:
    """Token counts from the embedded Qwen2.5-VL processor (the pipeline's prompt filter)."""
    from papo.data.synthetic import synthetic_corpus
    from papo.models.stand_in import ensure_stand_in

    path = ensure_stand_in("qwen2_5_vl", cache_dir / "models", corpus_fn=synthetic_corpus)
    return PromptLength.from_pretrained(str(path))


def _datamodule(source: Path, on_bad_row: str, prompt_length: Any, tmp_path: Path) -> PapoDataModule:
    split = functools.partial(load_split, source=str(source), cache_dir=str(tmp_path / "hf"))
    return PapoDataModule(
        val_dataset=split,
        masking=RandomPatchMask(),
        val_batch_size=4,
        dataset_name=NAME,
        on_bad_row=on_bad_row,
        max_prompt_length=512,
        prompt_length_fn=prompt_length,
    )


@pytest.mark.parametrize("fmt", corpus.FORMATS)
def test_skip_reports_every_bad_row_and_keeps_good_rows_as_written(
    fmt: str, sources: dict[str, Path], prompt_length: Any, tmp_path: Path
) -> None:
    dm = _datamodule(sources[fmt], "skip", prompt_length, tmp_path)
    dm.setup("validate")  # no crash: the processor's refusal of row 2 is row 2's report
    listing = tmp_path / "dropped_rows.jsonl"
    dm.write_dropped_rows(listing)
    seen: dict[str, str] = {}
    for batch in dm.val_dataloader():
        seen.update(zip(batch["uid"], batch["answer"], strict=True))
    assert seen == {f"h{row}": answer for row, answer in corpus.GOOD_ANSWERS.items()}  # exactly as written
    reported = [json.loads(line) for line in listing.read_text().splitlines()]
    expected = {**corpus.SCAN_BAD[fmt], **corpus.DECODE_BAD}
    assert sorted(r["row"] for r in reported) == sorted(expected)  # source rows, each once
    for r in reported:
        assert r["dataset"] == NAME and r["split"] == "val" and r["uid"] == f"h{r['row']}", r
        assert expected[r["row"]] in r["reason"], r
    decoded = [r for r in reported if r.get("stage") == "decode"]
    assert [r["row"] for r in decoded] == list(corpus.DECODE_BAD)
    assert (
        f"row={next(iter(corpus.DECODE_BAD))} uid=h7" in decoded[0]["reason"]
    )  # not its position after the scan


@pytest.mark.parametrize("fmt", corpus.FORMATS)
def test_error_mode_names_the_first_bad_row(
    fmt: str, sources: dict[str, Path], prompt_length: Any, tmp_path: Path
) -> None:
    dm = _datamodule(sources[fmt], "error", prompt_length, tmp_path)
    with pytest.raises(
        ValueError, match=r"bad row in dataset=hostile split=val row=2 uid=h2: .*aspect ratio"
    ):
        dm.setup("validate")


def test_decode_error_names_the_source_row(sources: dict[str, Path], tmp_path: Path) -> None:
    """Without the setup scan (error mode, no prompt filter) a bad image fails when its row is decoded,
    named by its source row; with rows dropped at setup (skip) the source row survives the selection."""
    split = functools.partial(load_split, source=str(sources["parquet"]), cache_dir=str(tmp_path / "hf"))
    dm = PapoDataModule(val_dataset=split, val_batch_size=4, dataset_name=NAME, on_bad_row="skip")
    dm.setup("validate")
    ds = dm.datasets["val"]
    position = [ds[i] for i in range(len(ds))]
    marker = next(item for item in position if "uid=h7" in item.get("bad_row", ""))
    assert "row=7 uid=h7" in marker["bad_row"] and marker["row"] != 7  # its position after the scan's drops


def test_every_row_bad_is_a_no_usable_rows_error(tmp_path: Path, prompt_length: Any) -> None:
    path = corpus.build_all_bad(tmp_path)
    dm = _datamodule(path, "skip", prompt_length, tmp_path)
    with pytest.raises(ValueError, match=r"all_bad\.jsonl.*no usable rows.*dropped_rows\.jsonl") as err:
        dm.setup("validate")
    assert "IndexError" not in str(err.value)
    assert len(dm.dropped_rows) == 4 and all(r["reason"] for r in dm.dropped_rows)


def test_one_failing_row_in_a_measured_batch_is_that_rows_report() -> None:
    """Any exception while measuring a row (here: the length function raising for one prompt of the batch)
    becomes that row's report; the other rows of the batch are measured."""
    from datasets import Dataset

    ds = Dataset.from_dict({"images": [None] * 4, "problem": ["a", "boom", "c", "d"], "answer": ["1"] * 4})

    def length(prompts: list[str], sizes: list) -> list[int]:
        if any("boom" in p for p in prompts):
            raise ValueError("the processor refuses this one")
        return [5] * len(prompts)

    report = scan_split(ds, on_bad_row="skip", max_prompt_length=10, prompt_length_fn=length)
    assert report.keep == [0, 2, 3] and report.bad == [
        (1, "cannot measure the prompt: ValueError: the processor refuses this one")
    ]
    with pytest.raises(ValueError, match="row=1 uid=train-1: cannot measure the prompt"):
        scan_split(ds, on_bad_row="error", max_prompt_length=10, prompt_length_fn=length)


def test_text_only_rows_are_reported_unless_allowed(tmp_path: Path) -> None:
    from datasets import Dataset

    rows = {"images": [None, []] * 2, "problem": ["q"] * 4, "answer": ["1"] * 4}
    dm = PapoDataModule(val_dataset=Dataset.from_dict(rows), val_batch_size=4, dataset_name=NAME)
    dm.setup("validate")
    with pytest.raises(
        BadRowError, match=r"row=0 uid=val-0\): the row has no image.*data.allow_text_only=true"
    ):
        next(iter(dm.val_dataloader()))
    dm = PapoDataModule(
        val_dataset=Dataset.from_dict(rows), val_batch_size=4, dataset_name=NAME, allow_text_only=True
    )
    dm.setup("validate")
    assert next(iter(dm.val_dataloader()))["images"] == [[]] * 4
    assert dm.text_only_rows == {"val": 4}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", corpus.FORMATS)
def test_a_run_on_the_hostile_corpus_lists_every_bad_row(fmt: str, make_cfg, tmp_path: Path) -> None:
    """data=local_files on the corpus with data.on_bad_row=skip: the run trains, and dropped_rows.jsonl lists
    every bad row of both splits with its source row, uid and reason."""
    from conftest import TINY_OVERRIDES
    from papo.pipeline import DROPPED_ROWS_FILE, train

    source = corpus.build(tmp_path / "data", fmt)
    cfg = make_cfg(
        [o for o in TINY_OVERRIDES if not o.startswith(("data.", "warm_start."))]
        + [
            "data=local_files",
            f"data.train_dataset.source={source}",
            "data.on_bad_row=skip",
            "data.num_workers=0",
            "data.batch_size=4",
            "data.val_batch_size=8",
            "warm_start=none",
            "logger=csv",
            "validate_after=false",
        ],
        tiny=False,
    )
    train(cfg)
    reported = [json.loads(line) for line in (tmp_path / DROPPED_ROWS_FILE).read_text().splitlines()]
    expected = {**corpus.SCAN_BAD[fmt], **corpus.DECODE_BAD}
    for split in ("train", "val"):
        rows = {r["row"]: r for r in reported if r["split"] == split}
        scan_rows = set(corpus.SCAN_BAD[fmt])
        assert scan_rows <= set(rows) <= set(expected), (split, sorted(rows))
        for row, r in rows.items():
            assert r["uid"] == f"h{row}" and expected[row] in r["reason"], r
    assert 7 in {r["row"] for r in reported if r["split"] == "val"}  # validation decodes every row


def test_text_only_rows_are_logged_once_when_fitting_starts() -> None:
    """With data.allow_text_only=true the pipeline logs their number as data/text_only_rows (next to
    data/dropped_rows_setup); without it the key is absent (such rows are bad rows)."""
    from types import SimpleNamespace

    from papo.pipeline import DROPPED_ROWS_METRIC, LogSetupDrops

    logged: list[dict] = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append(dict(metrics, step=step)))
    trainer = SimpleNamespace(loggers=[logger], global_step=0)
    LogSetupDrops(3, text_only=4).on_train_start(trainer, None)
    LogSetupDrops(2).on_train_start(trainer, None)
    assert logged == [
        {DROPPED_ROWS_METRIC: 3.0, "data/text_only_rows": 4.0, "step": 0},
        {DROPPED_ROWS_METRIC: 2.0, "step": 0},
    ]
