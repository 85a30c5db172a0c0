"""The one name -> object registry class of the project, and the registries of the pure-math pieces.

A config picks an advantage estimator, a policy loss, a KL estimator, an aggregation mode (here) or a reward
function (:data:`papo.rewards.REWARD_FUNCTIONS`) by *name*; a :class:`Registry` turns the name into the
object. Rules (from verl's ``core_algos.py``):

* an unknown name is an error whose message lists the valid names (sorted);
* registering the same name twice is an error (no silent overwrite).

The registries below are created empty here and filled by the modules that define the functions
(``advantages``, ``policy_loss``, ``kl``, ``aggregation``) with the ``@REGISTRY.register(name)``
decorator. Importing anything from ``papo.algos`` runs the package ``__init__`` first, which imports
every module, so the registries are always complete when used.

Call conventions of the entries:

* ``ADVANTAGE_ESTIMATORS``: ``fn(rewards (N,), group_ids (N,)) -> advantages (N,)``
* ``POLICY_LOSSES``: ``fn(logps, old_logps, advantages, mask, clip_low=..., clip_high=...,
  agg_mode=..., num_tokens=None, dual_clip=..., norm_len=None) -> (loss, metrics)``; the policy-gradient
  component passes ``num_tokens`` always, ``dual_clip`` / ``norm_len`` when the function accepts them
* ``KL_ESTIMATORS``: ``fn(logps (B, T), ref_logps (B, T)) -> per-token KL (B, T)``
* ``AGGREGATIONS``: ``fn(loss_mat, mask, num_tokens, num_seqs[, norm_len]) -> scalar``; ``AGG_MODES`` holds
  the names (``norm_len`` is passed only to functions that accept it).

This module imports only the standard library, so :mod:`papo.rewards` uses the same class.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "AGG_MODES",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "Registry",
    "UnknownNameError",
    "accepts_kwarg",
]


@cache
def accepts_kwarg(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (or ``**kwargs``): registered functions written before
    an optional argument existed (e.g. ``norm_len``) are called without it."""
    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class UnknownNameError(KeyError, ValueError):
    """A name no entry of a :class:`Registry` has; the message lists the valid names.

    Both a ``KeyError`` (a registry is looked up like a mapping) and a ``ValueError`` (a config value is
    wrong), so callers may catch either.
    """

    def __str__(self) -> str:  # KeyError would show the message with quotes around it
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A name -> object table: unknown names list the valid ones, duplicate registration is an error.

    Args:
        kind: what the entries are ("advantage estimator", "reward function", ...); used in error messages.
        error: the exception class of an unknown name (a subclass of :class:`UnknownNameError`, e.g.
            :class:`papo.rewards.UnknownRewardFunctionError`).

    Looked up with :meth:`get` or ``registry[name]`` (both raise on an unknown name: unlike ``dict.get``
    there is no default), iterated in sorted name order, tested with ``name in registry``.

    Example::

        LOSSES = Registry("loss")

        @LOSSES.register("mse")
        def mse(x, y): ...

        LOSSES.get("mse")  # -> mse
        LOSSES.get("mae")  # UnknownNameError (a ValueError): Unknown loss 'mae'. Valid names: ['mse']
    """

    def __init__(self, kind: str, error: type[UnknownNameError] = UnknownNameError) -> None:
        self.kind = kind
        self.error = error
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that stores ``obj`` under ``name`` and returns it unchanged.

        Raises:
            ValueError: if ``name`` is already registered.
        """

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(
                    f"{self.kind} '{name}' is already registered (by {self._entries[name]!r}); "
                    f"registered names: {self.names()}"
                )
            self._entries[name] = obj
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` (e.g. an entry a test or a plugin registered).

        Raises:
            UnknownNameError: (``self.error``) if ``name`` is not registered.
        """
        self.get(name)
        del self._entries[name]

    def get(self, name: str) -> T:
        """Return the object registered as ``name``.

        Raises:
            UnknownNameError: (``self.error``, a ``KeyError`` and a ``ValueError``) if ``name`` is unknown;
                the message lists the valid names, sorted.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name (e.g. a list from a config)
            raise self.error(f"Unknown {self.kind} {name!r}. Valid names: {self.names()}") from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: Any) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"


ADVANTAGE_ESTIMATORS: Registry = Registry("advantage estimator")
POLICY_LOSSES: Registry = Registry("policy loss")
KL_ESTIMATORS: Registry = Registry("KL estimator")
AGGREGATIONS: Registry = Registry("loss aggregation mode")

# The valid ``agg_mode`` strings, in documentation order (``AGGREGATIONS.names()`` is the same set, sorted).
AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)
