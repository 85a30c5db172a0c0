"""Load a dataset split from the Hugging Face hub or from local files into the standard columns.

The datamodule (:class:`papo.data.datamodule.PapoDataModule`) consumes ``datasets.Dataset`` objects with the
columns ``images`` (a list of images per row), ``problem`` and ``answer`` (plus optional ``task_type``,
``vision_dependency``, ``uid``). :func:`load_split` produces exactly that from

- a hub dataset id (``PAPOGalaxy/PAPO_ViRL39K_train``), fetched with ``datasets.load_dataset`` at run time
  (on the user's machine; tests never download);
- a local file: ``.parquet``, ``.arrow``, ``.jsonl`` / ``.json``, or ``.csv`` (a glob such as
  ``data/*.parquet`` or a list of files works too);
- a local directory written by ``Dataset.save_to_disk`` (or a ``DatasetDict``'s, then ``split`` picks one), or
  a directory of such files.

``columns`` maps source column names to the standard names, e.g. ``{question: problem, solution: answer,
image: images}``. A column mapped to ``images`` may hold one image or a list of images per row (multi-image
rows are kept as lists; every image is later decoded and masked). Image entries may be ``datasets.Image``
values (``{bytes, path}``), raw bytes, or path strings; relative paths are resolved against ``image_dir``
(default: the data file's directory), so a jsonl file next to an image folder works as is.

Images are NOT decoded here (``datasets.Image`` features are switched to ``decode=False``): the datamodule
decodes each image with :func:`papo.data.images.load_image` when a row is drawn, so a bad image names its row.

``<image>`` placeholders in the question are kept by default: the chat messages put each image where its
placeholder is, as EasyR1 (which the PAPO release uses) does, and a question without one gets its images first
(:func:`papo.data.prompts.chat_messages`). ``strip_image_placeholders=true`` removes them instead, so every
image goes before the text.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "HUB_OFFLINE_HINT",
    "LOCAL_FORMATS",
    "STANDARD_COLUMNS",
    "TEXT_COLUMNS",
    "HubOfflineError",
    "hub_offline_error",
    "load_split",
    "resolve_source",
    "value_as_text",
]

#: what to do when a hub model / dataset is not cached and hub access is off (papo.utils.run_env)
HUB_OFFLINE_HINT = (
    "the hub is offline by default: set PAPO_ALLOW_HUB=1, or point model.path / "
    "data.train_dataset.source at a local copy"
)
_TRUE = ("1", "on", "yes", "true")


class HubOfflineError(ConnectionError):
    """A hub model or dataset is not in the local cache and hub access is off (message: HUB_OFFLINE_HINT)."""


def hub_offline() -> bool:
    """Whether Hugging Face hub access is off in this process (HF_HUB_OFFLINE and friends; src/train.py sets
    them unless PAPO_ALLOW_HUB=1)."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(n, "").strip().lower() in _TRUE for n in names)


def hub_offline_error(exc: BaseException, what: str) -> HubOfflineError | None:
    """``exc`` restated with :data:`HUB_OFFLINE_HINT` when it is a failed hub access while the hub is offline
    (transformers: "We couldn't connect to 'https://huggingface.co'", datasets / huggingface_hub:
    ``OfflineModeIsEnabled``); None for any other error (raise that one as it is)."""
    if not hub_offline():
        return None
    chain, e = [], exc
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(f"{type(e).__name__} {e}" for e in chain).lower()
    if not any(k in text for k in ("offlinemodeisenabled", "couldn't connect", "offline mode")):
        return None
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return HubOfflineError(f"{what} is not available locally, and {HUB_OFFLINE_HINT} ({first})")


#: columns the datamodule reads (everything else is dropped)
STANDARD_COLUMNS = ("images", "problem", "answer", "task_type", "vision_dependency", "uid")
#: file suffix -> ``datasets`` builder name
LOCAL_FORMATS = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
}
_IMAGE_PLACEHOLDER = re.compile(r"\s*<image>\s*")


def _no_decode(feature: Any) -> Any:
    """A copy of ``feature`` with every ``datasets.Image`` set to ``decode=False`` (lists/dicts recursed)."""
    from datasets import Image as ImageFeature

    if isinstance(feature, ImageFeature):
        return ImageFeature(decode=False)
    if isinstance(feature, dict):
        return type(feature)({k: _no_decode(v) for k, v in feature.items()})
    for attr in ("feature",):  # datasets.List / Sequence / LargeList
        inner = getattr(feature, attr, None)
        if inner is not None and hasattr(feature, "__dataclass_fields__"):
            import dataclasses

            return dataclasses.replace(feature, **{attr: _no_decode(inner)})
    if isinstance(feature, list) and len(feature) == 1:  # old-style [feature]
        return [_no_decode(feature[0])]
    return feature


