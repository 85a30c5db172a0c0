"""User reward functions named in the config: ``path/to/file.py:function`` or ``package.module:function``.

What it implements:

* :func:`load_function` -- imports the file (by path, relative to the working directory) or the module (from
  the import path) and returns the named function; every failure is a :class:`RewardFunctionError` with a
  one-line message (no such file, no such function, the import raised, not callable, malformed spec).
* :func:`signature_problems` -- whether the function can be called as
  ``fn(response, ground_truth, **fields)`` with the fields and keyword arguments the config provides.
* :func:`as_scores` -- a return value as ``{"overall": float, ...}``: a number is the ``overall`` score; a
  dict of numbers must have an ``"overall"`` entry (the convention of EasyR1's reward functions), its
  other entries are named scores. Anything else is a ``TypeError`` naming the type.
* :func:`call_user_function` -- what the ``user_reward`` worker process runs for one response
  (:mod:`papo.rewards.components` schedules it under a deadline): loads the function once per process,
  calls it, checks the return value.

Trust: a user reward function is the user's own code and runs with the trainer's permissions. It runs in a
worker process so that a deadline can stop it (``reward.timeout_s``), not to contain it. The safety
guarantees of the built-in math reward (bounded time per answer, model output never executed:
docs/rewards.md) are properties of that reward, not of user functions.

This module imports only the standard library (the worker process starts without torch).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import numbers
import re
import sys
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "SPEC_FORMS",
    "RewardFunctionError",
    "as_scores",
    "call_user_function",
    "function_name",
    "is_user_spec",
    "load_function",
    "signature_problems",
]

_IDENT = r"[A-Za-z_]\w*"
_MODULE = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")
_ATTR = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")
SPEC_FORMS = "'path/to/file.py:function' or 'package.module:function'"
"""The two forms of a user function spec (for messages)."""
_PREVIEW = 80
_LOADED: dict[tuple[str, str], Callable[..., Any]] = {}  # (spec, working dir) -> function, per process


class RewardFunctionError(ValueError):
    """A user reward function that cannot be loaded or called as configured (one-line message)."""


def is_user_spec(text: str) -> bool:
    """Whether ``text`` names a user function (``file.py:function`` / ``module:function``), not a registered
    reward name."""
    return ":" in text


def _split(spec: str) -> tuple[str, str]:
    target, sep, attr = str(spec).rpartition(":")
    if not sep or not target or not _ATTR.fullmatch(attr):
        raise RewardFunctionError(f"{spec!r} is not {SPEC_FORMS}")
    return target, attr


def function_name(spec: str) -> str:
    """The function's own name in ``spec`` (``"rewards.py:brevity"`` -> ``"brevity"``)."""
    return _split(spec)[1].rpartition(".")[2]


