"""Declarative parameter constraints with one message format.

Every public function declares its constraints as a dict
``{name: [constraint, ...]}``; a value is valid when it satisfies any one of
them. The message format is the same everywhere::

    The 'rank' parameter of complete must be an int in [1, 800]. Got 0.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .exceptions import InvalidParameterError

__all__ = ["Interval", "Options", "Instance", "Callable_", "validate_params", "check_choice"]


@dataclass(frozen=True)
class Interval:
    """A numeric range. ``kind`` is ``"int"`` or ``"real"``.

    ``closed`` is one of ``"both"``, ``"left"``, ``"right"``, ``"neither"``;
    ``None`` bounds are unbounded.
    """

    kind: str
    left: float | None
    right: float | None
    closed: str = "both"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool | np.bool_):
            return False
        if self.kind == "int":
            if not isinstance(value, numbers.Integral):
                return False
        elif not isinstance(value, numbers.Real):
            return False
        if isinstance(value, numbers.Real) and not math.isfinite(float(value)):
            return False
        lo_ok = self.left is None or (
            value >= self.left if self.closed in ("both", "left") else value > self.left
        )
        hi_ok = self.right is None or (
            value <= self.right if self.closed in ("both", "right") else value < self.right
        )
        return bool(lo_ok and hi_ok)

    def describe(self) -> str:
        noun = "an int" if self.kind == "int" else "a float"
        if self.left is None and self.right is None:
            return noun
        lb = "[" if self.closed in ("both", "left") else "("
        rb = "]" if self.closed in ("both", "right") else ")"
        lo = "-inf" if self.left is None else _fmt(self.left)
        hi = "inf" if self.right is None else _fmt(self.right)
        return f"{noun} in {lb}{lo}, {hi}{rb}"


@dataclass(frozen=True)
class Options:
    """A value from a fixed set (e.g. method names)."""

    values: tuple

    def accepts(self, value: Any) -> bool:
        try:
            return value in self.values
        except TypeError:
            return False

    def describe(self) -> str:
        return "one of {" + ", ".join(repr(v) for v in self.values) + "}"


@dataclass(frozen=True)
class Instance:
    """An instance of a type (or tuple of types); ``None`` is written as ``type(None)``."""

    types: tuple
    name: str

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.types)

    def describe(self) -> str:
        return self.name


class PairOf:
    """Two values (a tuple or list), each accepted by ``inner`` (e.g. a per-side ``reg``)."""

    def __init__(self, inner, what: str = "(rows, columns)"):
        self.inner, self.what = inner, what

    def accepts(self, value: Any) -> bool:
        return (
            isinstance(value, tuple | list)
            and len(value) == 2
            and all(self.inner.accepts(v) for v in value)
        )

    def describe(self) -> str:
        return f"a pair {self.what} of those"


class Callable_:
    """Any callable."""

    def accepts(self, value: Any) -> bool:
        return callable(value)

    def describe(self) -> str:
        return "a callable"


NONE = Instance((type(None),), "None")


def _fmt(x: float) -> str:
    if isinstance(x, numbers.Integral):
        return str(x)
    return f"{x:g}"


def _describe(constraints: Iterable) -> str:
    parts = [c.describe() for c in constraints]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def check_param(func: str, name: str, value: Any, constraints: list) -> None:
    """Raise :class:`InvalidParameterError` unless ``value`` meets one constraint."""
    if any(c.accepts(value) for c in constraints):
        return
    raise InvalidParameterError(
        f"The {name!r} parameter of {func} must be {_describe(constraints)}. Got {value!r}."
    )


def validate_params(func: str, params: dict[str, Any], constraints: dict[str, list]) -> None:
    """Check every ``params[name]`` against ``constraints[name]``."""
    for name, cons in constraints.items():
        if name in params:
            check_param(func, name, params[name], cons)


def check_choice(func: str, name: str, value: Any, valid: Iterable[str]) -> str:
    """Validate a string option and list the valid names in the error."""
    valid = tuple(valid)
    if isinstance(value, str) and value in valid:
        return value
    raise InvalidParameterError(
        f"The {name!r} parameter of {func} must be one of "
        + "{"
        + ", ".join(repr(v) for v in valid)
        + "}"
        + f". Got {value!r}."
    )


def resolve_rng(random_state: Any) -> np.random.Generator:
    """``None`` / int / Generator → a ``numpy.random.Generator``."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is None or (
        isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool)
    ):
        if random_state is not None and random_state < 0:
            raise InvalidParameterError(
                f"The 'random_state' parameter must be None, a non-negative int or a "
                f"numpy Generator. Got {random_state!r}."
            )
        return np.random.default_rng(random_state)
    raise InvalidParameterError(
        "The 'random_state' parameter must be None, a non-negative int or a numpy "
        f"Generator. Got {random_state!r}."
    )


RANDOM_STATE = [
    Instance((type(None),), "None"),
    Interval("int", 0, None),
    Instance((np.random.Generator,), "a numpy Generator"),
]
CALLABLE_OR_NONE: list[Any] = [NONE, Callable_()]