def resolve_source(source: str | Sequence[str]) -> tuple[str, Any]:
    """Classify ``source``: ``("files", (builder, [files]))``, ``("disk", path)`` or ``("hub", id)``.

    A string that names an existing file, directory or glob is local; anything else is a hub id.
    """
    if not isinstance(source, str):
        files = [str(Path(s).expanduser()) for s in source]
        return "files", (_builder_for(files), files)
    path = Path(source).expanduser()
    if path.is_file():
        return "files", (_builder_for([str(path)]), [str(path)])
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return "disk", str(path)
        files = sorted(str(p) for p in path.iterdir() if p.suffix in LOCAL_FORMATS)
        if not files:
            raise FileNotFoundError(
                f"directory {path} holds neither a saved dataset (save_to_disk) nor data files "
                f"with a suffix in {sorted(LOCAL_FORMATS)}"
            )
        return "files", (_builder_for(files), files)
    if any(ch in source for ch in "*?["):
        files = sorted(glob.glob(os.path.expanduser(source)))
        if not files:
            raise FileNotFoundError(f"no file matches {source!r}")
        return "files", (_builder_for(files), files)
    if source.startswith((".", "/", "~")) or source.endswith(tuple(LOCAL_FORMATS)):
        raise FileNotFoundError(f"local data source {source!r} does not exist")
    return "hub", source


def _builder_for(files: list[str]) -> str:
    suffixes = {Path(f).suffix for f in files}
    unknown = suffixes - set(LOCAL_FORMATS)
    if unknown or len({LOCAL_FORMATS[s] for s in suffixes}) != 1:
        raise ValueError(
            f"data files must share one format with a suffix in {sorted(LOCAL_FORMATS)}; got {sorted(suffixes)}"
        )
    return LOCAL_FORMATS[suffixes.pop()]


def _load_raw(
    source: str | Sequence[str],
    split: str,
    name: str | None,
    revision: str | None,
    cache_dir: str | None,
) -> tuple[Any, str | None]:
    """The source as a ``datasets.Dataset`` (all columns, images undecoded) and its local directory."""
    import datasets

    kind, what = resolve_source(source)
    if kind == "disk":
        ds = datasets.load_from_disk(what)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"saved dataset {what} has splits {list(ds)}, not {split!r}")
            ds = ds[split]
        return ds, what
    if kind == "files":
        builder, files = what
        # local files: one "train" split holds every file (``split`` only names it in messages)
        ds = datasets.load_dataset(builder, data_files={"train": files}, split="train", cache_dir=cache_dir)
        return ds, str(Path(files[0]).parent)
    log.info("loading hub dataset %s (config %s, split %s, revision %s)", what, name, split, revision)
    try:
        ds = datasets.load_dataset(what, name, split=split, revision=revision, cache_dir=cache_dir)
    except OSError as exc:  # ConnectionError (OfflineModeIsEnabled) included
        err = hub_offline_error(exc, f"hub dataset {what!r}")
        if err is None:
            raise
        raise err from exc
    return ds, None


def _as_image_list(value: Any, image_dir: str | None) -> list[Any]:
    """One row's images as a list; relative path strings resolved against ``image_dir``."""
    if value is None:
        return []
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        if isinstance(item, str) and image_dir and not os.path.isabs(item):
            item = os.path.join(image_dir, item)
        elif isinstance(item, Mapping) and not item.get("bytes") and item.get("path") and image_dir:
            p = item["path"]
            item = {"bytes": None, "path": p if os.path.isabs(p) else os.path.join(image_dir, p)}
        out.append(item)
    return out


