"""Name -> function registries for the pure-math pieces (verl style).

A config picks an advantage estimator, a policy loss, a KL estimator or an aggregation mode by
*name*; the registry turns the name into a function. Rules (from verl's ``core_algos.py``):

* an unknown name is an error whose message lists the valid names (sorted);
* registering the same name twice is an error (no silent overwrite).

The registries are created empty here and filled by the modules that define the functions
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
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import cache
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "AGG_MODES",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "Registry",
    "accepts_kwarg",
]


@cache
def accepts_kwarg(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (or ``**kwargs``): registered functions written before
    an optional argument existed (e.g. ``norm_len``) are called without it."""
    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class Registry(Generic[F]):
    """A small name -> function table.

    Args:
        kind: what the entries are ("advantage estimator", "policy loss", ...); used in error messages.

    Example::

        LOSSES = Registry("loss")

        @LOSSES.register("mse")
        def mse(x, y): ...

        LOSSES.get("mse")  # -> mse
        LOSSES.get("mae")  # ValueError: Unknown loss 'mae'. Valid names: ['mse']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator that stores ``fn`` under ``name`` and returns it unchanged.

        Raises:
            ValueError: if ``name`` is already registered.
        """

        def decorator(fn: F) -> F:
            if name in self._entries:
                raise ValueError(
                    f"{self.kind} '{name}' is already registered (by {self._entries[name]!r}); "
                    f"registered names: {self.names()}"
                )
            self._entries[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> F:
        """Return the function registered as ``name``.

        Raises:
            ValueError: if ``name`` is unknown; the message lists the valid names, sorted.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"Unknown {self.kind} '{name}'. Valid names: {self.names()}") from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

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
