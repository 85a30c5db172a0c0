"""Load one benchmark of PAPO's evaluation suite (the hub dataset ``PAPO-Galaxy/PAPO_eval``) into the standard
columns (``images``, ``problem``, ``answer``, ``uid``, ``task_type``, ``vision_dependency``).

The hub dataset holds each benchmark as a split of ShareGPT rows (the layout PAPO-Eval, a LLaMA-Factory fork,
reads): ``messages`` = a user turn (the question, with ``<image>`` placeholders and PAPO's answer-format
instruction already appended) and an assistant turn (the reference answer); ``images`` = relative paths such
as ``./data/images/<folder>/<file>.png``, whose files ship in one zip per benchmark at the repository root
(``papo_eval/preprocess/prepare_data.py`` of ``xhguo7/PAPO-Eval`` lists the split and zip names, copied into
``configs/val_sets/papo_eval.yaml``). :func:`load_papo_eval_split` reads

- the hub (only when hub access is on: ``PAPO_ALLOW_HUB=1``): the split with ``datasets.load_dataset``, the
  zip with ``huggingface_hub.hf_hub_download``;
- or a local directory with the same layout (``data/<split>-*.parquet`` or ``<split>.{parquet,jsonl,json}``,
  and the zip or an already extracted ``images/`` folder), e.g. the test fixture ``tests/data/papo_eval``.

Zips are extracted once into ``<cache_dir>/papo_eval/<zip name>/``; each row's image paths are matched to the
extracted files by their longest common path suffix (:func:`resolve_image_paths`), so the zip's inner
folder layout does not matter. Images stored in the rows themselves (``datasets.Image`` bytes) are used as they
are, and need no zip.

The question keeps its ``<image>`` placeholders (each image goes where its placeholder is:
:func:`papo.data.prompts.chat_messages`); PAPO's instruction sentence is removed from its end
(:func:`sharegpt_row`) because the prompt template (``published``: the same sentence) appends it again.

Free-form items: the PAPO paper and its README say free-form items are removed from MathVista and MathVerse;
PAPO-Eval's code has no such filter (its ``run_eval.py`` scores every row it is given), so the hub splits
are what was filtered. :func:`is_free_form` is the rule applied here when ``drop_free_form`` is set (on the
MathVista and MathVerse entries of the suite): a row is multiple-choice when its source metadata says so
(``question_type``: MathVista ``multi_choice`` / MathVerse ``multi-choice``), or, for ShareGPT rows that carry
no metadata, when the question lists at least two lettered options and the answer is one of their letters
or texts; every other row is free-form. The kept and dropped counts are logged.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from papo.data.hub import _no_decode, hub_offline_error
from papo.data.prompts import PAPO_INSTRUCTION

log = logging.getLogger(__name__)

__all__ = [
    "REPO_ID",
    "answer_options",
    "image_relpath",
    "is_free_form",
    "load_papo_eval_split",
    "resolve_image_paths",
    "sharegpt_row",
]

#: the hub dataset of PAPO's evaluation suite
REPO_ID = "PAPO-Galaxy/PAPO_eval"

# PAPO's instruction as the ShareGPT rows end with it (whitespace-tolerant; the final period optional)
_INSTRUCTION_RE = re.compile(r"\s*" + r"\s+".join(re.escape(w) for w in PAPO_INSTRUCTION.split()) + r"?\s*$")
# "(A) text", "A. text", "A: text", "A) text" at the start of a line
_LINE_OPTION_RE = re.compile(r"^\s*\(?([A-Z])\s*[.):：]\s*(.+?)\s*$", re.M)
# "(A) text (B) text" on one line
_INLINE_OPTION_RE = re.compile(r"\(([A-Z])\)\s*([^()\n]+?)\s*(?=\([A-Z]\)|$|\n)")
_LETTER_RE = re.compile(r"^\(?([A-Z])\)?[.:]?$")
_MULTI_CHOICE_TYPES = {"multi_choice", "multi-choice", "multiple_choice", "multiple-choice"}
_FREE_FORM_TYPES = {"free_form", "free-form", "freeform", "open"}


def image_relpath(value: str) -> str:
    """A ShareGPT image path without its LLaMA-Factory prefix: ``./data/images/a/b.png`` -> ``images/a/b.png``."""
    text = str(value).strip().replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return text[len("data/") :] if text.startswith("data/images/") else text


def sharegpt_row(messages: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """``(question, answer)`` of a ShareGPT conversation: the first user turn without PAPO's trailing
    instruction (its ``<image>`` placeholders kept) and the first assistant turn, both stripped.

    Raises:
        ValueError: no user or no assistant turn.
    """

    def turn(roles: set[str]) -> Mapping[str, Any] | None:
        return next((m for m in messages if str(m.get("role", m.get("from"))) in roles), None)

    user, assistant = turn({"user", "human"}), turn({"assistant", "gpt"})
    if user is None or assistant is None:
        roles = [m.get("role", m.get("from")) for m in messages]
        raise ValueError(f"a ShareGPT row needs a user and an assistant turn; got roles {roles}")
    question = _INSTRUCTION_RE.sub("", str(user.get("content", user.get("value", ""))))
    return question.strip(), str(assistant.get("content", assistant.get("value", ""))).strip()


def answer_options(question: str) -> dict[str, str]:
    """The lettered options a question lists, ``{letter: text}`` (one per line, else inline ``(A) ... (B)``)."""
    found = {m.group(1): m.group(2) for m in _LINE_OPTION_RE.finditer(question)}
    if len(found) < 2:
        found = {m.group(1): m.group(2) for m in _INLINE_OPTION_RE.finditer(question)}
    return found


def is_free_form(question: str, answer: str, question_type: str | None = None) -> bool:
    """Whether an item is free-form (not multiple-choice); the rule of the module docstring.

    Args:
        question: the question text (options included).
        answer: the reference answer.
        question_type: the source's ``question_type`` when the row has one (takes precedence).
    """
    if question_type:
        kind = str(question_type).strip().lower()
        if kind in _MULTI_CHOICE_TYPES:
            return False
        if kind in _FREE_FORM_TYPES:
            return True
    options = answer_options(question)
    if len(options) < 2:
        return True
    answer = str(answer).strip()
    letter = _LETTER_RE.match(answer)
    if letter and letter.group(1) in options:
        return False
    return answer.lower() not in {text.strip().lower() for text in options.values()}


def resolve_image_paths(references: Iterable[str], files: Iterable[str]) -> dict[str, str]:
    """Match image references to files by their longest common path suffix.

    Args:
        references: paths as the rows give them (``images/<folder>/<file>.png``).
        files: the available files, relative to the image root (posix paths).

    Returns:
        ``{reference: file}`` for every reference that matches; a suffix shared by two files never matches.
    """
    by_suffix: dict[str, str | None] = {}
    for f in files:
        parts = PurePosixPath(f).parts
        for i in range(len(parts)):
            key = "/".join(parts[i:])
            by_suffix[key] = None if key in by_suffix and by_suffix[key] != f else f
    out = {}
    for ref in references:
        parts = PurePosixPath(image_relpath(ref)).parts
        for i in range(len(parts)):
            hit = by_suffix.get("/".join(parts[i:]))
            if hit is not None:
                out[ref] = hit
                break
    return out


def _rows_file(root: Path, split: str) -> list[str]:
    patterns = [f"data/{split}-*.parquet", f"{split}.parquet", f"{split}.jsonl", f"{split}.json"]
    for pattern in patterns:
        found = sorted(glob.glob(str(root / pattern)))
        if found:
            return found
    raise FileNotFoundError(
        f"no rows of split {split!r} in {root}: looked for {patterns} (the hub layout of {REPO_ID})"
    )


def _load_rows(
    source: str, split: str, revision: str | None, cache_dir: str | None
) -> tuple[Any, Path | None]:
    """The split's ShareGPT rows as a ``datasets.Dataset`` and its local root (None for the hub)."""
    import datasets

    root = Path(source).expanduser()
    if root.is_dir():
        files = _rows_file(root, split)
        builder = "parquet" if files[0].endswith(".parquet") else "json"
        ds = datasets.load_dataset(builder, data_files={"train": files}, split="train", cache_dir=cache_dir)
        return ds, root
    try:
        return datasets.load_dataset(source, split=split, revision=revision, cache_dir=cache_dir), None
    except OSError as exc:  # OfflineModeIsEnabled included
        err = hub_offline_error(exc, f"hub dataset {source!r} (split {split!r})")
        if err is None:
            raise
        raise err from exc