def load_split(
    source: str | Sequence[str],
    split: str = "train",
    name: str | None = None,
    revision: str | None = None,
    columns: Mapping[str, str] | None = None,
    image_dir: str | None = None,
    limit: int | None = None,
    strip_image_placeholders: bool = False,
    defaults: Mapping[str, str] | None = None,
    cache_dir: str | None = None,
    num_proc: int | None = None,
    keep_rows: Mapping[str, Sequence[str]] | None = None,
) -> Any:
    """Load ``split`` of ``source`` as a ``datasets.Dataset`` with the standard columns (module docstring).

    Args:
        source: hub id, local file / glob / directory, or a list of local files.
        split: hub split (``train``, ``test``, ...) or the split of a saved ``DatasetDict``.
        name: hub config name (e.g. ``testmini`` for MathVerse).
        revision: hub revision (commit / tag) to pin.
        columns: ``{source_column: standard_column}``; unmapped standard columns must exist under their own name.
        image_dir: base directory of relative image paths (default: the data file's directory).
        limit: keep only the first ``limit`` rows (smoke runs, quick evaluation).
        strip_image_placeholders: remove ``<image>`` placeholders from ``problem`` (every image then goes before
            the text); False keeps them, and each image goes where its placeholder is.
        defaults: constant values for optional columns absent from the source, e.g. ``{task_type: geometry}``.
        cache_dir: ``datasets`` cache directory (default: ``HF_DATASETS_CACHE``).
        num_proc: worker processes for the column conversion (None: in-process).
        keep_rows: ``{source_column: [values]}``: keep only the rows whose column holds one of the values (every
            column must match), applied before ``limit``; e.g. MathVerse's ``{question_type: [multi-choice]}``.

    Returns:
        ``datasets.Dataset`` with ``images`` (list per row, undecoded), ``problem``, ``answer`` (strings) and
        any of ``task_type``, ``vision_dependency``, ``uid`` present in the source or ``defaults``.

    Raises:
        ValueError: a required column is missing after the mapping (the message lists the present columns).
        HubOfflineError: a hub id that is not cached while the hub is offline (the default unless
            PAPO_ALLOW_HUB=1); the message says how to allow it or use a local copy.
    """
    ds, base_dir = _load_raw(source, split, name, revision, cache_dir)
    mapping = dict(columns or {})
    unknown = sorted(set(mapping.values()) - set(STANDARD_COLUMNS))
    if unknown:
        raise ValueError(
            f"columns maps to unknown standard name(s) {unknown}; valid: {list(STANDARD_COLUMNS)}"
        )
    absent = sorted(set(mapping) - set(ds.column_names))
    if absent:
        raise ValueError(
            f"data source {source!r}: mapped column(s) {absent} not found; present columns: {ds.column_names}"
        )
    for column, values in (keep_rows or {}).items():
        if column not in ds.column_names:
            raise ValueError(
                f"data source {source!r}: keep_rows column {column!r} not found; present: {ds.column_names}"
            )
        allowed, before = {str(v) for v in values}, len(ds)
        ds = ds.filter(
            lambda col, allowed=allowed: [str(v) in allowed for v in col],
            batched=True,
            input_columns=[column],
        )
        log.info(
            "data source %s (%s): kept %d of %d rows with %s in %s",
            source,
            split,
            len(ds),
            before,
            column,
            sorted(allowed),
        )
    if limit is not None:
        if int(limit) < len(ds):  # never a silent cut (e.g. a held-out val file under data=local_files)
            log.info(
                "data source %s (%s): kept the first %d of %d rows (limit=%d; limit=null keeps all)",
                source,
                split,
                int(limit),
                len(ds),
                int(limit),
            )
        ds = ds.select(range(min(int(limit), len(ds))))
    ds = ds.cast(_no_decode(ds.features))
    renamed = {src: dst for src, dst in mapping.items() if src != dst}
    clash = [dst for src, dst in renamed.items() if dst in ds.column_names and dst not in renamed]
    if clash:  # e.g. mapping image -> images while an unrelated "images" column exists: drop it
        ds = ds.remove_columns(clash)
    if renamed:
        ds = ds.rename_columns(renamed)
    missing = [c for c in ("images", "problem", "answer") if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"data source {source!r} ({split}) has no column(s) {missing} after the mapping {mapping}; "
            f"present columns: {ds.column_names}. Map them with columns={{source_name: standard_name}}."
        )
    ds = ds.remove_columns([c for c in ds.column_names if c not in STANDARD_COLUMNS])
    for key, value in (defaults or {}).items():
        if key not in STANDARD_COLUMNS:
            raise ValueError(f"defaults has unknown column {key!r}; valid: {list(STANDARD_COLUMNS)}")
        if key not in ds.column_names:
            ds = ds.add_column(key, [str(value)] * len(ds))
    img_base = str(Path(image_dir).expanduser()) if image_dir else base_dir

    images_feature = ds.features["images"]
    single = not (hasattr(images_feature, "feature") or isinstance(images_feature, list))
    needs_paths = img_base is not None and _has_path_images(ds)
    if single or needs_paths or strip_image_placeholders:

        def convert(batch: dict[str, list]) -> dict[str, list]:
            out = dict(batch)
            if single or needs_paths:
                out["images"] = [_as_image_list(v, img_base) for v in batch["images"]]
            if strip_image_placeholders:
                out["problem"] = [
                    _IMAGE_PLACEHOLDER.sub(" ", p).strip() if isinstance(p, str) else p
                    for p in batch["problem"]
                ]
            return out

        features = ds.features.copy()
        if single or needs_paths:
            features = None  # let datasets infer the new images type (list of dicts / strings)
        ds = ds.map(
            convert, batched=True, batch_size=256, features=features, num_proc=num_proc, desc="columns"
        )
    ds = _text_columns(ds, num_proc)
    log.info("data source %s (%s): %d rows, columns %s", source, split, len(ds), ds.column_names)
    return ds


