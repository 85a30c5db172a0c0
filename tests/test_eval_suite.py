"""PAPO's evaluation suite as data: the nine benchmarks of PAPO-Galaxy/PAPO_eval (configs/val_sets/papo_eval.yaml),
the ShareGPT loader and its free-form filter (papo.data.papo_eval), the averages and the per-benchmark table
(papo.evaluation.suite). Runs on the fixture tests/data/papo_eval (scripts/make_papo_eval_fixture.py), which has
the hub's layout; the hub itself is never read here."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import pytest
from hydra.utils import instantiate

from papo.data.hub import HubOfflineError
from papo.data.images import load_images
from papo.data.papo_eval import (
    answer_options,
    image_relpath,
    is_free_form,
    load_papo_eval_split,
    resolve_image_paths,
    sharegpt_row,
)
from papo.data.prompts import PAPO_INSTRUCTION
from papo.evaluation.suite import group_averages, suite_table

FIXTURE = Path(__file__).parent / "data" / "papo_eval"
GENERAL = ["geometry3k", "mathvista", "we_math", "mmk12", "mathverse"]
VISION = ["logicvista", "counting", "mmmu_pro", "mathverse_v"]


# ----------------------------------------------------------------------------------------------- pure rules
def test_sharegpt_row_strips_papos_instruction_and_keeps_placeholders() -> None:
    messages = [
        {"role": "user", "content": f"<image>Find x.\n\n{PAPO_INSTRUCTION}"},
        {"role": "assistant", "content": " 3 "},
    ]
    assert sharegpt_row(messages) == ("<image>Find x.", "3")
    # LLaMA-Factory's from/value keys, and an instruction without its final period
    msgs = [{"from": "human", "value": "Q <image> " + PAPO_INSTRUCTION[:-1]}, {"from": "gpt", "value": "B"}]
    assert sharegpt_row(msgs) == ("Q <image>", "B")
    with pytest.raises(ValueError, match="user and an assistant"):
        sharegpt_row([{"role": "user", "content": "q"}])


@pytest.mark.parametrize(
    ("question", "answer", "question_type", "free_form"),
    [
        ("Which?\nChoices:\n(A) circle\n(B) square", "B", None, False),  # MathVista style, letter answer
        ("Which?\nChoices:\n(A) yes\n(B) no", "yes", None, False),  # answer = an option's text
        ("Angle?\nChoices:\nA:30°\nB:60°", "(B)", None, False),  # MathVerse style
        ("Which? (A) 1 (B) 2 (C) 3", "C", None, False),  # inline options
        ("Which?\nChoices:\n(A) circle\n(B) square", "triangle", None, True),  # answer is not an option
        ("How many dots?", "4", None, True),  # no options
        ("Only (A) one option", "A", None, True),
        ("How many dots?", "4", "multi_choice", False),  # source metadata wins (MathVista)
        ("Which?\nA. x\nB. y", "A", "free-form", True),  # (MathVerse)
    ],
)
def test_free_form_rule(question: str, answer: str, question_type: str | None, free_form: bool) -> None:
    assert is_free_form(question, answer, question_type) is free_form


def test_answer_options_and_image_paths() -> None:
    assert answer_options("Q\n(A) red\n(B) blue") == {"A": "red", "B": "blue"}
    assert image_relpath("./data/images/mathvista/1.png") == "images/mathvista/1.png"
    files = ["mathvista/1.png", "mathvista/2.png", "other/1.png", "x/dup.png", "y/dup.png"]
    refs = ["./data/images/mathvista/1.png", "images/mathvista/2.png", "images/z/dup.png", "images/q/9.png"]
    # the longest shared suffix decides; a file name shared by two files never matches alone
    assert resolve_image_paths(refs, files) == {
        "./data/images/mathvista/1.png": "mathvista/1.png",
        "images/mathvista/2.png": "mathvista/2.png",
    }


def test_group_averages_by_benchmark_and_by_question() -> None:
    groups = {"a": "general", "b": "general", "c": "vision_dependent"}
    scores = {"a": 0.2, "b": 0.6, "c": 0.9}
    assert group_averages(scores, groups) == pytest.approx(
        {"general": 0.4, "vision_dependent": 0.9, "overall": (0.2 + 0.6 + 0.9) / 3}
    )
    counts = {"a": 100, "b": 300, "c": 100}
    pooled = group_averages(scores, groups, counts, weighting="question")
    assert pooled == pytest.approx({"general": 0.5, "vision_dependent": 0.9, "overall": 0.58})
    # a benchmark without a score is left out; a group without any is absent
    assert group_averages({"a": 0.2}, groups) == pytest.approx({"general": 0.2, "overall": 0.2})
    with pytest.raises(ValueError, match="no group"):
        group_averages({"z": 1.0}, groups)
    with pytest.raises(ValueError, match="question count"):
        group_averages(scores, groups, {"a": 1}, weighting="question")
    with pytest.raises(ValueError, match="valid: \\['benchmark', 'question'\\]"):
        group_averages(scores, groups, weighting="mean")


def test_suite_table_rows_and_averages() -> None:
    groups = {"a": "general", "c": "vision_dependent", "b": "general"}
    results = {
        "c": {"acc": 0.9},
        "a": {"acc": 0.25, "acc_masked": 0.1},
        "b": {"acc": 0.75, "acc_masked": 0.3},
    }
    table = suite_table(results, groups, {"a": 4, "b": 8, "c": 2}, metrics=("acc", "acc_masked"))
    lines = table.splitlines()
    assert lines[0] == "| benchmark | group | n | acc | acc_masked |"
    assert lines[2:5] == [
        "| a | general | 4 | 25.00 | 10.00 |",
        "| b | general | 8 | 75.00 | 30.00 |",
        "| c | vision_dependent | 2 | 90.00 | - |",
    ]
    assert lines[5:] == [
        "| **general average** | | | 50.00 | 20.00 |",
        "| **vision_dependent average** | | | 90.00 | - |",
        f"| **overall average** | | | {100 * (0.25 + 0.75 + 0.9) / 3:.2f} | 20.00 |",
    ]


# ----------------------------------------------------------------------------------------------- loader
def test_loader_reads_the_hub_layout_and_drops_free_form(tmp_path: Path) -> None:
    ds = load_papo_eval_split(
        "AI4Math_MathVista", str(FIXTURE), "AI4Math_MathVista_images.zip", True, cache_dir=str(tmp_path)
    )
    assert list(ds["uid"]) == ["mathvista-0", "mathvista-2"]  # the two free-form items are gone
    assert ds[0]["problem"] == "<image>Which shape is red?\nChoices:\n(A) circle\n(B) square"
    assert list(ds["answer"]) == ["B", "yes"] and set(ds["task_type"]) == {"AI4Math_MathVista"}
    img = load_images(ds[0]["images"])[0]
    assert img.size == (16, 16) and Path(ds[0]["images"][0]["path"]).is_relative_to(tmp_path / "papo_eval")
    every = load_papo_eval_split("AI4Math_MathVista", str(FIXTURE), "AI4Math_MathVista_images.zip", False,
                                 cache_dir=str(tmp_path), limit=3, task_type="mathvista")  # fmt: skip
    assert len(every) == 3 and set(every["task_type"]) == {"mathvista"}


def test_loader_two_images_and_a_jsonl_copy(tmp_path: Path) -> None:
    ds = load_papo_eval_split(
        "MMMU_MMMU_Pro", str(FIXTURE), "MMMU_MMMU_Pro_images.zip", cache_dir=str(tmp_path)
    )
    assert ds[0]["problem"].startswith("Compare <image> and <image>.") and len(ds[0]["images"]) == 2
    # a local copy as <split>.jsonl with extracted images/ (no zip)
    local = tmp_path / "copy"
    (local / "images" / "q").mkdir(parents=True)
    with zipfile.ZipFile(FIXTURE / "PAPO_MMK12_test_images.zip") as zf:
        (local / "images" / "q" / "a.png").write_bytes(zf.read(zf.namelist()[0]))
    row = {"messages": [{"role": "user", "content": "<image>Q?"}, {"role": "assistant", "content": "5"}],
           "images": ["./data/images/q/a.png"]}  # fmt: skip
    (local / "PAPO_MMK12.jsonl").write_text(json.dumps(row) + "\n")
    ds = load_papo_eval_split("PAPO_MMK12", str(local), image_zip=None, cache_dir=str(tmp_path))
    assert ds[0]["images"] == [{"bytes": None, "path": str(local / "images" / "q" / "a.png")}]
    assert ds[0]["uid"] == "PAPO_MMK12-0"
    # an image that is not there names the row
    (local / "images" / "q" / "a.png").unlink()
    with pytest.raises(
        ValueError, match=r"PAPO_MMK12 row PAPO_MMK12-0: image\(s\) \['./data/images/q/a.png'\]"
    ):
        load_papo_eval_split("PAPO_MMK12", str(local), cache_dir=str(tmp_path))


def test_loader_takes_images_stored_in_the_rows(tmp_path: Path) -> None:
    """A copy whose rows hold the images themselves (datasets.Image bytes) needs no zip."""
    import io

    from datasets import Dataset, Features, Image, Sequence, Value
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.new("RGB", (20, 12), (9, 99, 199)).save(buf, format="PNG")
    features = Features(
        {
            "messages": [{"role": Value("string"), "content": Value("string")}],
            "images": Sequence(Image()),
        }
    )
    rows = {
        "messages": [
            [{"role": "user", "content": "<image>How many?"}, {"role": "assistant", "content": "2"}]
        ],
        "images": [[{"bytes": buf.getvalue(), "path": None}]],
    }
    (tmp_path / "copy").mkdir()
    Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "copy" / "We_Math.parquet"))
    ds = load_papo_eval_split("We_Math", str(tmp_path / "copy"), "absent.zip", cache_dir=str(tmp_path))
    img = load_images(ds[0]["images"])[0]
    assert (
        img.size == (20, 12)
        and img.getpixel((0, 0)) == (9, 99, 199)
        and ds[0]["problem"] == "<image>How many?"
    )


def test_hub_source_is_refused_while_the_hub_is_off(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    with pytest.raises((HubOfflineError, ConnectionError)) as err:
        load_papo_eval_split("hiyouga_geometry3k", "PAPO-Galaxy/PAPO_eval", "x.zip", cache_dir=str(tmp_path))
    assert "PAPO_ALLOW_HUB=1" in str(err.value)


# ----------------------------------------------------------------------------------------------- config
def test_suite_config_lists_the_nine_benchmarks_with_their_groups() -> None:
    from conftest import compose_cfg

    cfg = compose_cfg(["val_sets=papo_eval"])
    assert list(cfg.val_sets) == GENERAL + VISION
    assert [n for n, e in cfg.val_sets.items() if e.group == "general"] == GENERAL
    assert [n for n, e in cfg.val_sets.items() if e.group == "vision_dependent"] == VISION
    drop = {n for n, e in cfg.val_sets.items() if e.dataset.drop_free_form}
    assert drop == {"mathvista", "mathverse", "mathverse_v"}
    for entry in cfg.val_sets.values():
        assert entry.dataset.source == "PAPO-Galaxy/PAPO_eval" and entry.answer_format == "boxed"
        assert (entry.protocol.samples, entry.protocol.temperature, entry.protocol.greedy) == (8, 1.0, False)


def test_every_suite_entry_loads_from_the_fixture(tmp_path: Path) -> None:
    from conftest import compose_cfg

    cfg = compose_cfg(
        ["val_sets=papo_eval", f"papo_eval.source={FIXTURE}", f"papo_eval.cache_dir={tmp_path}"]
    )
    sizes = {}
    for name, entry in cfg.val_sets.items():
        ds = instantiate(entry.dataset)()
        assert set(ds["task_type"]) == {name} and all(len(r) >= 1 for r in ds["images"]), name
        load_images(ds[0]["images"])
        sizes[name] = len(ds)
    # free-form items dropped from MathVista (4 -> 2) and MathVerse (3 -> 2); other benchmarks keep theirs
    assert sizes == {"geometry3k": 2, "mathvista": 2, "we_math": 2, "mmk12": 1, "mathverse": 2,
                     "logicvista": 1, "counting": 2, "mmmu_pro": 1, "mathverse_v": 1}  # fmt: skip
    limited = compose_cfg(["val_sets=papo_eval", f"papo_eval.source={FIXTURE}",
                           f"papo_eval.cache_dir={tmp_path}", "val_sets.counting.limit=1"])  # fmt: skip
    assert len(instantiate(limited.val_sets.counting.dataset)()) == 1
    assert not math.isnan(
        group_averages(dict.fromkeys(sizes, 0.5), {n: e.group for n, e in cfg.val_sets.items()})["overall"]
    )


# ----------------------------------------------------------------------------------------------- val-set specs
def test_parse_val_sets_reads_the_suite_config() -> None:
    from omegaconf import OmegaConf

    from conftest import compose_cfg
    from papo.evaluation.val_sets import SamplingProtocol, parse_val_sets

    cfg = compose_cfg(["val_sets=papo_eval", "val_sets.counting.limit=5"])
    sets = parse_val_sets(OmegaConf.to_container(cfg.val_sets, resolve=True))
    assert [s.name for s in sets] == GENERAL + VISION
    counting = sets[GENERAL.__len__() + 1]
    assert (counting.name, counting.group, counting.limit, counting.prefix) == (
        "counting",
        "vision_dependent",
        5,
        "val/counting",
    )
    assert counting.protocol == SamplingProtocol(samples=8, temperature=1.0, top_p=1.0, top_k=0, greedy=False,
                                                 max_new_tokens=2048)  # fmt: skip
    assert parse_val_sets(None) == [] and parse_val_sets({}) == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dataset": 1, "splt": "x"}, r"val_sets.a has unknown key\(s\) \['splt'\]; valid: \['dataset'"),
        ({"limit": 3}, "val_sets.a.dataset is missing"),
        ({"dataset": 1, "answer_format": "letter"}, r"answer_format='letter' is unknown; valid: \['boxed'\]"),
        ({"dataset": 1, "protocol": {"samples": 2, "temp": 1}}, r"protocol has unknown key\(s\) \['temp'\]"),
        ({"dataset": 1, "protocol": {"greedy": False}}, "generates nothing"),
        ({"dataset": 1, "protocol": {"samples": 4, "temperature": 0}}, "temperature > 0"),
        ({"dataset": 1, "limit": 0}, "limit=0 must be >= 1 or null"),
    ],
)
def test_parse_val_sets_names_the_bad_key(entry: dict, message: str) -> None:
    from papo.evaluation.val_sets import parse_val_sets

    with pytest.raises(ValueError, match=message):
        parse_val_sets({"a": entry})


def test_val_set_names_are_metric_keys() -> None:
    from papo.evaluation.val_sets import parse_val_sets

    with pytest.raises(ValueError, match="is a metric key"):
        parse_val_sets({"a/b": {"dataset": 1}})