def _image_root(
    source: str, root: Path | None, image_zip: str | None, revision: str | None, cache: Path
) -> Path:
    """The directory holding the split's images: a zip extracted once into the cache, or ``<root>``."""
    if image_zip is None:
        if root is None:
            raise ValueError(f"{source}: image_zip is needed to fetch the images of a hub split")
        return root
    if root is not None and (root / image_zip).is_file():
        archive = root / image_zip
    elif root is not None:
        return root  # images already extracted next to the rows
    else:
        from huggingface_hub import hf_hub_download

        try:
            archive = Path(hf_hub_download(source, image_zip, repo_type="dataset", revision=revision))
        except OSError as exc:
            err = hub_offline_error(exc, f"image archive {image_zip!r} of {source!r}")
            if err is None:
                raise
            raise err from exc
    target = cache / "papo_eval" / image_zip
    marker = target / ".extracted"
    if not marker.is_file() or marker.read_text() != str(archive.stat().st_size):
        log.info("extracting %s into %s", archive, target)
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():  # never outside the target
                if member.startswith("/") or ".." in PurePosixPath(member).parts:
                    raise ValueError(f"{archive}: unsafe member path {member!r}")
            zf.extractall(target)
        marker.write_text(str(archive.stat().st_size))
    return target


def _image_entry(value: Any) -> dict[str, Any]:
    """One image of a row as ``{bytes, path}``: stored bytes kept, a path string (or a path-only entry) kept as a
    reference to resolve among the split's image files."""
    if isinstance(value, Mapping):
        data = value.get("bytes")
        return {"bytes": data or None, "path": None if data else str(value.get("path"))}
    return {"bytes": None, "path": str(value)}