def _is_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise RewardFunctionError(f"no such file: {path}")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    name = f"papo_user_reward_{stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RewardFunctionError(f"{path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling inside the file look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise RewardFunctionError(f"importing {path} raised {type(err).__name__}: {err}") from err
    return module


def _import_module(target: str) -> Any:
    if not _MODULE.fullmatch(target):
        raise RewardFunctionError(f"{target!r} is neither a .py file nor a dotted module path ({SPEC_FORMS})")
    try:
        return importlib.import_module(target)
    except Exception as err:
        raise RewardFunctionError(
            f"cannot import module {target!r}: {type(err).__name__}: {err} (is its folder on PYTHONPATH?)"
        ) from err


def load_function(spec: str) -> Callable[..., Any]:
    """The function ``spec`` names; a file path is read relative to the current working directory.

    Raises:
        RewardFunctionError: malformed spec, missing file, failing import, missing or non-callable attribute.
    """
    key = (str(spec), str(Path.cwd()))
    if key in _LOADED:
        return _LOADED[key]
    target, attr = _split(spec)
    if _is_file(target):
        path = Path(target).expanduser()
        where = path if path.is_absolute() else Path.cwd() / path
        module, label = _import_file(where.resolve() if where.exists() else where), str(target)
    else:
        module, label = _import_module(target), f"module {target}"
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            defined = sorted(
                n
                for n, v in vars(module).items()
                if inspect.isfunction(v) and getattr(v, "__module__", None) == module.__name__
            )
            raise RewardFunctionError(f"{label} has no function {attr!r}; functions defined there: {defined}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardFunctionError(f"{attr!r} in {label} is not callable (a {type(obj).__name__})")
    _LOADED[key] = obj
    return obj


def signature_problems(
    fn: Callable[..., Any], fields: Collection[str], kwargs: Collection[str], images: bool
) -> list[str]:
    """Why ``fn(response, ground_truth, **call)`` cannot work, one line each (empty when it can).

    Args:
        fn: the user function.
        fields: row fields the function may take by name (question, prompt, ...).
        kwargs: keyword arguments the config passes on every call (the component's ``kwargs``).
        images: whether the config passes the row's images as ``images=``.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: checked when called
        return []
    params = list(sig.parameters.values())
    kinds = inspect.Parameter
    positional = [p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
    var_positional = any(p.kind is kinds.VAR_POSITIONAL for p in params)
    var_keyword = any(p.kind is kinds.VAR_KEYWORD for p in params)
    problems = []
    if len(positional) < 2 and not var_positional:
        problems.append(
            f"takes {len(positional)} positional parameter(s); a reward function is called as "
            "fn(response, ground_truth, **fields)"
        )
    available = set(fields) | set(kwargs) | ({"images"} if images else set())
    for p in positional[2:] + [p for p in params if p.kind is kinds.KEYWORD_ONLY]:
        if p.default is not inspect.Parameter.empty:
            continue
        if p.kind is kinds.POSITIONAL_ONLY:
            problems.append(
                f"parameter {p.name!r} is positional-only and required; extra values come by name"
            )
        elif p.name == "images" and not images:
            problems.append("parameter 'images' is required but images are not passed: set images: true")
        elif p.name not in available:
            problems.append(
                f"parameter {p.name!r} has no value: row fields are {sorted(fields)}"
                + (" and images" if images else "")
                + f", config kwargs {sorted(kwargs)}"
            )
    names = {p.name for p in params if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)}
    for key in sorted(kwargs):
        if key not in names and not var_keyword:
            problems.append(
                f"does not accept the config kwarg {key!r} (parameters: {[p.name for p in params]})"
            )
    return problems


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _PREVIEW else text[:_PREVIEW] + "..."


def _number(value: Any) -> float | None:
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def as_scores(value: Any) -> dict[str, float]:
    """``{"overall": value}`` for a number; a dict of numbers with an ``"overall"`` entry as floats.

    Raises:
        TypeError: anything else (the message names the type and previews the value).
    """
    score = _number(value)
    if score is not None:
        return {"overall": score}
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            number = _number(item)
            if not isinstance(key, str) or number is None:
                raise TypeError(
                    f"returned a dict whose entry {key!r} is {type(item).__name__} {_preview(item)}; "
                    "every entry must be a number"
                )
            out[key] = number
        if "overall" not in out:
            raise TypeError(
                f"returned a dict without an 'overall' entry (keys {sorted(out)}); 'overall' is the score "
                "that is weighted and optimised, the other entries are logged"
            )
        return out
    raise TypeError(
        f"returned {type(value).__name__} {_preview(value)}; a reward function returns a number or a dict "
        "of numbers with an 'overall' entry"
    )


def call_user_function(spec: str, response: str, truth: Any, kwargs: dict[str, Any]) -> dict[str, float]:
    """``as_scores(fn(response, truth, **kwargs))`` with ``fn = load_function(spec)`` (loaded once per
    process). Runs in the ``user_reward`` worker; exceptions reach the caller."""
    scores = as_scores(load_function(spec)(response, truth, **kwargs))
    bad = [k for k, v in scores.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"returned non-finite score(s) {[(k, scores[k]) for k in bad]}")
    return scores
