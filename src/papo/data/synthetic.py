"""A seeded, procedural CLEVR-counting-like task: the embedded default dataset (no download needed).

Each item is a small square scene (default 56 px: 4 image tokens for a Qwen2.5-VL-style tower with 14 px
patches and 2x2 merge) on a light grey background, with one object per cell of a ``grid`` x ``grid`` layout
(default ``grid = image_size // 28``), each object a square / circle / triangle in one of four colours,
70-85 % of its cell, jittered inside the cell. Shapes are drawn without anti-aliasing, so every object pixel
has exactly its palette colour (tests count objects from pixels).

Task types (column ``task_type``) and how much they need the image (column ``vision_dependency``):

==================  =================================================  ==========  ========================
task_type           example question                                    answers     vision_dependency
==================  =================================================  ==========  ========================
count_all           How many objects are in the image?                  1..max      high
count_color         How many red objects are in the image?              0..max      high
count_shape         How many circles are in the image?                  0..max      high
color_of_shape      What color is the triangle?  (it is unique)         colours     high
shape_of_color      What shape is the blue object?  (it is unique)      shapes      high
spatial             Is the red circle to the left of the blue square?   yes / no    medium (50 % prior)
text_only           What is 2 + 1?  (image is an irrelevant scene)      0..9        none
==================  =================================================  ==========  ========================

Answers are balanced by construction: the ANSWER is drawn uniformly first (count, colour, shape, yes/no, sum)
and a scene consistent with it is built afterwards, so no constant answer beats chance. ``task_weights``
sets the task mix (weight 0 removes a task). Item ``i`` of split ``s`` depends only on
``(seed, crc32(s), i)``: identical arguments give identical data, splits differ, and a larger ``size`` extends
a split without changing its first items. Images are stored PNG-encoded in an ``images`` column of type
``List(Image())``, the convention of the hub datasets (ViRL39K, Geometry3K), so all loaders share one pipeline.

This is not CLEVR (no 3-D rendering, occlusion or materials); it is a fast stand-in on which a ~0.4M-parameter
VLM can learn, and on which masking the image demonstrably hurts (vision-dependent questions).
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from papo.data.prompts import TOKENIZER_CORPUS_TEMPLATES, build_prompt

__all__ = [
    "DEFAULT_COLORS",
    "DEFAULT_TASK_WEIGHTS",
    "SHAPES",
    "TASK_TYPES",
    "VISION_DEPENDENCY",
    "SyntheticTaskConfig",
    "build_synthetic_split",
    "generate_example",
    "reference_response",
    "synthetic_corpus",
]

SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
PLURALS = {"square": "squares", "circle": "circles", "triangle": "triangles"}
DEFAULT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 30),
    "blue": (30, 60, 220),
    "yellow": (230, 200, 20),
}
VISION_DEPENDENCY: dict[str, str] = {
    "count_all": "high",
    "count_color": "high",
    "count_shape": "high",
    "color_of_shape": "high",
    "shape_of_color": "high",
    "spatial": "medium",
    "text_only": "none",
}
TASK_TYPES: tuple[str, ...] = tuple(VISION_DEPENDENCY)
DEFAULT_TASK_WEIGHTS: dict[str, float] = {t: (0.5 if t == "text_only" else 1.0) for t in TASK_TYPES}
MAX_ARITHMETIC_ANSWER = 9  # text_only answers are 0..9

QUESTIONS = {
    "count_all": "How many objects are in the image?",
    "count_color": "How many {color} objects are in the image?",
    "count_shape": "How many {plural} are in the image?",
    "color_of_shape": "What color is the {shape}?",
    "shape_of_color": "What shape is the {color} object?",
    "spatial": "Is the {color1} {shape1} to the {relation} of the {color2} {shape2}?",
    "text_only": "What is {x} {op} {y}?",
}


@dataclass
class SyntheticTaskConfig:
    """Knobs of the synthetic task (all optional; the defaults are the embedded default task).

    Attributes:
        image_size: side of the square image in pixels (56 -> 4 image tokens, 84 -> 9, 112 -> 16).
        grid: cells per side; ``None`` -> ``max(1, image_size // 28)``. One object per cell.
        max_objects: at most this many objects per scene; ``None`` -> ``grid * grid``.
        shapes: subset of :data:`SHAPES`.
        colors: colour name -> RGB; names appear verbatim in questions and answers.
        task_weights: task type -> sampling weight; REPLACES the default mix (missing types get weight 0).
            ``None`` -> :data:`DEFAULT_TASK_WEIGHTS` (vision tasks 1, text_only 0.5).
        background: RGB background (light grey, so black masked patches are visible).
        object_scale: (min, max) object side as a fraction of the cell side.
    """

    image_size: int = 56
    grid: int | None = None
    max_objects: int | None = None
    shapes: Sequence[str] = SHAPES
    colors: Mapping[str, Sequence[int]] = field(default_factory=lambda: dict(DEFAULT_COLORS))
    task_weights: Mapping[str, float] | None = None
    background: Sequence[int] = (200, 200, 200)
    object_scale: Sequence[float] = (0.70, 0.85)

    def __post_init__(self) -> None:
        self.image_size = int(self.image_size)
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        self.grid = max(1, self.image_size // 28) if self.grid is None else int(self.grid)
        if self.grid < 1 or self.image_size // self.grid < 6:
            raise ValueError(f"grid={self.grid} leaves cells under 6 px for image_size={self.image_size}")
        self.max_objects = self.grid**2 if self.max_objects is None else int(self.max_objects)
        if not 1 <= self.max_objects <= self.grid**2:
            raise ValueError(f"max_objects must be in [1, grid*grid={self.grid**2}], got {self.max_objects}")
        self.shapes = tuple(str(s) for s in self.shapes)
        bad = [s for s in self.shapes if s not in SHAPES]
        if not self.shapes or bad or len(set(self.shapes)) != len(self.shapes):
            raise ValueError(f"shapes must be distinct names from {list(SHAPES)}, got {list(self.shapes)}")
        self.background = _rgb_triple(self.background, "background")
        self.colors = {str(k): _rgb_triple(v, f"colors.{k}") for k, v in dict(self.colors).items()}
        if not self.colors:
            raise ValueError("colors must not be empty")
        if len(set(self.colors.values())) != len(self.colors) or self.background in self.colors.values():
            raise ValueError("colours must be distinct from each other and from the background")
        lo, hi = (float(x) for x in self.object_scale)
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"object_scale must satisfy 0 < min <= max <= 1, got {self.object_scale}")
        self.object_scale = (lo, hi)
        weights = DEFAULT_TASK_WEIGHTS if self.task_weights is None else dict(self.task_weights)
        unknown = sorted(set(weights) - set(TASK_TYPES))
        if unknown:
            raise ValueError(
                f"Unknown task type(s) {unknown} in task_weights. Valid names: {list(TASK_TYPES)}"
            )
        self.task_weights = {t: float(weights.get(t, 0.0)) for t in TASK_TYPES}
        if any(w < 0 for w in self.task_weights.values()) or sum(self.task_weights.values()) <= 0:
            raise ValueError(f"task_weights must be >= 0 with a positive sum, got {weights}")
        spatial_impossible = self.grid < 2 or self.max_objects < 2 or len(self.colors) * len(self.shapes) < 2
        if self.task_weights["spatial"] > 0 and spatial_impossible:
            raise ValueError(
                "the spatial task needs grid >= 2, max_objects >= 2 and at least two (colour, shape) "
                "combinations; set task_weights.spatial=0"
            )

    @property
    def active_tasks(self) -> list[str]:
        return [t for t in TASK_TYPES if self.task_weights[t] > 0]


def _rgb_triple(value: Sequence[int], what: str) -> tuple[int, int, int]:
    rgb = tuple(int(c) for c in value)
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"{what} must be an RGB triple of ints in [0, 255], got {value!r}")
    return rgb  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------
# Scene sampling: answer first, then a consistent scene
# --------------------------------------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def _task_scene(rng: np.random.Generator, cfg: SyntheticTaskConfig, task: str) -> tuple[list, dict, str]:
    """Return (specs, question fields, answer); specs = [(colour, shape, cell or None), ...]."""
    colors, shapes, m = list(cfg.colors), list(cfg.shapes), cfg.max_objects

    def rand_spec(cols: Sequence[str] = colors, shps: Sequence[str] = shapes) -> tuple[str, str, None]:
        return _pick(rng, cols), _pick(rng, shps), None

    if task in ("count_all", "text_only"):
        n = int(rng.integers(1, m + 1))
        specs = [rand_spec() for _ in range(n)]
        if task == "count_all":
            return specs, {}, str(n)
        answer = int(rng.integers(0, MAX_ARITHMETIC_ANSWER + 1))
        if rng.random() < 0.5:
            x = int(rng.integers(0, answer + 1))
            fields = {"x": x, "op": "+", "y": answer - x}
        else:
            y = int(rng.integers(0, MAX_ARITHMETIC_ANSWER - answer + 1))
            fields = {"x": answer + y, "op": "-", "y": y}
        return specs, fields, str(answer)

    if task in ("count_color", "count_shape"):
        by_color = task == "count_color"
        pool = colors if by_color else shapes
        target = _pick(rng, pool)
        others = [p for p in pool if p != target]
        k = int(rng.integers(0 if others else 1, m + 1))  # the answer, uniform
        n = int(rng.integers(max(k, 1), m + 1)) if others else k
        if by_color:
            specs = [rand_spec(cols=[target]) for _ in range(k)] + [
                rand_spec(cols=others) for _ in range(n - k)
            ]
            return specs, {"color": target}, str(k)
        specs = [rand_spec(shps=[target]) for _ in range(k)] + [rand_spec(shps=others) for _ in range(n - k)]
        return specs, {"plural": PLURALS[target]}, str(k)

    if task == "color_of_shape":
        color, shape = _pick(rng, colors), _pick(rng, shapes)  # colour = the answer, uniform
        others = [s for s in shapes if s != shape]
        n = int(rng.integers(1, m + 1)) if others else 1
        specs = [(color, shape, None)] + [rand_spec(shps=others) for _ in range(n - 1)]
        return specs, {"shape": shape}, color

    if task == "shape_of_color":
        shape, color = _pick(rng, shapes), _pick(rng, colors)  # shape = the answer, uniform
        others = [c for c in colors if c != color]
        n = int(rng.integers(1, m + 1)) if others else 1
        specs = [(color, shape, None)] + [rand_spec(cols=others) for _ in range(n - 1)]
        return specs, {"color": color}, shape

    if task == "spatial":
        combos = [(c, s) for c in colors for s in shapes]
        ia, ib = rng.permutation(len(combos))[:2]
        (ca, sa), (cb, sb) = combos[int(ia)], combos[int(ib)]
        yes = bool(rng.integers(2))  # the answer, uniform
        relation = _pick(rng, ["left", "right"])
        left_col, right_col = sorted(int(c) for c in rng.permutation(cfg.grid)[:2])
        a_is_left = (relation == "left") == yes
        col_a, col_b = (left_col, right_col) if a_is_left else (right_col, left_col)
        cell_a = int(rng.integers(cfg.grid)) * cfg.grid + col_a
        cell_b = int(rng.integers(cfg.grid)) * cfg.grid + col_b
        rest = [cs for cs in combos if cs not in ((ca, sa), (cb, sb))]
        n_rest = int(rng.integers(0, m - 1)) if rest else 0
        specs = [(ca, sa, cell_a), (cb, sb, cell_b)]
        specs += [(*rest[int(rng.integers(len(rest)))], None) for _ in range(n_rest)]
        fields = {"color1": ca, "shape1": sa, "relation": relation, "color2": cb, "shape2": sb}
        return specs, fields, "yes" if yes else "no"

    raise ValueError(f"Unknown task type {task!r}. Valid names: {list(TASK_TYPES)}")


def _layout(rng: np.random.Generator, cfg: SyntheticTaskConfig, specs: list) -> list[dict]:
    """Assign free cells to specs without one, then a size and jittered position inside each cell."""
    fixed = {cell for *_, cell in specs if cell is not None}
    free = [c for c in range(cfg.grid**2) if c not in fixed]
    need = sum(cell is None for *_, cell in specs)
    drawn = iter(free[int(j)] for j in rng.permutation(len(free))[:need])
    objects = []
    for color, shape, cell in specs:
        cell = next(drawn) if cell is None else cell
        row, col = divmod(cell, cfg.grid)
        x_lo, x_hi = col * cfg.image_size // cfg.grid, (col + 1) * cfg.image_size // cfg.grid
        y_lo, y_hi = row * cfg.image_size // cfg.grid, (row + 1) * cfg.image_size // cfg.grid
        side = min(x_hi - x_lo, y_hi - y_lo)
        size = max(3, round(rng.uniform(*cfg.object_scale) * side))
        x0 = x_lo + int(rng.integers(0, x_hi - x_lo - size + 1))
        y0 = y_lo + int(rng.integers(0, y_hi - y_lo - size + 1))
        objects.append({"color": color, "shape": shape, "row": row, "col": col, "box": (x0, y0, size)})
    return objects


def _draw(cfg: SyntheticTaskConfig, objects: list[dict]) -> Image.Image:
    img = Image.new("RGB", (cfg.image_size, cfg.image_size), cfg.background)
    draw = ImageDraw.Draw(img)
    for obj in objects:
        x0, y0, size = obj["box"]
        x1, y1 = x0 + size - 1, y0 + size - 1
        fill = cfg.colors[obj["color"]]
        if obj["shape"] == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif obj["shape"] == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        else:  # triangle, apex up
            draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    return img


def generate_example(
    rng: np.random.Generator, config: SyntheticTaskConfig | None = None, *, draw: bool = True
) -> dict[str, Any]:
    """One item: ``{"image", "problem", "answer", "task_type", "vision_dependency", "objects"}``.

    ``objects`` lists each object's colour, shape, grid cell (row, col) and box (x0, y0, size) for tests and
    debugging; ``image`` is ``None`` when ``draw=False`` (text-only uses such as the tokenizer corpus).
    """
    cfg = config or SyntheticTaskConfig()
    tasks = cfg.active_tasks
    cumulative = np.cumsum([cfg.task_weights[t] for t in tasks])
    task = tasks[
        min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), len(tasks) - 1)
    ]
    specs, fields, answer = _task_scene(rng, cfg, task)
    objects = _layout(rng, cfg, specs)
    return {
        "image": _draw(cfg, objects) if draw else None,
        "problem": QUESTIONS[task].format(**fields),
        "answer": answer,
        "task_type": task,
        "vision_dependency": VISION_DEPENDENCY[task],
        "objects": objects,
    }


def _split_key(split: str) -> int:
    return zlib.crc32(str(split).encode("utf-8"))


def build_synthetic_split(split: str = "train", size: int = 1000, seed: int = 0, **task_kwargs: Any):
    """Build ``size`` items of the synthetic task as a ``datasets.Dataset``.

    Columns: ``images`` (``List(Image())``, one PNG-encoded image per row), ``problem``, ``answer``,
    ``task_type``, ``vision_dependency``, ``uid`` (``f"{split}-{i}"``). ``task_kwargs`` are the fields of
    :class:`SyntheticTaskConfig`. Item ``i`` is generated from ``default_rng([seed, crc32(split), i])``.
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
    cfg = SyntheticTaskConfig(**task_kwargs)
    key = _split_key(split)
    columns: dict[str, list] = {
        k: [] for k in ("images", "problem", "answer", "task_type", "vision_dependency", "uid")
    }
    for i in range(int(size)):
        ex = generate_example(np.random.default_rng([int(seed), key, i]), cfg)
        buf = io.BytesIO()
        ex["image"].save(buf, format="PNG", compress_level=1)
        columns["images"].append([{"bytes": buf.getvalue(), "path": None}])
        for k in ("problem", "answer", "task_type", "vision_dependency"):
            columns[k].append(ex[k])
        columns["uid"].append(f"{split}-{i}")
    features = Features(
        {
            "images": ListFeature(ImageFeature()),
            **{k: Value("string") for k in ("problem", "answer", "task_type", "vision_dependency", "uid")},
        }
    )
    return Dataset.from_dict(columns, features=features)


# --------------------------------------------------------------------------------------------------------------
# Supervised targets and tokenizer corpus
# --------------------------------------------------------------------------------------------------------------
_PARSERS = {
    "count_color": (re.compile(r"How many (?P<color>.+?) objects"), "count {color} objects"),
    "count_shape": (re.compile(r"How many (?P<plural>.+?) are"), "count {plural}"),
    "color_of_shape": (re.compile(r"What color is the (?P<shape>.+?)\?"), "find the {shape}"),
    "shape_of_color": (re.compile(r"What shape is the (?P<color>.+?) object"), "find the {color} object"),
    "text_only": (
        re.compile(r"What is (?P<x>\d+) (?P<op>[+-]) (?P<y>\d+)\?"),
        "{x} {op} {y} = {answer}",
    ),
}
_FIXED_THINK = {"count_all": "count all objects", "spatial": "compare positions"}


def reference_response(example: Mapping[str, Any]) -> str:
    """A short correctly formatted target, e.g. ``"<think>count red objects</think> \\boxed{2}"``.

    The think text is task specific (parsed from the question); unknown task types or questions get a generic
    one. Used for supervised warm-up and as a known-good response in reward tests.
    """
    task, problem, answer = example.get("task_type", ""), str(example.get("problem", "")), example["answer"]
    think = _FIXED_THINK.get(task, "reason briefly")
    if task in _PARSERS:
        pattern, fmt = _PARSERS[task]
        match = pattern.search(problem)
        if match:
            think = fmt.format(answer=answer, **match.groupdict())
    return f"<think>{think}</think> \\boxed{{{answer}}}"


def synthetic_corpus(n: int = 2000, seed: int = 0, **task_kwargs: Any) -> list[str]:
    """Texts for training a tokenizer on the synthetic task (no images are drawn).

    Contains the prompt of ``n`` items under each of :data:`papo.data.prompts.TOKENIZER_CORPUS_TEMPLATES` (frozen,
    so the tiny tokenizer never changes), their answers and reference responses, and every colour / shape word,
    so that all task vocabulary is covered.
    """
    cfg = SyntheticTaskConfig(**task_kwargs)
    texts: list[str] = []
    for i in range(int(n)):
        ex = generate_example(np.random.default_rng([int(seed), _split_key("corpus"), i]), cfg, draw=False)
        texts.extend(build_prompt(ex["problem"], t) for t in TOKENIZER_CORPUS_TEMPLATES)
        texts.append(ex["answer"])
        texts.append(reference_response(ex))
    texts.extend(list(cfg.colors) + list(cfg.shapes) + [PLURALS[s] for s in cfg.shapes])
    return texts
