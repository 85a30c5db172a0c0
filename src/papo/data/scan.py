"""One pass over a split before training: find bad rows and prompts longer than ``max_prompt_length``.

:func:`scan_split` reads every row once (in Arrow batches, images NOT decoded: only their headers are
opened for the size), and returns the rows to keep plus a :class:`ScanReport`. A row is *bad* when its
``problem`` or ``answer`` is missing, empty or not text (``papo.data.rows.text_field``; a value the
loader could not represent as text is named in the ``bad_value`` column), when it has no image and text-only
rows are not allowed (``allow_text_only``), when an image cannot be opened, or when ANY exception is raised
while measuring or preparing it (e.g. the processor refusing an image's aspect ratio while counting its
tokens): the exception becomes that row's reason, never a crash of the scan. With
``on_bad_row="error"`` the first bad row raises a ``ValueError`` naming the dataset, split, row, uid and
reason; with ``"skip"`` bad rows are dropped, counted and logged (the first few by row and reason), and
:meth:`ScanReport.dropped_rows` lists every dropped row (the pipeline writes the list to
``<output_dir>/dropped_rows.jsonl`` and logs the count as ``data/dropped_rows_setup``). Never silently.

Prompt lengths come from the caller as a callable ``prompt_length_fn(prompts, image_sizes) -> [int]`` (the
pipeline passes :class:`papo.rollout.prompt_length.PromptLength`, exact token counts of what the rollout
feeds the model), so this module needs no processor, model or rollout code. Prompts longer than
``max_prompt_length`` are dropped with a logged count, as verl/EasyR1's ``filter_overlong_prompts`` does
(the released code filters with the same rule, but decodes every image to count).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from papo.data.prompts import build_prompt
from papo.data.rows import no_image_reason, text_field

log = logging.getLogger(__name__)

__all__ = ["ON_BAD_ROW", "ScanReport", "image_size", "scan_split"]

ON_BAD_ROW = ("error", "skip")


def image_size(obj: Any, max_pixels: int = 64_000_000) -> tuple[int, int]:
    """``(width, height)`` of an image in any form :func:`~papo.data.images.load_image` accepts, reading
    only the header. Raises ``ValueError`` with the reason when it cannot be opened."""
    if isinstance(obj, Image.Image):
        size = obj.size
    elif isinstance(obj, np.ndarray):
        if obj.ndim not in (2, 3):
            raise ValueError(f"array of shape {obj.shape} is not an image")
        size = (obj.shape[1], obj.shape[0])
    else:
        if isinstance(obj, Mapping):
            data, path = obj.get("bytes"), obj.get("path")
            if not data and not path:
                raise ValueError(f"image dict has neither 'bytes' nor 'path' (keys: {sorted(obj)})")
            obj = bytes(data) if data else path
        if obj is None:
            raise ValueError("image is None")
        if isinstance(obj, (bytes, bytearray, memoryview)):
            if len(obj) == 0:
                raise ValueError("empty bytes")
            src: Any = io.BytesIO(bytes(obj))
        elif isinstance(obj, (str, os.PathLike)):
            if not os.path.isfile(obj):
                raise ValueError(f"no such file: {os.fspath(obj)!r}")
            src = obj
        else:
            raise ValueError(f"unsupported image type {type(obj).__name__}")
        try:
            with Image.open(src) as img:
                size = img.size
        except Exception as e:  # PIL raises several types for corrupt data
            raise ValueError(f"cannot open image: {type(e).__name__}: {e}") from None
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"empty image of size {size[0]}x{size[1]}")
    if size[0] * size[1] > max_pixels:
        raise ValueError(f"{size[0]}x{size[1]} pixels exceeds the decompression-bomb limit {max_pixels}")
    return size


@dataclass
class ScanReport:
    """What a scan found: rows kept, bad rows (row, reason), rows over the prompt limit (with their token
    counts in ``too_long_tokens``), the uids of the dropped rows, length stats."""

    num_rows: int = 0
    keep: list[int] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)
    too_long: list[int] = field(default_factory=list)
    too_long_tokens: list[int] = field(default_factory=list)
    uids: dict[int, str] = field(default_factory=dict)
    max_length: int = 0
    mean_length: float = 0.0

    def summary(self, name: str, split: str, max_prompt_length: int | None) -> str:
        parts = [f"dataset={name} split={split}: {self.num_rows} rows, kept {len(self.keep)}"]
        if self.bad:
            first = "; ".join(f"row {r}: {why}" for r, why in self.bad[:3])
            parts.append(f"skipped {len(self.bad)} bad row(s) (first: {first})")
        if max_prompt_length is not None:
            parts.append(
                f"filtered {len(self.too_long)} prompt(s) longer than max_prompt_length={max_prompt_length} "
                f"tokens (longest {self.max_length}, mean {self.mean_length:.0f})"
            )
            if self.too_long:
                pairs = zip(self.too_long[:3], self.too_long_tokens[:3], strict=False)
                first = ", ".join(f"row {r}: {n} tokens" for r, n in pairs)
                parts[-1] += f"; first: {first}"
        return "; ".join(parts)

    def dropped_rows(
        self, name: str, split: str, max_prompt_length: int | None = None
    ) -> list[dict[str, Any]]:
        """One record per dropped row, in row order: ``dataset``, ``split``, ``row`` (index in the split as
        given), ``uid`` (the ``uid`` column, else ``<split>-<row>`` as the datamodule names rows), ``reason``
        (and ``prompt_tokens`` for an over-long prompt). The pipeline writes them to
        ``<output_dir>/dropped_rows.jsonl``."""
        limit = "" if max_prompt_length is None else f" > max_prompt_length={max_prompt_length}"
        dropped = [(row, why, None) for row, why in self.bad] + [
            (row, f"prompt of {n} tokens{limit}", n)
            for row, n in zip(self.too_long, self.too_long_tokens, strict=True)
        ]
        out = []
        for row, why, tokens in sorted(dropped, key=lambda d: d[0]):
            uid = self.uids.get(row, f"{split}-{row}")
            rec: dict[str, Any] = {"dataset": name, "split": split, "row": row, "uid": uid, "reason": why}
            if tokens is not None:
                rec["prompt_tokens"] = tokens
            out.append(rec)
        return out


def _row_problem(record: Mapping[str, Any], allow_text_only: bool) -> str | None:
    """Why the text fields or the image list are bad, or None (the rules of
    ``papo.data.rows.text_field``: None, empty, not text or not UTF-8; numbers are fine answers)."""
    if record.get("bad_value"):
        return str(record["bad_value"])
    reason = text_field(record["problem"], "problem")[1] or text_field(record["answer"], "answer")[1]
    if reason is None and not allow_text_only:
        reason = no_image_reason(record["images"])
    return reason


def _error(dataset_name: str, split: str, row: int, uid: str, reason: str) -> ValueError:
    return ValueError(
        f"bad row in dataset={dataset_name} split={split} row={row} uid={uid}: {reason}. "
        "Fix the data, or set data.on_bad_row=skip to drop such rows (counted, logged and listed in "
        "dropped_rows.jsonl)."
    )


def _note_uid(report: ScanReport, row: int, record: Mapping[str, Any]) -> None:
    if record.get("uid") is not None:
        report.uids[row] = str(record["uid"])


def _decoded(text: Any) -> str:
    return bytes(text).decode("utf-8") if isinstance(text, (bytes, bytearray, memoryview)) else str(text)


def _prepare(
    record: Mapping[str, Any], prompt_template: str, max_pixels: int, allow_text_only: bool
) -> tuple[str | None, str, list[tuple[int, int]]]:
    """(why the row is bad or None, its templated prompt, its image sizes)."""
    reason = _row_problem(record, allow_text_only)
    if reason is not None:
        return reason, "", []
    images = record["images"]
    items = [] if images is None else images if isinstance(images, list) else [images]
    sizes = []
    for j, item in enumerate(items):
        try:
            sizes.append(image_size(item, max_pixels))
        except ValueError as e:
            return f"image {j}: {e}", "", []
    return None, build_prompt(_decoded(record["problem"]), prompt_template), sizes


def _measure(
    fn: Callable[[list[str], list[list[tuple[int, int]]]], list[int]],
    prompts: list[str],
    sizes: list[list[tuple[int, int]]],
) -> list[int | str]:
    """Token counts of a batch of prompts; when the batch call raises, each row alone, so an exception
    names its own row (as a ``str`` reason in place of the count) and the others are measured."""
    try:
        return list(fn(prompts, sizes))
    except Exception:
        out: list[int | str] = []
        for prompt, size in zip(prompts, sizes, strict=True):
            try:
                out.append(int(fn([prompt], [size])[0]))
            except Exception as e:
                out.append(f"cannot measure the prompt: {type(e).__name__}: {e}")
        return out


def scan_split(
    hf_dataset: Any,
    *,
    dataset_name: str = "dataset",
    split: str = "train",
    prompt_template: str = "published",
    on_bad_row: str = "error",
    max_prompt_length: int | None = None,
    prompt_length_fn: Callable[[list[str], list[list[tuple[int, int]]]], list[int]] | None = None,
    max_pixels: int = 64_000_000,
    batch_size: int = 1024,
    allow_text_only: bool = True,
) -> ScanReport:
    """Scan every row of ``hf_dataset`` (hub-convention columns). See the module docstring.

    ``allow_text_only=False`` makes a row without an image a bad row.

    Raises:
        ValueError: a bad row with ``on_bad_row="error"`` (names dataset, split, row, uid, reason and the
            switch).
    """
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row={on_bad_row!r} is unknown; valid: {list(ON_BAD_ROW)}")
    report = ScanReport(num_rows=len(hf_dataset))
    lengths: list[int] = []
    optional = [c for c in ("uid", "bad_value") if c in hf_dataset.column_names]
    table = hf_dataset.select_columns(["images", "problem", "answer", *optional]).with_format("arrow")

    def bad(row: int, record: Mapping[str, Any], reason: str) -> None:
        _note_uid(report, row, record)
        report.bad.append((row, reason))

    for start in range(0, len(hf_dataset), batch_size):
        rows = table[start : start + batch_size].to_pylist()
        good_rows, prompts, sizes = [], [], []
        for offset, record in enumerate(rows):
            row = start + offset
            try:
                reason, prompt, row_sizes = _prepare(record, prompt_template, max_pixels, allow_text_only)
            except Exception as e:  # any failure to read one row is that row's report
                reason, prompt, row_sizes = f"cannot prepare the row: {type(e).__name__}: {e}", "", []
            if reason is not None:
                bad(row, record, reason)
                continue
            good_rows.append(row)
            prompts.append(prompt)
            sizes.append(row_sizes)
        if prompt_length_fn is None or max_prompt_length is None or not good_rows:
            report.keep.extend(good_rows)
        else:
            for row, n in zip(good_rows, _measure(prompt_length_fn, prompts, sizes), strict=True):
                if isinstance(n, str):  # the processor refused this row (e.g. an image's aspect ratio)
                    bad(row, rows[row - start], n)
                    continue
                lengths.append(n)
                if n <= max_prompt_length:
                    report.keep.append(row)
                else:
                    report.too_long.append(row)
                    report.too_long_tokens.append(int(n))
                    _note_uid(report, row, rows[row - start])
        if on_bad_row == "error" and report.bad:  # the first bad row in source order
            row, reason = min(report.bad)
            raise _error(dataset_name, split, row, report.uids.get(row, f"{split}-{row}"), reason)
    if lengths:
        report.max_length, report.mean_length = max(lengths), float(np.mean(lengths))
    return report
