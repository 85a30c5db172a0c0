"""``PapoDataModule``: prompts, decoded RGB images and their seeded masked views, batched for RL.

One datamodule serves every dataset that follows the hub convention (columns ``images``, ``problem``,
``answer``; optional ``task_type``, ``vision_dependency``, ``uid``): the synthetic task, ViRL39K,
Geometry3K, ... Datasets may be given built, or as zero-argument callables (e.g. a Hydra ``_partial_`` of
``build_synthetic_split``) that are called lazily in :meth:`PapoDataModule.setup`.

Each batch is a dict of lists, one entry per PROMPT (the RL module expands prompts into G responses)::

    {"uid": [str], "problem": [str], "prompt": [str],            # prompt = templated problem
     "system_prompt": [str or None],                              # data.system_prompt, one per prompt
     "images": [[PIL.Image RGB]],                                 # decoded with load_image, raw size
     "images_masked": [[PIL.Image RGB]] or None,                  # None when masking is None
     "images_masked_rows": [[[PIL.Image RGB]]],                   # train, masked_views_per_prompt > 1 only
     "answer": [str], "task_type": [str], "vision_dependency": [str],
     "shortcut": [str]}                                           # only when the dataset declares it

Masked views are made here (on raw images, in the collate function, so in DataLoader workers), one per
prompt (``masked_views_per_prompt`` > 1: that many per train prompt, one per response, the first of them
``images_masked``), fresh every time the prompt is drawn and reproducible: the generator of a train prompt is
``np.random.default_rng([seed, epoch, row])``; val/test use ``default_rng([seed, row])`` so validation masks
are identical at every evaluation. The released code draws masks from numpy's global RNG instead.

Training order comes from :class:`EpochShuffleSampler` (a seeded permutation per epoch, sharded over ranks)
whose items are ``(epoch, row)`` pairs, so the epoch reaches the collate function even in worker processes.
The train loader is torchdata's ``StatefulDataLoader``: its ``state_dict()`` holds the sampler pass's
:class:`EpochOrder` state as of the last batch handed to training (not merely prefetched by workers), and
Lightning stores it in checkpoints and restores it on resume (its fit loop saves the state of any loader
with ``state_dict``/``load_state_dict``), so a resumed run continues with exactly the next prompts and the
same masks. For multi-GPU runs, set
``Trainer(use_distributed_sampler=False)``: the sampler shards by itself using the trainer's world size / rank.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader

from papo.config.errors import ConfigError
from papo.data.images import ImageLoadError, load_images, pixel_range_size, resize_into_pixel_range
from papo.data.masking import ImageView
from papo.data.prompts import build_prompt, placeholder_mismatch
from papo.data.rows import no_image_reason, text_field
from papo.data.scan import scan_split

log = logging.getLogger(__name__)

__all__ = [
    "BATCH_KEYS",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "BadRowError",
    "EpochOrder",
    "EpochShuffleSampler",
    "PapoDataModule",
    "PromptCollator",
    "PromptDataset",
    "no_image_reason",
    "text_field",
]

REQUIRED_COLUMNS = ("images", "problem", "answer")
#: optional column -> fill value when absent (uid falls back to f"{split}-{row}")
OPTIONAL_COLUMNS = {"task_type": "unknown", "vision_dependency": "unknown", "uid": None}
#: per-row label columns a dataset may declare (papo.data.shortcut: ``shortcut``): carried into the batch (and
#: on to the rollouts and the validation metrics, which group by them) only when the dataset has them
DECLARED_COLUMNS = ("shortcut",)
#: columns the loader and the setup scan add: why a value could not be represented as text
#: (papo.data.hub), and the row's number in the source once the scan dropped rows
BOOKKEEPING_COLUMNS = ("bad_value", "source_row")
BATCH_KEYS = (
    "uid",
    "problem",
    "prompt",
    "system_prompt",
    "images",
    "images_masked",
    "answer",
    "task_type",
    "vision_dependency",
)

DatasetLike = Any  # datasets.Dataset or a zero-argument callable returning one


class PromptDataset(Dataset):
    """Map-style view of a hub-convention ``datasets.Dataset``; items are decoded rows.

    Keys are a row index, or ``(epoch, row)`` as yielded by :class:`EpochShuffleSampler`. Rows are read in
    Arrow format (no decoding by ``datasets``), so every image goes through :func:`load_image` and a bad image
    raises ``ImageLoadError`` naming ``dataset=<name> split=<split> row=<row> image=<j>``.

    Bad rows found while decoding (corrupt image data, ``problem``/``answer`` None, empty, not text or not
    UTF-8, no image while ``allow_text_only`` is off, an aspect ratio of ``max_aspect_ratio`` or more, which
    Qwen-VL processors reject, or any other exception while preparing the row) raise :class:`BadRowError` /
    ``ImageLoadError`` naming the dataset, split, SOURCE row (the ``source_row`` column once the setup scan
    dropped rows) and uid; with ``on_bad_row="skip"`` the item is instead a marker
    ``{"row", "epoch", "bad_row": reason}`` (logged here, listed in :attr:`dropped`, appended to
    ``dropped_rows_file`` when set, counted by the collate function as ``batch["skipped_rows"]`` and by the
    RL module as ``train/data/skipped_rows``).
    """

    def __init__(
        self,
        hf_dataset: Any,
        dataset_name: str = "dataset",
        split: str = "train",
        max_pixels: int = 64_000_000,
        on_bad_row: str = "error",
        max_aspect_ratio: float | None = 200.0,
        allow_text_only: bool = False,
    ) -> None:
        columns = list(hf_dataset.column_names)
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"Dataset {dataset_name!r} ({split} split) is missing required column(s) {missing}; "
                f"present columns: {columns}. Required: {list(REQUIRED_COLUMNS)}; optional: "
                f"{list(OPTIONAL_COLUMNS)}."
            )
        self.dataset_name, self.split, self.max_pixels = dataset_name, split, int(max_pixels)
        if on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row={on_bad_row!r} is unknown; valid: ['error', 'skip']")
        self.on_bad_row, self.max_aspect_ratio = on_bad_row, max_aspect_ratio
        self.allow_text_only = bool(allow_text_only)
        self.num_skipped = 0  # bad rows skipped by THIS process (workers count their own)
        self.dropped: dict[int, dict[str, Any]] = {}  # decode-time skips of THIS process, by source row
        self.dropped_rows_file: str | None = None  # where decode-time skips are appended (JSON lines)
        self.hf_dataset = hf_dataset  # the source datasets.Dataset, all columns, as given
        wanted = [
            c
            for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *DECLARED_COLUMNS, *BOOKKEEPING_COLUMNS)
            if c in columns
        ]
        self._rows = hf_dataset.select_columns(wanted).with_format("arrow")
        self._len = len(hf_dataset)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, row = key if isinstance(key, tuple) else (None, key)
        row = int(row)
        record = self._rows[row].to_pylist()[0]
        source_row = int(record["source_row"]) if record.get("source_row") is not None else row
        uid = str(record["uid"]) if record.get("uid") is not None else f"{self.split}-{source_row}"
        context = f"dataset={self.dataset_name} split={self.split} row={source_row} uid={uid}"
        try:
            return self._decode(epoch, row, record, uid, context)
        except (BadRowError, ImageLoadError) as err:  # both name the dataset, split, row and uid
            if self.on_bad_row != "skip":
                raise
            reason = str(err)
        except Exception as err:  # any other failure while preparing this row is this row's report
            message = f"Bad row ({context}): cannot prepare the row: {type(err).__name__}: {err}"
            if self.on_bad_row != "skip":
                raise BadRowError(message) from err
            reason = message
        self.num_skipped += 1
        log.warning("skipped bad row (data.on_bad_row=skip, %d so far): %s", self.num_skipped, reason)
        self._record_drop(source_row, uid, reason)
        return {"row": row, "epoch": epoch, "bad_row": reason}

    def _record_drop(self, source_row: int, uid: str, reason: str) -> None:
        if source_row in self.dropped:
            return
        rec = {
            "dataset": self.dataset_name,
            "split": self.split,
            "row": source_row,
            "uid": uid,
            "reason": reason,
            "stage": "decode",
        }
        self.dropped[source_row] = rec
        if self.dropped_rows_file:
            with open(self.dropped_rows_file, "a", encoding="utf-8") as f:  # one line per write: O_APPEND
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    def _decode(
        self, epoch: int | None, row: int, record: dict[str, Any], uid: str, context: str
    ) -> dict[str, Any]:
        if record.get("bad_value"):
            raise BadRowError(f"Bad row ({context}): {record['bad_value']}")
        problem = _text_field(record["problem"], "problem", context)
        answer = _text_field(record["answer"], "answer", context)
        if not self.allow_text_only:
            reason = no_image_reason(record["images"])
            if reason is not None:
                raise BadRowError(f"Bad row ({context}): {reason}")
        images = load_images(record["images"], context=context, max_pixels=self.max_pixels)
        _check_aspect_ratio(images, self.max_aspect_ratio, context)
        mismatch = placeholder_mismatch(problem, len(images))
        if mismatch is not None:
            raise BadRowError(f"Bad row ({context}): {mismatch}")
        return {
            "row": row,
            "epoch": epoch,
            "uid": uid,
            "problem": problem,
            "answer": answer,
            "task_type": str(record.get("task_type") or OPTIONAL_COLUMNS["task_type"]),
            "vision_dependency": str(
                record.get("vision_dependency") or OPTIONAL_COLUMNS["vision_dependency"]
            ),
            "images": images,
            **{c: str(record[c]) for c in DECLARED_COLUMNS if c in record},
        }


class BadRowError(ValueError):
    """A dataset row cannot be used; the message names the dataset, split, row and the reason."""


def _text_field(value: Any, column: str, context: str) -> str:
    text, reason = text_field(value, column)
    if reason is not None:
        raise BadRowError(f"Bad row ({context}): {reason}")
    return text  # type: ignore[return-value]


def _check_aspect_ratio(images: list[Any], limit: float | None, context: str) -> None:
    for j, img in enumerate(images):
        w, h = img.size
        if limit is not None and max(w, h) / max(min(w, h), 1) >= limit:
            raise BadRowError(
                f"Bad row ({context} image={j}): aspect ratio of {w}x{h} is {max(w, h) / min(w, h):.0f}, "
                f"Qwen-VL processors need < {limit:g} (data.max_aspect_ratio)"
            )


class PromptCollator:
    """Collate decoded rows into the batch dict and add the masked views (picklable, runs in workers).

    Views that need several prompts (``min_batch_size``, e.g. the shuffled-image control) get short batches
    (a final val batch of one prompt) padded with deterministic donor rows, whose views are then dropped.
    """

    def __init__(
        self,
        masking: ImageView | None,
        prompt_template: str,
        seed: int,
        dataset: PromptDataset | None = None,
        resize_pixels: tuple[int | None, int | None] | None = None,
        system_prompt: str | None = None,
        masked_views_per_prompt: int = 1,
    ) -> None:
        self.masking = masking
        # masked views drawn per prompt: 1, or the group size for one view per response (VPPO's released code);
        # view 0 is batch["images_masked"], all of them batch["images_masked_rows"]
        self.masked_views_per_prompt = int(masked_views_per_prompt)
        self.prompt_template = prompt_template
        # text of the system turn (papo.data.prompts.chat_messages); None: the chat template's default
        self.system_prompt = system_prompt or None
        self.seed = int(seed)
        self.dataset = dataset  # rows to pad short batches with, for views with min_batch_size > 1
        # (min_pixels, max_pixels): PIL resize of the real and the masked images after masking (released loader)
        self.resize_pixels = resize_pixels
        build_prompt("", prompt_template)  # fail early on an unknown template name

    def rng_for(self, row: int, epoch: int | None) -> np.random.Generator:
        """Train: ``default_rng([seed, epoch, row])``; val/test (epoch None): ``default_rng([seed, row])``."""
        key = [self.seed, row] if epoch is None else [self.seed, int(epoch), row]
        return np.random.default_rng(key)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        skipped = [it["bad_row"] for it in items if "bad_row" in it]  # on_bad_row=skip markers
        if skipped:
            items = [it for it in items if "bad_row" not in it]
            if not items:
                raise BadRowError(
                    f"every row of this batch is bad ({len(skipped)} skipped); first: {skipped[0]}"
                )
        batch: dict[str, Any] = {k: [it[k] for it in items] for k in BATCH_KEYS if k in items[0]}
        batch["prompt"] = [build_prompt(p, self.prompt_template) for p in batch["problem"]]
        batch["system_prompt"] = [self.system_prompt] * len(batch["prompt"])
        views = self._masked(items) if self.masking is not None else None
        if self.resize_pixels is not None:  # masks are drawn on the raw images, then both views are resized
            batch["images"] = self._resized(batch["images"])
            views = None if views is None else [self._resized(per_prompt) for per_prompt in views]
        batch["images_masked"] = None if views is None else [per_prompt[0] for per_prompt in views]
        out = {k: batch[k] for k in BATCH_KEYS}
        if views is not None and self.masked_views_per_prompt > 1:
            out["images_masked_rows"] = views
        out.update({k: [it[k] for it in items] for k in DECLARED_COLUMNS if k in items[0]})
        if skipped:  # counted by the RL module (train/data/skipped_rows)
            out["skipped_rows"] = skipped
        return out

    def _resized(self, rows: list[list[Any]]) -> list[list[Any]]:
        return [[resize_into_pixel_range(im, *self.resize_pixels) for im in row] for row in rows]

    def _masked(self, items: list[dict[str, Any]]) -> list[list[list[Any]]]:
        """``masked_views_per_prompt`` masked views of each prompt's images: view v continues the draws of view v-1
        from the prompt's generator, so view 0 does not depend on how many views are drawn."""
        images = [it["images"] for it in items]
        rngs = [self.rng_for(it["row"], it["epoch"]) for it in items]
        need = getattr(self.masking, "min_batch_size", 1)
        if len(items) < need:
            for donor in self._donors(items, need - len(items)):
                images.append(donor["images"])
                rngs.append(self.rng_for(donor["row"], items[0]["epoch"]))
        drawn = [self.masking(images, rngs)[: len(items)] for _ in range(self.masked_views_per_prompt)]
        return [[view[i] for view in drawn] for i in range(len(items))]

    def _donors(self, items: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
        if self.dataset is None or len(self.dataset) < len(items) + count:
            raise ValueError(
                f"masking view {getattr(self.masking, 'name', self.masking)!r} needs batches of at least "
                f"{len(items) + count} prompts; got {len(items)} and no dataset rows to pad with"
            )
        taken = {it["row"] for it in items}
        row, donors = max(taken), []
        while len(donors) < count:
            if len(taken) >= len(self.dataset):
                raise BadRowError(f"not enough good rows to pad a batch for masking view {self.masking!r}")
            row = (row + 1) % len(self.dataset)
            if row not in taken:
                taken.add(row)
                donor = self.dataset[row]
                if "bad_row" not in donor:
                    donors.append(donor)
        return donors


class EpochShuffleSampler(Sampler):
    """Seeded per-epoch shuffle yielding ``(epoch, row)``, sharded over ranks.

    The order of epoch e is ``default_rng([seed, e]).permutation(num_samples)`` (identity when
    ``shuffle=False``), truncated to a multiple of ``num_replicas`` and strided by ``rank``. Lightning calls
    :meth:`set_epoch` at each epoch start. The position inside an epoch is not kept here: each iteration is an
    :class:`EpochOrder`, whose state the ``StatefulDataLoader`` saves and restores.
    """

    def __init__(
        self, num_samples: int, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0
    ) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}"
            )
        self.num_samples, self.seed, self.shuffle = int(num_samples), int(seed), shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def order(self, epoch: int) -> np.ndarray:
        """This rank's rows for ``epoch``."""
        rows = (
            np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_samples)
            if self.shuffle
            else np.arange(self.num_samples)
        )
        usable = len(rows) - len(rows) % self.num_replicas
        return rows[:usable][self.rank :: self.num_replicas]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> EpochOrder:
        return EpochOrder(self)

    def __len__(self) -> int:
        return self.num_samples // self.num_replicas


