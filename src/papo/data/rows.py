"""The rules that make a dataset row usable, shared by the setup scan and the datamodule.

:func:`text_field` decides whether a ``problem`` / ``answer`` value is usable text; :func:`no_image_reason`
whether a row has an image. :mod:`papo.data.scan` applies them once to every row before training, and
:class:`papo.data.datamodule.PromptDataset` again when it decodes a row, so both report a bad row with the
same reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["no_image_reason", "text_field"]


def no_image_reason(images: Any) -> str | None:
    """Why a row counts as having no image (None or an empty list), or None when it has one."""
    if images is None or (isinstance(images, list | tuple) and len(images) == 0):
        return (
            "the row has no image (a vision dataset); set data.allow_text_only=true to train on text-only "
            "rows (counted as data/text_only_rows)"
        )
    return None


def text_field(value: Any, column: str) -> tuple[str | None, str | None]:
    """``(text, None)`` for a usable ``problem`` / ``answer`` value, else ``(None, reason)``.

    Usable: a non-empty str, UTF-8 bytes (binary columns), or a finite number (answers such as ``3``).
    The setup scan (:mod:`papo.data.scan`) and :class:`~papo.data.datamodule.PromptDataset` apply the same rules.
    """
    if value is None:
        return None, f"{column} is missing (None)"
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            return None, f"{column} is not valid UTF-8 ({err.reason} at byte {err.start})"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None, f"{column} must be a string (or a number), got {type(value).__name__}"
    if isinstance(value, float) and not np.isfinite(value):
        return None, f"{column} is {value}"
    text = str(value)
    if not text.strip():
        return None, f"{column} is empty"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # lone surrogates smuggled in by surrogateescape decoding
        return None, f"{column} is not valid UTF-8 ({err.reason})"
    return text, None
