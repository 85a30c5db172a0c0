"""Field types of the typed configs (:mod:`papo.config.schema`): numeric ranges, choices, importable targets.

Each range or choice is declared once, on its field, with pydantic's own constraints (``Field(ge=...)``,
``Literal[...]``) or the validators below; :mod:`papo.config.messages` reads the same declarations back to word
the one-line error (``rollout.top_k=-1 must be an integer >= 0 (0 disables)``). Numbers are strict: a string,
a bool or (for integer keys) a float is an error, not silently converted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

__all__ = [
    "Choices",
    "ConfigGroup",
    "Fraction",
    "Hint",
    "NonNegative",
    "NonNegativeInt",
    "OpenFraction",
    "Positive",
    "PositiveInt",
    "about",
    "choice",
    "problem",
    "rule",
    "target_of",
]


class ConfigGroup(BaseModel):
    """Base of every config group: strict types, unknown keys kept (``+group.key=...`` stays possible)."""

    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True)


class Hint(str):
    """What a special value of a field means (``0 disables``, ``null = all``): shown after the allowed range."""


PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
#: [0, 1]
Fraction = Annotated[float, Field(ge=0, le=1)]
#: (0, 1]
OpenFraction = Annotated[float, Field(gt=0, le=1)]


class Choices:
    """The valid values of a field, computed when asked (registries fill up on import)."""

    def __init__(self, names: Callable[[], Sequence[Any]]) -> None:
        self.names = names

    def __call__(self) -> list[Any]:
        return list(self.names())


def choice(names: Callable[[], Sequence[Any]]) -> Any:
    """A string that must be one of ``names()`` (a registry's names, a tuple of modes): the error lists them."""
    valid = Choices(names)

    def check(value: str) -> str:
        if value not in valid():
            raise PydanticCustomError("choice", "is unknown")
        return value

    return Annotated[str, AfterValidator(check), valid]


def problem(tail: str) -> PydanticCustomError:
    """An error about one value: the message is ``<key>=<value!r><tail>`` (``tail`` starts with its separator)."""
    return PydanticCustomError("value", "{tail}", {"tail": tail})


def about(tail: str) -> PydanticCustomError:
    """An error about a key rather than its value: the message is ``<key><tail>``."""
    return PydanticCustomError("key", "{tail}", {"tail": tail})


def rule(line: str | list[str]) -> PydanticCustomError:
    """An error about a combination of keys: ``line`` is the whole message and names the keys itself (a list:
    one line per problem, each reported on its own)."""
    lines = [line] if isinstance(line, str) else list(line)
    return PydanticCustomError("rule", "{line}", {"line": lines[0], "lines": lines})


def target_of(base: Callable[[], Any], unknown: str, wrong: str, examples: Callable[[], list[str]]) -> Any:
    """A ``_target_`` that must import and be ``base()`` (a class, or a tuple of classes and functions).

    The errors read ``<key>=<value!r> cannot be imported; <unknown> <examples>`` and
    ``<key>=<value!r> is not <wrong> <examples>``.
    """

    def check(target: str) -> str:
        from hydra.utils import get_object

        try:
            obj = get_object(target)
        except Exception:
            raise problem(f" cannot be imported; {unknown} {examples()}") from None
        allowed = base() if isinstance(base(), tuple) else (base(),)
        if not any(
            obj is a or (isinstance(obj, type) and isinstance(a, type) and issubclass(obj, a))
            for a in allowed
        ):
            raise problem(f" is not {wrong} {examples()}")
        return target

    return Annotated[str, AfterValidator(check)]
