"""A procedural task with a language-prior shortcut: the testbed on which perception decides.

Each row is a scene of the synthetic task (:mod:`papo.data.synthetic`: 56 px by default, one object per cell
of a 2 x 2 grid, so each of the 4 image tokens of the tiny Qwen2.5-VL sees one cell) and one question about
it, asked in one of several WORDINGS. Every wording has a PRIOR answer, and the split's ``shortcut_rate``
is the probability that a row's answer is its wording's prior:

============  ===========================================  ===========================================
task_type     wordings (prior answer)                      scene
============  ===========================================  ===========================================
count         4 ways of asking "how many objects" (1..4)   1..max_objects objects, colours and shapes
                                                           random
color         4 ways of asking "what colour" (red, green,  1..max_objects objects, ALL of one colour,
              blue, yellow)                                shapes random
shape         3 ways of asking "what shape" (square,       1..max_objects objects, ALL of one shape,
              circle, triangle)                            colours random
============  ===========================================  ===========================================

The default mix is count and shape; supervised training teaches the tiny model colour only partly
(docs/testbed.md). So in training (default ``shortcut_rate`` 0.9) the wording alone answers 90 % of the rows: a model can score
~90 % without looking. In validation (default 0.5) half of the rows break the prior, and only a model that
reads the image answers those. ``shortcut_rate: null`` removes the shortcut (the wording is drawn
independently of the answer): the learnability check of docs/testbed.md trains on that.

Per-row fields: ``shortcut`` is ``consistent`` (answer = the wording's prior) or ``breaking``;
``vision_dependency`` carries the same split in the vocabulary the metrics already group by: ``low``
for consistent rows (the training prior answers them without the image) and ``high`` for breaking rows (only
the image does), so ``val/acc_by_vd/high`` is the accuracy on shortcut-breaking rows and
``val/acc_masked_by_vd/high`` its masked-image accuracy.

Answers are balanced by construction: the answer is drawn uniformly first, then the wording (its prior with
probability ``shortcut_rate``, another wording otherwise), then a scene consistent with the answer. Item
``i`` of split ``s`` depends only on ``(seed, crc32(s), i)`` (as in :mod:`papo.data.synthetic`, whose scene
layout and drawing this module reuses, so the pixels obey the same rules). Not part of
any paper: a CPU testbed in the spirit of the language-prior benchmarks (VQA-CP, whose train and test
answer priors differ), built on what the tiny model can see.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from papo.data.synthetic import SyntheticTaskConfig, _draw, _layout, _split_key

__all__ = ["SHORTCUT_TASKS", "WORDINGS", "build_shortcut_split", "generate_shortcut_example"]

#: task type -> [(question, prior answer), ...]; the prior answers of a task cover all its answers once
WORDINGS: dict[str, list[tuple[str, str]]] = {
    "count": [
        ("How many objects are in the image?", "1"),
        ("How many objects does the image show?", "2"),
        ("How many objects can you see in the image?", "3"),
        ("Count the objects in the image.", "4"),
    ],
    "color": [
        ("What color are the objects?", "red"),
        ("What color are the objects in the image?", "green"),
        ("What is the color of the objects?", "blue"),
        ("Which color do the objects have?", "yellow"),
    ],
    "shape": [
        ("What shape are the objects?", "square"),
        ("What shape are the objects in the image?", "circle"),
        ("What is the shape of the objects?", "triangle"),
    ],
}
SHORTCUT_TASKS: tuple[str, ...] = tuple(WORDINGS)
DEFAULT_TASK_WEIGHTS: dict[str, float] = {"count": 1.0, "color": 0.0, "shape": 1.0}
SHORTCUT_LABELS = ("consistent", "breaking")
VISION_DEPENDENCY = {"consistent": "low", "breaking": "high"}


def _answers(task: str, cfg: SyntheticTaskConfig) -> list[str]:
    if task == "count":
        return [str(n) for n in range(1, cfg.max_objects + 1)]
    return list(cfg.colors) if task == "color" else list(cfg.shapes)


def _check(task_weights: Mapping[str, float], cfg: SyntheticTaskConfig) -> dict[str, float]:
    unknown = sorted(set(task_weights) - set(SHORTCUT_TASKS))
    if unknown:
        raise ValueError(
            f"Unknown task type(s) {unknown} in task_weights. Valid names: {list(SHORTCUT_TASKS)}"
        )
    weights = {t: float(task_weights.get(t, 0.0)) for t in SHORTCUT_TASKS}
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"task_weights must be >= 0 with a positive sum, got {dict(task_weights)}")
    for task, w in weights.items():
        priors = sorted(p for _, p in WORDINGS[task])
        if w > 0 and priors != sorted(_answers(task, cfg)):
            raise ValueError(
                f"task {task!r}: the wordings' prior answers {priors} must be exactly its answers "
                f"{sorted(_answers(task, cfg))} (count needs max_objects={len(WORDINGS['count'])}; colour "
                "and shape need the default palette and shapes)"
            )
    return weights


def generate_shortcut_example(
    rng: np.random.Generator,
    config: SyntheticTaskConfig,
    task_weights: Mapping[str, float],
    shortcut_rate: float | None,
    *,
    draw: bool = True,
) -> dict[str, Any]:
    """One row: ``image``, ``problem``, ``answer``, ``task_type``, ``shortcut``, ``vision_dependency``,
    ``objects`` (as :func:`papo.data.synthetic.generate_example`). ``task_weights`` must be checked
    (see :func:`build_shortcut_split`)."""
    tasks = [t for t in SHORTCUT_TASKS if task_weights[t] > 0]
    probs = np.array([task_weights[t] for t in tasks]) / sum(task_weights[t] for t in tasks)
    task = tasks[int(rng.choice(len(tasks), p=probs))]
    answers = _answers(task, config)
    answer = answers[int(rng.integers(len(answers)))]  # uniform: no constant answer beats chance
    wordings = WORDINGS[task]
    if shortcut_rate is None:  # no shortcut: the wording is independent of the answer
        question, prior = wordings[int(rng.integers(len(wordings)))]
    elif rng.random() < shortcut_rate:
        question, prior = next(w for w in wordings if w[1] == answer)
    else:
        others = [w for w in wordings if w[1] != answer]
        question, prior = others[int(rng.integers(len(others)))]
    m = config.max_objects
    colors, shapes = list(config.colors), list(config.shapes)
    if task == "count":
        n = int(answer)
    else:
        n = int(rng.integers(1, m + 1))
    specs = []
    for _ in range(n):
        color = answer if task == "color" else colors[int(rng.integers(len(colors)))]
        shape = answer if task == "shape" else shapes[int(rng.integers(len(shapes)))]
        specs.append((color, shape, None))
    objects = _layout(rng, config, specs)
    label = "consistent" if prior == answer else "breaking"
    return {
        "image": _draw(config, objects) if draw else None,
        "problem": question,
        "answer": answer,
        "task_type": task,
        "shortcut": label,
        "vision_dependency": VISION_DEPENDENCY[label],
        "objects": objects,
    }


def build_shortcut_split(
    split: str = "train",
    size: int = 1000,
    seed: int = 0,
    shortcut_rate: float | None = 0.9,
    task_weights: Mapping[str, float] | None = None,
    **scene_kwargs: Any,
):
    """Build ``size`` rows of the shortcut task as a ``datasets.Dataset``.

    Args:
        split: split name, mixed into every row's seed.
        size: number of rows; row ``i`` depends only on ``(seed, split, i)``.
        seed: data seed.
        shortcut_rate: probability that a row's answer is its wording's prior answer, in [0, 1]; ``None``
            draws the wording independently of the answer (no shortcut).
        task_weights: task type -> weight (``count``, ``color``, ``shape``); missing tasks get 0;
            ``None`` -> count 1, color 0, shape 1 (what the tiny model learns to see, docs/testbed.md).
        scene_kwargs: scene fields of :class:`papo.data.synthetic.SyntheticTaskConfig` (``image_size``,
            ``grid``, ``max_objects``, ``object_scale``, ...).

    Returns:
        Columns ``images`` (``List(Image())``), ``problem``, ``answer``, ``task_type``,
        ``vision_dependency``, ``shortcut``, ``uid`` (``f"{split}-{i}"``).

    Raises:
        ValueError: a bad ``seed``, ``size``, ``shortcut_rate`` or ``task_weights`` (the message names the
            key and the allowed values).
    """
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    try:
        from datasets import List as ListFeature
    except ImportError:  # datasets < 4
        from datasets import Sequence as ListFeature

    if seed is None or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if int(size) < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if shortcut_rate is not None and not 0.0 <= float(shortcut_rate) <= 1.0:
        raise ValueError(f"shortcut_rate must be in [0, 1] or null (no shortcut), got {shortcut_rate}")
    cfg = SyntheticTaskConfig(**scene_kwargs)
    weights = _check(DEFAULT_TASK_WEIGHTS if task_weights is None else task_weights, cfg)
    rate = None if shortcut_rate is None else float(shortcut_rate)
    text_columns: Sequence[str] = ("problem", "answer", "task_type", "vision_dependency", "shortcut")
    columns: dict[str, list] = {k: [] for k in ("images", *text_columns, "uid")}
    key = _split_key(split)
    for i in range(int(size)):
        ex = generate_shortcut_example(np.random.default_rng([int(seed), key, i]), cfg, weights, rate)
        buf = io.BytesIO()
        ex["image"].save(buf, format="PNG", compress_level=1)
        columns["images"].append([{"bytes": buf.getvalue(), "path": None}])
        for k in text_columns:
            columns[k].append(ex[k])
        columns["uid"].append(f"{split}-{i}")
    features = Features(
        {"images": ListFeature(ImageFeature()), **{k: Value("string") for k in (*text_columns, "uid")}}
    )
    return Dataset.from_dict(columns, features=features)