def load_papo_eval_split(
    split: str,
    source: str = REPO_ID,
    image_zip: str | None = None,
    drop_free_form: bool = False,
    limit: int | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    task_type: str | None = None,
    vision_dependency: str | None = None,
) -> Any:
    """One benchmark of ``PAPO-Galaxy/PAPO_eval`` in the standard columns (module docstring).

    Args:
        split: the hub split, e.g. ``AI4Math_MathVista``.
        source: the hub id, or a local directory with the hub's layout.
        image_zip: the zip of the split's images at the repository root (None: images under ``source``).
        drop_free_form: remove free-form items (:func:`is_free_form`), before ``limit``.
        limit: keep the first ``limit`` rows (after the filter); None = all.
        revision: hub revision to pin.
        cache_dir: where zips are extracted (``<cache_dir>/papo_eval/``) and ``datasets`` caches; default
            ``$PAPO_CACHE_DIR`` or ``~/.cache/papo``.
        task_type / vision_dependency: constant columns (per-benchmark breakdowns); default the split name /
            ``unknown``.

    Raises:
        HubOfflineError: a hub source while hub access is off (set PAPO_ALLOW_HUB=1 or use a local copy).
        ValueError: a row whose image is not among the extracted files, or that is not a ShareGPT conversation.
    """
    from datasets import Dataset

    cache = Path(
        cache_dir or os.environ.get("PAPO_CACHE_DIR") or Path.home() / ".cache" / "papo"
    ).expanduser()
    raw, root = _load_rows(str(source), split, revision, None)
    raw = raw.cast(_no_decode(raw.features))  # images stored in the rows stay {bytes, path}, undecoded
    rows: dict[str, list[Any]] = {"images": [], "problem": [], "answer": [], "uid": []}
    dropped = 0
    has_type = "question_type" in raw.column_names
    for i, record in enumerate(raw):
        question, answer = sharegpt_row(record.get("messages") or record.get("conversations") or [])
        if drop_free_form and is_free_form(
            question, answer, record.get("question_type") if has_type else None
        ):
            dropped += 1
            continue
        images = record.get("images") or []
        rows["images"].append(
            [_image_entry(x) for x in ([images] if isinstance(images, str | dict) else images)]
        )
        rows["problem"].append(question)
        rows["answer"].append(answer)
        rows["uid"].append(str(record.get("id") or f"{split}-{i}"))
        if limit is not None and len(rows["uid"]) >= int(limit):
            break
    if drop_free_form:
        log.info("%s: dropped %d free-form item(s), kept %d", split, dropped, len(rows["uid"]))
    refs = {x["path"] for entries in rows["images"] for x in entries if not x["bytes"]}
    if refs:  # image paths: the files of the split's zip (or of the local copy)
        image_root = _image_root(str(source), root, image_zip, revision, cache)
        files = [p.relative_to(image_root).as_posix() for p in image_root.rglob("*") if p.is_file()]
        found = resolve_image_paths(refs, files)
        for uid, entries in zip(rows["uid"], rows["images"], strict=True):
            missing = [x["path"] for x in entries if not x["bytes"] and x["path"] not in found]
            if missing:
                raise ValueError(f"{split} row {uid}: image(s) {missing} not found under {image_root}")
            for x in entries:
                if not x["bytes"]:
                    x["path"] = str(image_root / found[x["path"]])
    n = len(rows["uid"])
    rows["task_type"] = [task_type or split] * n
    rows["vision_dependency"] = [vision_dependency or "unknown"] * n
    log.info("%s (%s): %d rows", source, split, n)
    return Dataset.from_dict(rows)
