"""The synthetic CLEVR-like task: determinism, balance, labels, answers consistent with the pixels."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from papo.data.prompts import EASYR1_MATH_INSTRUCTION
from papo.data.synthetic import (
    DEFAULT_COLORS,
    QUESTIONS,
    SHAPES,
    TASK_TYPES,
    VISION_DEPENDENCY,
    SyntheticTaskConfig,
    build_synthetic_split,
    generate_example,
    reference_response,
    synthetic_corpus,
)

BACKGROUND = (200, 200, 200)


def _png_bytes(ds) -> list[bytes]:
    return [imgs[0]["bytes"] for imgs in ds.with_format("arrow")["images"].to_pylist()]


@pytest.fixture(scope="module")
def default_split():
    return build_synthetic_split("train", 400, seed=3)


def test_same_seed_same_data_and_prefix_stable():
    a = build_synthetic_split("train", 40, seed=7)
    b = build_synthetic_split("train", 40, seed=7)
    longer = build_synthetic_split("train", 60, seed=7)
    for key in ("problem", "answer", "task_type", "uid"):
        assert a[key] == b[key] == longer[key][:40]
    assert _png_bytes(a) == _png_bytes(b) == _png_bytes(longer)[:40]


def test_different_seed_or_split_gives_different_data():
    a = build_synthetic_split("train", 40, seed=7)
    other_seed = build_synthetic_split("train", 40, seed=8)
    other_split = build_synthetic_split("val", 40, seed=7)
    for other in (other_seed, other_split):
        assert _png_bytes(a) != _png_bytes(other)
        assert a["problem"] != other["problem"] or a["answer"] != other["answer"]
    assert other_split["uid"][0] == "val-0"


def test_columns_and_features(default_split):
    assert default_split.column_names == [
        "images",
        "problem",
        "answer",
        "task_type",
        "vision_dependency",
        "uid",
    ]
    assert type(default_split.features["images"]).__name__ in ("List", "Sequence")
    row = default_split[0]
    assert len(row["images"]) == 1 and row["images"][0].size == (56, 56)
    assert all(
        isinstance(row[k], str) for k in ("problem", "answer", "task_type", "vision_dependency", "uid")
    )


@pytest.mark.parametrize(("image_size", "grid"), [(56, 2), (84, 3), (112, 4)])
def test_image_size_sets_grid(image_size, grid):
    cfg = SyntheticTaskConfig(image_size=image_size)
    assert cfg.grid == grid and cfg.max_objects == grid * grid
    ds = build_synthetic_split("train", 3, seed=0, image_size=image_size)
    assert ds[0]["images"][0].size == (image_size, image_size)


def test_every_task_type_appears_with_right_labels(default_split):
    tasks = Counter(default_split["task_type"])
    assert set(tasks) == set(TASK_TYPES)
    # default mix: vision tasks weight 1, text_only 0.5
    assert tasks["text_only"] < min(tasks[t] for t in TASK_TYPES if t != "text_only")
    patterns = {
        t: re.compile("^" + re.sub(r"\\\{\w+\\\}", ".+", re.escape(q)) + "$") for t, q in QUESTIONS.items()
    }
    colors, shapes = set(DEFAULT_COLORS), set(SHAPES)
    for row in default_split.select_columns(["problem", "answer", "task_type", "vision_dependency"]):
        t, answer = row["task_type"], row["answer"]
        assert row["vision_dependency"] == VISION_DEPENDENCY[t]
        assert patterns[t].match(row["problem"]), row
        if t.startswith("count") or t == "text_only":
            assert answer.isdigit()
        elif t == "color_of_shape":
            assert answer in colors
        elif t == "shape_of_color":
            assert answer in shapes
        else:
            assert answer in ("yes", "no")
    assert {VISION_DEPENDENCY[t] for t in tasks} == {"high", "medium", "none"}


def test_zero_weight_task_is_absent_and_weights_replace_defaults():
    ds = build_synthetic_split("train", 60, seed=0, task_weights={"count_all": 1.0, "spatial": 1.0})
    assert set(ds["task_type"]) == {"count_all", "spatial"}
    ds = build_synthetic_split(
        "train", 60, seed=0, task_weights={**{t: 1.0 for t in TASK_TYPES}, "text_only": 0}
    )
    assert "text_only" not in set(ds["task_type"])


def test_count_all_answers_balanced():
    ds = build_synthetic_split("train", 2000, seed=1, task_weights={"count_all": 1.0})
    counts = Counter(ds["answer"])
    assert set(counts) == {"1", "2", "3", "4"}
    assert max(counts.values()) <= 2 * 2000 / 4


@pytest.mark.parametrize(
    ("task", "answers"),
    [
        ("count_color", {str(k) for k in range(5)}),
        ("count_shape", {str(k) for k in range(5)}),
        ("color_of_shape", set(DEFAULT_COLORS)),
        ("shape_of_color", set(SHAPES)),
        ("spatial", {"yes", "no"}),
        ("text_only", {str(k) for k in range(10)}),
    ],
)
def test_other_tasks_answers_balanced(task, answers):
    cfg = SyntheticTaskConfig(task_weights={task: 1.0})
    n = 1200
    counts = Counter(
        generate_example(np.random.default_rng([5, i]), cfg, draw=False)["answer"] for i in range(n)
    )
    assert set(counts) == answers
    assert max(counts.values()) <= 2 * n / len(answers)


def _cell_colors(img, grid: int) -> list[set]:
    """Set of non-background colours present in each grid cell (row-major)."""
    arr = np.asarray(img)
    side = arr.shape[0] // grid
    out = []
    for r in range(grid):
        for c in range(grid):
            cell = arr[r * side : (r + 1) * side, c * side : (c + 1) * side].reshape(-1, 3)
            out.append({tuple(p) for p in np.unique(cell, axis=0)} - {BACKGROUND})
    return out


def test_count_answers_match_pixels():
    ds = build_synthetic_split("train", 80, seed=2, task_weights={"count_all": 1.0, "count_color": 1.0})
    for row in ds:
        cells = _cell_colors(row["images"][0], grid=2)
        # no anti-aliasing: every non-background pixel has exactly an object colour, one colour per cell
        assert all(len(c) <= 1 and c <= set(DEFAULT_COLORS.values()) for c in cells)
        if row["task_type"] == "count_all":
            assert sum(bool(c) for c in cells) == int(row["answer"])
        else:
            name = re.match(r"How many (\w+) objects", row["problem"]).group(1)
            assert sum(DEFAULT_COLORS[name] in c for c in cells) == int(row["answer"])


@pytest.mark.parametrize("task", ["count_shape", "color_of_shape", "shape_of_color", "spatial"])
def test_answers_match_scene(task):
    cfg = SyntheticTaskConfig(task_weights={task: 1.0})
    for i in range(60):
        ex = generate_example(np.random.default_rng([11, i]), cfg)
        objs, q, a = ex["objects"], ex["problem"], ex["answer"]
        assert 1 <= len(objs) <= 4 and len({(o["row"], o["col"]) for o in objs}) == len(objs)
        for o in objs:  # each object lies inside its own cell (objects never straddle cells)
            x0, y0, size = o["box"]
            assert o["col"] * 28 <= x0 and x0 + size <= (o["col"] + 1) * 28
            assert o["row"] * 28 <= y0 and y0 + size <= (o["row"] + 1) * 28
            assert 0.7 * 28 - 1 <= size <= 0.85 * 28 + 1
        if task == "count_shape":
            plural = re.match(r"How many (\w+) are", q).group(1)
            assert sum(o["shape"] + "s" == plural for o in objs) == int(a)
        elif task == "color_of_shape":
            shape = re.match(r"What color is the (\w+)\?", q).group(1)
            (target,) = [o for o in objs if o["shape"] == shape]  # unique
            assert target["color"] == a
        elif task == "shape_of_color":
            color = re.match(r"What shape is the (\w+) object", q).group(1)
            (target,) = [o for o in objs if o["color"] == color]
            assert target["shape"] == a
        else:
            c1, s1, rel, c2, s2 = re.match(
                r"Is the (\w+) (\w+) to the (\w+) of the (\w+) (\w+)\?", q
            ).groups()
            (o1,) = [o for o in objs if (o["color"], o["shape"]) == (c1, s1)]
            (o2,) = [o for o in objs if (o["color"], o["shape"]) == (c2, s2)]
            assert o1["col"] != o2["col"]
            truth = o1["col"] < o2["col"] if rel == "left" else o1["col"] > o2["col"]
            assert a == ("yes" if truth else "no")


def test_text_only_arithmetic_is_correct():
    cfg = SyntheticTaskConfig(task_weights={"text_only": 1.0})
    for i in range(50):
        ex = generate_example(np.random.default_rng([0, i]), cfg)
        x, op, y = re.match(r"What is (\d+) ([+-]) (\d+)\?", ex["problem"]).groups()
        assert int(ex["answer"]) == (int(x) + int(y) if op == "+" else int(x) - int(y))
        assert ex["image"] is not None and ex["vision_dependency"] == "none"


def test_reference_response_format_and_length(default_split):
    fmt = re.compile(r"^<think>[^<>]+</think> \\boxed\{([^{}]+)\}$")
    for row in default_split.select_columns(["problem", "answer", "task_type"]).select(range(100)):
        resp = reference_response(row)
        m = fmt.match(resp)
        assert m and m.group(1) == row["answer"], resp
        assert len(resp.split()) <= 10  # well under ~16 tokens
    ex = {"problem": "How many red objects are in the image?", "answer": "2", "task_type": "count_color"}
    assert reference_response(ex) == "<think>count red objects</think> \\boxed{2}"
    assert reference_response({"problem": "What is 2 + 1?", "answer": "3", "task_type": "text_only"}) == (
        "<think>2 + 1 = 3</think> \\boxed{3}"
    )
    assert reference_response({"problem": "x", "answer": "7"}).endswith("\\boxed{7}")


def test_synthetic_corpus_covers_vocabulary():
    corpus = synthetic_corpus(n=200, seed=0)
    text = "\n".join(corpus)
    assert EASYR1_MATH_INSTRUCTION in text  # the frozen tokenizer corpus (papo.data.prompts)
    for word in [*DEFAULT_COLORS, *SHAPES, "circles", "<think>", "\\boxed{", "yes", "no", "left", "right"]:
        assert word in text, word
    assert corpus == synthetic_corpus(n=200, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_weights": {"counting": 1.0}}, "Valid names"),
        ({"task_weights": {"count_all": 0.0}}, "positive sum"),
        ({"image_size": 28}, "spatial"),  # grid 1 cannot ask left/right questions
        ({"shapes": ["hexagon"]}, "shapes"),
        ({"max_objects": 5}, "max_objects"),
        ({"colors": {"grey": (200, 200, 200)}}, "background"),
    ],
)
def test_invalid_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticTaskConfig(**kwargs)


def test_single_cell_task_without_spatial():
    ds = build_synthetic_split(
        "train", 30, seed=0, image_size=28, task_weights={"count_all": 1, "count_color": 1}
    )
    assert set(ds["answer"]) <= {"0", "1"} and ds[0]["images"][0].size == (28, 28)
