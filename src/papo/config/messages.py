"""One line per invalid key, worded from the field's own declaration (:mod:`papo.config.types`).

pydantic reports which constraint failed (``greater_than_equal``); the user wants the whole allowed range of
the key, so the range, the integer / number kind, ``or null`` and the hint are read back from the field's
annotation: ``algo.clip_low=1.5 must be a number in [0, 1)``, ``rollout.top_k=-1 must be an integer >= 0
(0 disables)``, ``algo.agg_mode='mean' is unknown; valid: [...]``.
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from papo.config.types import Choices, Hint

__all__ = ["FieldSpec", "error_lines", "field_spec", "leading_key"]

_KEY = re.compile(r"[A-Za-z_][\w.]*")


@dataclass
class FieldSpec:
    """What a field accepts: ``kind`` (integer | number | bool | string | choice | other) and its bounds."""

    kind: str = "other"
    nullable: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    hint: str = ""
    choices: list[Any] = field(default_factory=list)

    def need(self) -> str:
        """``must be an integer >= 0 or null (0 disables)``."""
        if self.kind == "bool":
            need = "must be true or false"
        elif self.kind == "string":
            need = "must be a string"
        else:
            need = f"must be {'an integer' if self.kind == 'integer' else 'a number'}"
            bounds = _range(self)
            need += f" {bounds}" if bounds else ""
        if self.nullable:
            need += " or null"
        return need + (f" ({self.hint})" if self.hint else "")


def _num(x: float) -> str:
    """A bound as written: integers in full (``4294967295``, not ``4.29497e+09``), other numbers with ``:g``."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _range(s: FieldSpec) -> str:
    lo, lo_open = (s.gt, True) if s.gt is not None else (s.ge, False)
    hi, hi_open = (s.lt, True) if s.lt is not None else (s.le, False)
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f"{'>' if lo_open else '>='} {_num(lo)}"
    if lo is None:
        return f"{'<' if hi_open else '<='} {_num(hi)}"
    return f"in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}{')' if hi_open else ']'}"


def _unwrap(annotation: Any, metadata: list[Any]) -> tuple[Any, list[Any], bool]:
    """Strip ``Annotated`` and ``Optional``: (bare type, all metadata, nullable)."""
    metadata, nullable = list(metadata), False
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *extra = get_args(annotation)
            for m in extra:
                metadata += m.metadata if isinstance(m, FieldInfo) else [m]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            nullable = nullable or len(args) < len(get_args(annotation))
            if len(args) != 1:
                return annotation, metadata, nullable
            annotation = args[0]
        else:
            return annotation, metadata, nullable


def _spec(annotation: Any, metadata: list[Any]) -> FieldSpec:
    bare, metadata, nullable = _unwrap(annotation, metadata)
    spec = FieldSpec(nullable=nullable)
    if get_origin(bare) is Literal:
        spec.kind, spec.choices = "choice", list(get_args(bare))
    elif bare is bool:
        spec.kind = "bool"
    elif bare is int:
        spec.kind = "integer"
    elif bare is float:
        spec.kind = "number"
    elif bare is str:
        spec.kind = "string"
    for m in metadata:
        for bound, name in ((Ge, "ge"), (Gt, "gt"), (Le, "le"), (Lt, "lt")):
            if isinstance(m, bound):
                setattr(spec, name, getattr(m, name))
        if isinstance(m, Hint):
            spec.hint = str(m)
        if isinstance(m, Choices):
            spec.kind, spec.choices = "choice", m()
    return spec


def _child(annotation: Any, part: str | int) -> tuple[Any, list[Any]] | None:
    """The annotation of ``part`` inside a value of type ``annotation`` (model field, list item, dict value)."""
    bare, _, _ = _unwrap(annotation, [])
    if get_origin(bare) in (Union, types.UnionType):  # a union of a model and something else: the model
        models = [a for a in get_args(bare) if isinstance(a, type) and issubclass(a, BaseModel)]
        bare = models[0] if models else bare
    if isinstance(bare, type) and issubclass(bare, BaseModel):
        for name, info in bare.model_fields.items():
            if part in (name, info.alias):
                return info.annotation, list(info.metadata)
        return None
    args = get_args(bare)
    if get_origin(bare) is list and isinstance(part, int) and args:
        return args[0], []
    if get_origin(bare) is dict and len(args) == 2:
        return args[1], []
    return None


def field_spec(model: type[BaseModel], loc: tuple[str | int, ...]) -> FieldSpec | None:
    """The :class:`FieldSpec` of the field at ``loc`` inside ``model`` (None when ``loc`` is not a field)."""
    annotation, metadata = model, []
    for part in loc:
        found = _child(annotation, part)
        if found is None:
            return None
        annotation, metadata = found
    return _spec(annotation, metadata)


def leading_key(line: str) -> str:
    """The dotted key a message starts with (``algo.clip_low`` of ``algo.clip_low=1.5 must be ...``)."""
    m = _KEY.match(line)
    return m.group(0) if m else line


def dotted(prefix: str, loc: tuple[str | int, ...]) -> str:
    return ".".join([prefix, *map(str, loc)] if prefix else map(str, loc))


def error_lines(err: ValidationError, model: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    """``(key, line)`` for each error of ``err`` (raised validating ``model``; keys below ``prefix``)."""
    out = []
    for e in err.errors():
        loc, kind = tuple(e["loc"]), e["type"]
        key = dotted(prefix, loc)
        value = e.get("input")
        if kind == "rule":
            out += [(leading_key(line), line) for line in e["ctx"].get("lines", [e["ctx"]["line"]])]
            continue
        if kind == "key":
            out.append((key, f"{key}{e['ctx']['tail']}"))
            continue
        if kind == "value":
            out.append((key, f"{key}={value!r}{e['ctx']['tail']}"))
            continue
        spec = field_spec(model, loc)
        if kind == "missing":
            need = f": {spec.need()}" if spec and spec.kind in ("integer", "number") else ""
            out.append((key, f"{key} is missing{need}"))
        elif spec is not None and spec.kind == "choice":
            out.append((key, f"{key}={value!r} is unknown; valid: {spec.choices}"))
        elif spec is not None and spec.kind != "other":
            out.append((key, f"{key}={value!r} {spec.need()}"))
        else:
            out.append((key, f"{key}={value!r}: {e['msg']}"))
    return out
