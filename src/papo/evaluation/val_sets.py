"""Validation sets: several named datasets validated together, each with its own limit, answer format and
sampling protocol (``val_sets`` in the config; PAPO's suite: ``configs/val_sets/papo_eval.yaml``).

:func:`parse_val_sets` turns the config's ``{name: entry}`` mapping into :class:`ValSet` objects, checking every
key (an unknown key, answer format or protocol key is an error naming it and the valid ones). Metric keys of a
named set are ``val/<name>/...`` (greedy) and ``val/<name>/sampled/...`` (avg@k), the averages over the sets
of a group ``val/average/<group>/...`` and over all sets ``val/average/overall/...``
(:func:`papo.evaluation.suite.group_averages`); a run without ``val_sets`` validates ``data.val_dataset``
under the single-set keys ``val/...``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ANSWER_FORMATS", "ENTRY_KEYS", "PROTOCOL_KEYS", "SamplingProtocol", "ValSet", "parse_val_sets"]

#: how the answer is read from a response: ``boxed`` = the last ``\boxed{}``, graded by the run's reward
#: (papo.rewards; PAPO-Eval's rule: its mathruler ``extract_boxed_content`` + ``grade_answer``)
ANSWER_FORMATS = ("boxed",)
#: keys of a val-set entry
ENTRY_KEYS = ("dataset", "group", "limit", "answer_format", "protocol")
#: keys of a sampling protocol (the names of ``eval.*``)
PROTOCOL_KEYS = ("samples", "temperature", "top_p", "top_k", "greedy", "max_new_tokens")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
#: names a val set cannot take: ``val/average/<group>/...`` holds the group averages
RESERVED_NAMES = ("average",)


@dataclass(frozen=True)
class SamplingProtocol:
    """How a val set is generated: greedy (one response, T = 0) and/or avg@``samples`` at ``temperature``."""

    samples: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = True
    max_new_tokens: int | None = None  # None: rollout.max_new_tokens


@dataclass(frozen=True)
class ValSet:
    """One validation set of a run (module docstring)."""

    name: str
    dataset: Any  # a datasets.Dataset or a zero-argument callable returning one (a Hydra partial)
    group: str | None = None
    limit: int | None = None
    answer_format: str = "boxed"
    protocol: SamplingProtocol = field(default_factory=SamplingProtocol)

    @property
    def prefix(self) -> str:
        """The metric prefix of its greedy protocol (``val/<name>``); avg@k keys add ``/sampled``."""
        return f"val/{self.name}"


def _protocol(name: str, raw: Mapping[str, Any] | None) -> SamplingProtocol:
    raw = dict(raw or {})
    unknown = sorted(set(raw) - set(PROTOCOL_KEYS))
    if unknown:
        raise ValueError(
            f"val_sets.{name}.protocol has unknown key(s) {unknown}; valid: {list(PROTOCOL_KEYS)}"
        )
    p = SamplingProtocol(
        samples=int(raw.get("samples", 0) or 0),
        temperature=float(raw.get("temperature", 1.0)),
        top_p=float(raw.get("top_p", 1.0)),
        top_k=int(raw.get("top_k", 0) or 0),
        greedy=bool(raw.get("greedy", True)),
        max_new_tokens=None if raw.get("max_new_tokens") is None else int(raw["max_new_tokens"]),
    )
    if p.samples < 0 or (p.samples > 0 and p.temperature <= 0):
        raise ValueError(
            f"val_sets.{name}.protocol: samples must be >= 0 and temperature > 0 when sampling "
            f"(got samples={p.samples}, temperature={p.temperature})"
        )
    if not (0 < p.top_p <= 1):
        raise ValueError(f"val_sets.{name}.protocol.top_p={p.top_p} must be in (0, 1]")
    if not p.greedy and p.samples == 0:
        raise ValueError(f"val_sets.{name}.protocol generates nothing: set greedy=true and/or samples > 0")
    if p.max_new_tokens is not None and p.max_new_tokens < 1:
        raise ValueError(f"val_sets.{name}.protocol.max_new_tokens={p.max_new_tokens} must be >= 1")
    return p


def parse_val_sets(raw: Mapping[str, Any] | None) -> list[ValSet]:
    """The config's ``val_sets`` (``{name: entry}``, in order) as :class:`ValSet` objects; None / {} -> [].

    Raises:
        ValueError: a bad name, a missing dataset, an unknown key, answer format or protocol key, a bad limit.
    """
    out = []
    for name, entry in (raw or {}).items():
        name = str(name)
        if not _NAME.match(name):
            raise ValueError(
                f"val_sets name {name!r} must be letters, digits, '_', '-' or '.' (it is a metric key)"
            )
        entry = dict(entry or {})
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown:
            raise ValueError(f"val_sets.{name} has unknown key(s) {unknown}; valid: {list(ENTRY_KEYS)}")
        if entry.get("dataset") is None:
            raise ValueError(f"val_sets.{name}.dataset is missing (a dataset or a _partial_ loader)")
        fmt = str(entry.get("answer_format", "boxed"))
        if fmt not in ANSWER_FORMATS:
            raise ValueError(
                f"val_sets.{name}.answer_format={fmt!r} is unknown; valid: {list(ANSWER_FORMATS)}"
            )
        limit = entry.get("limit")
        if limit is not None and int(limit) < 1:
            raise ValueError(f"val_sets.{name}.limit={limit} must be >= 1 or null (all rows)")
        out.append(
            ValSet(
                name=name,
                dataset=entry["dataset"],
                group=None if entry.get("group") is None else str(entry["group"]),
                limit=None if limit is None else int(limit),
                answer_format=fmt,
                protocol=_protocol(name, entry.get("protocol")),
            )
        )
    return out