class EpochOrder(Iterator[tuple[int, int]]):
    """One pass of an :class:`EpochShuffleSampler`: ``(epoch, row)`` pairs, resumable at any position.

    The epoch is read from the sampler at the first item (Lightning may create the iterator before it calls
    ``set_epoch``). ``state_dict()`` is ``{"epoch", "yielded", "seed", "num_samples"}``; torchdata's
    ``StatefulDataLoader`` stores it (as of the last batch handed to training, not the batches its workers
    prefetched) and, on resume, builds a new pass and loads it, which continues that epoch after ``yielded``
    rows. A state from another seed or dataset size is refused: it would not reproduce the data order.
    """

    def __init__(self, sampler: EpochShuffleSampler) -> None:
        self.sampler = sampler
        self.epoch: int | None = None
        self.yielded = 0
        self._rows: np.ndarray | None = None

    def __iter__(self) -> EpochOrder:
        return self

    def __next__(self) -> tuple[int, int]:
        if self._rows is None:
            self.epoch = self.sampler.epoch if self.epoch is None else self.epoch
            self._rows = self.sampler.order(self.epoch)
        if self.yielded >= len(self._rows):
            raise StopIteration
        row = int(self._rows[self.yielded])
        self.yielded += 1
        return self.epoch, row

    def state_dict(self) -> dict[str, int]:
        epoch = self.sampler.epoch if self.epoch is None else self.epoch
        return {
            "epoch": epoch,
            "yielded": self.yielded,
            "seed": self.sampler.seed,
            "num_samples": self.sampler.num_samples,
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        for key in ("seed", "num_samples"):
            if int(state[key]) != getattr(self.sampler, key):
                raise ValueError(
                    f"data-order state has {key}={state[key]} but this sampler has "
                    f"{key}={getattr(self.sampler, key)}; resuming would not reproduce the data order"
                )
        self.epoch, self.yielded, self._rows = int(state["epoch"]), int(state["yielded"]), None


def _as_view(masking: Any) -> ImageView | None:
    """Normalise the ``masking`` argument to a view or ``None``.

    Accepts a view (any callable), ``None``, an empty mapping (no masked views) or a config with ``_target_``
    (instantiated; ``configs/masking/none.yaml`` instantiates to ``None``).
    """
    if masking is None:
        return None
    if isinstance(masking, Mapping):
        if len(masking) == 0:
            return None
        if "_target_" in masking:
            from hydra.utils import instantiate

            return instantiate(masking)
        raise TypeError(f"masking config has no _target_: {dict(masking)}")
    if not callable(masking):
        raise TypeError(f"masking must be an ImageView (callable) or None, got {type(masking).__name__}")
    return masking


def _count_text_only(hf: Any) -> int:
    """Rows whose ``images`` value is null or an empty list (read from Arrow in batches, nothing decoded)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    count = 0
    for batch in hf.select_columns(["images"]).with_format("arrow").iter(batch_size=1024):
        column = batch["images"]
        count += int(column.null_count)
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            count += int(pc.sum(pc.equal(pc.list_value_length(column), 0)).as_py() or 0)
    return count


def _source_name(source: Any) -> str:
    """The data file / hub id behind a split (the ``source`` of a ``load_split`` partial), else ""."""
    keywords = getattr(source, "keywords", None) or {}
    return f"source {keywords['source']!r}" if keywords.get("source") else ""


def _has_columns(hf: Any) -> bool:
    return all(c in hf.column_names for c in REQUIRED_COLUMNS)


def _resolve(dataset: DatasetLike, which: str) -> Any:
    """The split's ``datasets.Dataset``, built now when given as a callable (the config's ``_partial_`` builder).
    A plain ``ValueError`` / ``TypeError`` of the builder is a config value it refuses (an unknown task name, a
    negative size, an unknown keyword): a :class:`ConfigError` naming the key, not a traceback. Subclasses (a
    corrupt file's ``ArrowInvalid``, a bad row) are the data's errors and pass through."""
    if dataset is None:
        return None
    if callable(dataset) and not hasattr(dataset, "column_names"):
        try:
            dataset = dataset()
        except (ValueError, TypeError) as err:
            if type(err) not in (ValueError, TypeError):
                raise
            key = which if which.startswith("val_sets.") else f"data.{which}"
            raise ConfigError(f"{key}: {' '.join(str(err).split())}") from None
    if not hasattr(dataset, "column_names"):
        raise TypeError(
            f"{which} must be a datasets.Dataset or a callable returning one, got {type(dataset)}"
        )
    return dataset


def _resized_sizes(length_fn: Callable, bounds: tuple[int | None, int | None]) -> Callable:
    """``length_fn(prompts, image_sizes)`` applied to the sizes the collator's PIL resize produces."""

    def fn(prompts: list[str], image_sizes: list[list[tuple[int, int]]]) -> list[int]:
        return length_fn(prompts, [[pixel_range_size(w, h, *bounds) for w, h in row] for row in image_sizes])

    return fn


class PapoDataModule(L.LightningDataModule):
    """Datasets -> batches of prompts with decoded images and seeded masked views (see module docstring).

    Args:
        train_dataset / val_dataset / test_dataset: ``datasets.Dataset`` or zero-arg callable returning one
            (built lazily in ``setup``); ``None`` for a split that is not used.
        masking: an :class:`~papo.data.masking.ImageView` (or its config), or ``None`` / an empty mapping for
            no masked views (``batch["images_masked"]`` is then ``None``).
        masked_views_per_prompt: masked views per train prompt; > 1 (the group size, set by the pipeline from
            ``masking.per_response``) adds ``batch["images_masked_rows"]``, one view per response; view 0 is
            ``images_masked``, the same image as with one view. Validation and test draw one.
        prompt_template: name in ``papo.data.prompts.PROMPT_TEMPLATES`` or a custom ``{problem}`` template.
        system_prompt: text of a system turn before every prompt (``batch["system_prompt"]``); None: no system
            turn, so the chat template's default applies (Qwen2.5-VL: "You are a helpful assistant.").
        val_sets: named validation sets ``{name: dataset or zero-arg callable}`` (``val_sets`` of the config,
            :mod:`papo.evaluation.val_sets`): validated instead of ``val_dataset``, one val dataloader each, in
            this order; ``val_set_limits`` ``{name: N}`` keeps the first N usable rows of a set.
        batch_size: prompts per RL step (train loader, ``drop_last=True``).
        val_batch_size: prompts per val/test batch (no drop_last, fixed order).
        seed: seeds the epoch shuffle and every mask.
        num_workers: DataLoader workers (decoding and masking happen in them).
        dataset_name: used in error messages and image-load contexts.
        max_pixels: decompression-bomb limit for :func:`~papo.data.images.load_image`.
        on_bad_row: "error" (a bad row raises, naming it) or "skip" (dropped in ``setup``, counted, logged).
        max_prompt_length / prompt_length_fn: drop prompts longer than this many tokens in ``setup``
            (``prompt_length_fn(prompts, image_sizes) -> lengths``, e.g. :class:`papo.rollout.prompt_length.PromptLength`;
            the pipeline sets both from the model's processor and ``rollout.max_prompt_length``).
        max_aspect_ratio: rows with an image whose long/short side ratio reaches this are bad rows (Qwen-VL
            processors raise at 200); ``None`` disables. Decode-time bad rows with ``on_bad_row="skip"`` are
            dropped from their batch, logged and counted (``batch["skipped_rows"]``).
        allow_text_only: False (default): a row without an image is a bad row (reported like any other);
            True: such rows train as text-only prompts, counted per split in :attr:`text_only_rows`
            (logged once as ``data/text_only_rows``).
        resize_min_pixels / resize_max_pixels: resize every image (real and masked, after masking) with PIL into
            this pixel range before the processor sees it, as the released loader does
            (:func:`~papo.data.images.resize_into_pixel_range`); both ``None``: no resize here.
    """

    def __init__(
        self,
        train_dataset: DatasetLike = None,
        val_dataset: DatasetLike = None,
        test_dataset: DatasetLike = None,
        masking: ImageView | Mapping | None = None,
        prompt_template: str = "published",
        batch_size: int = 16,
        val_batch_size: int = 256,
        seed: int = 0,
        num_workers: int = 0,
        dataset_name: str = "synthetic",
        max_pixels: int = 64_000_000,
        on_bad_row: str = "error",
        max_prompt_length: int | None = None,
        prompt_length_fn: Callable | None = None,
        max_aspect_ratio: float | None = 200.0,
        allow_text_only: bool = False,
        resize_min_pixels: int | None = None,
        resize_max_pixels: int | None = None,
        system_prompt: str | None = None,
        val_sets: Mapping[str, DatasetLike] | None = None,
        val_set_limits: Mapping[str, int | None] | None = None,
        masked_views_per_prompt: int = 1,
    ) -> None:
        super().__init__()
        masking = _as_view(masking)
        if int(batch_size) < 1 or int(val_batch_size) < 1:
            raise ValueError(f"batch sizes must be >= 1, got {batch_size=} {val_batch_size=}")
        if int(masked_views_per_prompt) < 1:
            raise ValueError(f"masked_views_per_prompt must be >= 1, got {masked_views_per_prompt}")
        self.masked_views_per_prompt = int(masked_views_per_prompt)
        build_prompt("", prompt_template)  # unknown template -> error listing valid names, now
        self._sources: dict[str, Callable | Any] = {
            "train": train_dataset,
            "val": val_dataset,
            "test": test_dataset,
        }
        self.masking = masking
        self.prompt_template = prompt_template
        self.system_prompt = system_prompt or None
        # named validation sets (papo.run_setup.attach_val_sets sets them from the config's val_sets)
        self.val_sets: dict[str, DatasetLike] = dict(val_sets or {})
        self.val_set_limits: dict[str, int | None] = dict(val_set_limits or {})
        self.batch_size, self.val_batch_size = int(batch_size), int(val_batch_size)
        self.seed, self.num_workers, self.dataset_name = int(seed), int(num_workers), dataset_name
        self.max_pixels = int(max_pixels)
        # setup() scans each split (papo.data.scan) when a length function is set or bad rows are skipped;
        # the pipeline sets prompt_length_fn (from the model's processor) and max_prompt_length (rollout's)
        if on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row={on_bad_row!r} is unknown; valid: ['error', 'skip']")
        self.on_bad_row = on_bad_row
        self.max_prompt_length = None if max_prompt_length is None else int(max_prompt_length)
        self.prompt_length_fn = prompt_length_fn
        self.max_aspect_ratio = max_aspect_ratio  # rows with a more extreme image are bad (Qwen-VL: 200)
        self.allow_text_only = bool(allow_text_only)
        bounds = (resize_min_pixels, resize_max_pixels)
        self.resize_pixels = None if bounds == (None, None) else bounds  # PIL resize in the collator
        self.datasets: dict[str, PromptDataset] = {}
        # rows without an image per split, kept when allow_text_only (logged as data/text_only_rows)
        self.text_only_rows: dict[str, int] = {}
        self.train_sampler: EpochShuffleSampler | None = None
        # every row the setup scan dropped: {dataset, split, row, uid, reason} (papo.data.scan.ScanReport)
        self.dropped_rows: list[dict[str, Any]] = []

    # ---- setup ----------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        by_stage = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in by_stage.get(stage or "", ("train", "val", "test")):
            if split == "val" and self.val_sets:
                self._setup_val_sets()
                continue
            if split in self.datasets or self._sources[split] is None:
                continue
            hf = _resolve(self._sources[split], f"{split}_dataset")
            hf = self._scan(hf, split)
            self.datasets[split] = PromptDataset(
                hf,
                self.dataset_name,
                split,
                self.max_pixels,
                self.on_bad_row,
                self.max_aspect_ratio,
                self.allow_text_only,
            )
            if self.allow_text_only and "images" in hf.column_names:
                self.text_only_rows[split] = _count_text_only(hf)
        if stage == "fit" and "train" not in self.datasets:
            raise ValueError(f"Dataset {self.dataset_name!r}: stage 'fit' needs a train_dataset")
        if stage == "fit" and len(self.datasets["train"]) < self.batch_size:  # found now, not when fit starts
            raise ConfigError(
                f"data.batch_size={self.batch_size} is larger than the train split of {self.dataset_name!r} "
                f"({len(self.datasets['train'])} usable rows; the train loader drops an incomplete batch): "
                "lower data.batch_size or use more training rows"
            )

    def _setup_val_sets(self) -> None:
        """One :class:`PromptDataset` per named val set (``datasets["val/<name>"]``), scanned like any split and
        cut to its limit."""
        for name, source in self.val_sets.items():
            key = f"val/{name}"
            if key in self.datasets:
                continue
            hf = self._scan(_resolve(source, f"val_sets.{name}.dataset"), key)
            limit = self.val_set_limits.get(name)
            if limit is not None and int(limit) < len(hf):
                log.info("val set %s: kept the first %d of %d rows (limit)", name, int(limit), len(hf))
                hf = hf.select(range(int(limit)))
            self.datasets[key] = PromptDataset(
                hf, name, "val", self.max_pixels, self.on_bad_row, self.max_aspect_ratio, self.allow_text_only
            )
            if self.allow_text_only and "images" in hf.column_names:
                self.text_only_rows[key] = _count_text_only(hf)

    def val_set_sizes(self) -> dict[str, int]:
        """Rows per named val set (after ``setup``): the ``n`` column of the per-benchmark table."""
        return {name: len(self._get(f"val/{name}")) for name in self.val_sets}

    def _scan(self, hf: Any, split: str) -> Any:
        """Drop bad rows (``on_bad_row="skip"``) and over-long prompts, with a logged count (papo.data.scan)."""
        length_fn = self.prompt_length_fn if self.max_prompt_length is not None else None
        if length_fn is not None and self.system_prompt and hasattr(length_fn, "with_system_prompt"):
            length_fn = length_fn.with_system_prompt(self.system_prompt)  # count the system turn's tokens too
        if length_fn is not None and self.resize_pixels is not None:  # count the tokens of the resized images
            length_fn = _resized_sizes(length_fn, self.resize_pixels)
        if (length_fn is None and self.on_bad_row == "error") or not _has_columns(hf) or len(hf) == 0:
            # nothing to filter (a bad image still raises, naming its row, when drawn); or PromptDataset
            # reports the missing columns
            return hf
        report = scan_split(
            hf,
            dataset_name=self.dataset_name,
            split=split,
            prompt_template=self.prompt_template,
            on_bad_row=self.on_bad_row,
            max_prompt_length=self.max_prompt_length if length_fn is not None else None,
            prompt_length_fn=length_fn,
            max_pixels=self.max_pixels,
            allow_text_only=self.allow_text_only,
        )
        logging.getLogger(__name__).info(
            report.summary(self.dataset_name, split, self.max_prompt_length if length_fn else None)
        )
        self.dropped_rows += report.dropped_rows(self.dataset_name, split, self.max_prompt_length)
        if len(report.keep) == len(hf):
            return hf
        if not report.keep:
            source = _source_name(self._sources[split])
            raise ValueError(
                f"Dataset {self.dataset_name!r} ({split}{', ' + source if source else ''}): no usable rows: "
                "every row was dropped by the scan; each one is listed with its reason in "
                "dropped_rows.jsonl in the run directory. "
                + report.summary(self.dataset_name, split, self.max_prompt_length if length_fn else None)
            )
        if "uid" not in hf.column_names:  # keep the ORIGINAL row number in uids
            hf = hf.add_column("uid", [f"{split}-{i}" for i in range(len(hf))])
        if "source_row" not in hf.column_names:  # ... and in every message about a row
            hf = hf.add_column("source_row", list(range(len(hf))))
        return hf.select(report.keep)

    def write_dropped_rows(self, path: str | Path) -> list[dict[str, Any]]:
        """Write every row the setup scan dropped to ``path`` (JSON lines; the file is written, empty, even
        when nothing was dropped), and append rows skipped later at decode time to the same file. Returns
        the rows dropped at setup."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.dropped_rows))
        for dataset in self.datasets.values():
            dataset.dropped_rows_file = str(path)
        return list(self.dropped_rows)

    @property
    def train_set(self) -> Any:
        """The train split as the source ``datasets.Dataset`` (after ``setup``), e.g. for warm-start SFT."""
        return self._get("train").hf_dataset

    @property
    def val_set(self) -> Any:
        """The val split as the source ``datasets.Dataset`` (after ``setup``); with named val sets, the first."""
        return self._get(f"val/{next(iter(self.val_sets))}" if self.val_sets else "val").hf_dataset

    @property
    def test_set(self) -> Any:
        """The test split as the source ``datasets.Dataset`` (after ``setup``)."""
        return self._get("test").hf_dataset

    def _get(self, split: str) -> PromptDataset:
        if split not in self.datasets:  # "val/<name>": a named val set
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split.split("/")[0]])
        if split not in self.datasets:
            raise ValueError(f"Dataset {self.dataset_name!r}: no {split}_dataset was given")
        return self.datasets[split]

    def _collator(self, dataset: PromptDataset, masked_views_per_prompt: int = 1) -> PromptCollator:
        return PromptCollator(
            self.masking,
            self.prompt_template,
            self.seed,
            dataset,
            self.resize_pixels,
            self.system_prompt,
            masked_views_per_prompt,
        )

    def _loader_kwargs(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}

    # ---- loaders --------------------------------------------------------------------------------------------
    def train_dataloader(self) -> StatefulDataLoader:
        dataset = self._get("train")
        if self.train_sampler is None:
            trainer = getattr(self, "trainer", None)
            world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            self.train_sampler = EpochShuffleSampler(len(dataset), self.seed, True, world, rank)
        if len(self.train_sampler) < self.batch_size:
            raise ValueError(
                f"Dataset {self.dataset_name!r}: train split has {len(self.train_sampler)} rows per rank, fewer "
                f"than batch_size={self.batch_size} (the train loader drops the last incomplete batch)"
            )
        with warnings.catch_warnings():  # torchdata 0.11 calls torch.set_vital, deprecated in torch >= 2.9
            warnings.filterwarnings("ignore", message=".*set_vital.* is deprecated", category=UserWarning)
            return StatefulDataLoader(
                dataset,
                batch_size=self.batch_size,
                sampler=self.train_sampler,
                drop_last=True,
                collate_fn=self._collator(dataset, self.masked_views_per_prompt),
                **self._loader_kwargs(),
            )

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self._get(split)
        return DataLoader(
            dataset,
            batch_size=self.val_batch_size,
            shuffle=False,
            drop_last=False,
            collate_fn=self._collator(dataset),
            **self._loader_kwargs(),
        )

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The val loader; with named val sets, one loader per set in their order (Lightning passes the
        position as ``dataloader_idx``)."""
        if self.val_sets:
            return [self._eval_loader(f"val/{name}") for name in self.val_sets]
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