#: text columns whose values reach the model as written (numbers as their text), whatever their type
TEXT_COLUMNS = ("problem", "answer", "task_type", "vision_dependency", "uid")
#: the column naming why a row's value could not be represented as text (None when it could)
BAD_VALUE_COLUMN = "bad_value"


def _is_string(feature: Any) -> bool:
    return type(feature).__name__ == "Value" and str(feature.dtype) in ("string", "large_string")


def value_as_text(value: Any, column: str) -> tuple[str | None, str | None]:
    """``(text, None)`` for a value of any type a loader produces, or ``(None, reason)``.

    Strings are kept as they are (``""`` stays empty, and is reported downstream); integers and finite
    floats become their decimal text (``3`` -> ``"3"``); None stays None (reported downstream as missing).
    Booleans, lists, dicts and non-finite floats are not text: the reason names the column and the type.
    """
    if value is None or isinstance(value, str):
        return value, None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, f"{column} must be a string (or a number), got {type(value).__name__} {value!r:.40}"
    if isinstance(value, float) and not math.isfinite(value):
        return None, f"{column} is {value}"
    return str(value), None


def _text_columns(ds: Any, num_proc: int | None) -> Any:
    """Every text column as strings, value by value (:func:`value_as_text`).

    A jsonl column that mixes types (strings, integers, nulls) is read by ``datasets`` as a ``Json``
    column; casting it to strings would give the JSON text (an empty answer as the two characters ``""``).
    Here each value is decoded first, so it reaches the model exactly as written; a value that is not text
    is named in the ``bad_value`` column and its row is reported by the scan / the datamodule.
    """
    columns = [c for c in TEXT_COLUMNS if c in ds.column_names and not _is_string(ds.features[c])]
    if not columns:
        return ds
    from datasets import Value

    def convert(batch: dict[str, list]) -> dict[str, list]:
        out = dict(batch)
        reasons: list[str | None] = list(batch.get(BAD_VALUE_COLUMN) or [None] * len(batch[columns[0]]))
        for column in columns:
            texts = []
            for i, value in enumerate(batch[column]):
                text, why = value_as_text(value, column)
                texts.append(text)
                if why is not None and reasons[i] is None:
                    reasons[i] = why
            out[column] = texts
        out[BAD_VALUE_COLUMN] = reasons
        return out

    features = ds.features.copy()
    for column in columns:
        features[column] = Value("string")
    features[BAD_VALUE_COLUMN] = Value("string")
    return ds.map(convert, batched=True, batch_size=1024, features=features, num_proc=num_proc, desc="text")


def _has_path_images(ds: Any) -> bool:
    """Whether ANY image entry of the split is a path string or a path-only ``{bytes: None, path}`` struct
    (read column-wise from Arrow, every row, nothing decoded), so relative paths are resolved everywhere."""
    import pyarrow as pa

    if len(ds) == 0:
        return False
    # the memory-mapped column, image bytes not copied (rows a selection left out count too: resolving a
    # relative path is harmless for rows that have none)
    column = ds.data.column("images")
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    return any(_chunk_has_path_images(chunk) for chunk in chunks)


def _chunk_has_path_images(array: Any) -> bool:
    import pyarrow as pa
    import pyarrow.compute as pc

    while pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        array = array.flatten()
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return array.null_count < len(array)
    if pa.types.is_struct(array.type) and {"bytes", "path"} <= {f.name for f in array.type}:
        data = array.field("bytes")
        no_bytes = pc.fill_null(pc.or_(pc.is_null(data), pc.equal(pc.binary_length(data), 0)), True)
        path_only = pc.and_(no_bytes, pc.is_valid(array.field("path")))
        return bool(pc.any(pc.fill_null(path_only, False)).as_py())
    return False
