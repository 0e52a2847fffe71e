"""One validator for every config: a field's annotation and its declared range say what it accepts.

A config is a frozen dataclass deriving from :class:`Config`. Its ``__post_init__`` checks every
field against its annotation (``Literal[...]`` choices, ``int`` / ``float`` / ``bool`` / ``str``,
``X | None``, ``tuple[X, ...]``, nested configs) and the range declared once on the field with
:func:`bounded` (or its short forms :func:`positive`, :func:`at_least`, :func:`between`,
:func:`nonempty`), then runs the class's own cross-field rules in ``_check()``. A bad value raises a
``ValueError`` naming ``Owner.field``, what it accepts and the value it got.

Example:
    >>> import dataclasses
    >>> from typing import Literal
    >>> @dataclasses.dataclass(frozen=True)
    ... class Toy(Config):
    ...     kind: Literal["a", "b"] = "a"
    ...     steps: int = positive(10)
    >>> Toy(steps=0)
    Traceback (most recent call last):
    ...
    ValueError: Toy.steps must be an integer > 0, got 0
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, Literal, Union

_MISSING: Any = dataclasses.MISSING


def bounded(default: Any = _MISSING, *, gt=None, ge=None, lt=None, le=None, nonempty=False) -> Any:
    """A dataclass field with a declared range (``gt`` / ``ge`` / ``lt`` / ``le``; for a tuple,
    each entry's) or, with ``nonempty``, a non-empty string or tuple."""
    bounds = {"gt": gt, "ge": ge, "lt": lt, "le": le, "nonempty": nonempty or None}
    return dataclasses.field(default=default, metadata={k: v for k, v in bounds.items() if v is not None})


def positive(default: Any = _MISSING) -> Any:
    """A field that must be ``> 0``."""
    return bounded(default, gt=0)


def at_least(low: float, default: Any = _MISSING) -> Any:
    """A field that must be ``>= low``."""
    return bounded(default, ge=low)


def between(low: float, high: float, default: Any = _MISSING, *, open_low=False, open_high=False) -> Any:
    """A field in ``[low, high]`` (either end open on request)."""
    lo = {"gt": low} if open_low else {"ge": low}
    hi = {"lt": high} if open_high else {"le": high}
    return bounded(default, **lo, **hi)


def nonempty(default: Any = _MISSING) -> Any:
    """A string (not blank) or tuple field that must not be empty."""
    return bounded(default, nonempty=True)


class Config:
    """Base of the configs: validation on construction, ``replace`` and the ``_check()`` hook."""

    def __post_init__(self) -> None:
        validate(self)
        self._check()

    def _check(self) -> None:
        """Cross-field rules of the subclass (called after every field passed :func:`validate`)."""

    def replace(self, **changes: Any) -> typing.Self:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def validate(cfg: Any) -> None:
    """Checks every field of the dataclass ``cfg`` against its annotation and declared range.

    Raises:
        ValueError: ``Owner.field must be <what it accepts>, got <value>`` for the first bad field.
    """
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, tp = getattr(cfg, f.name), hints[f.name]
        if not _accepts(tp, value, f.metadata):
            raise ValueError(
                f"{type(cfg).__name__}.{f.name} must be {_describe(tp, f.metadata)}, got {value!r}"
            )


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _in_range(value: float, meta: typing.Mapping[str, Any]) -> bool:
    checks = {"gt": value.__gt__, "ge": value.__ge__, "lt": value.__lt__, "le": value.__le__}
    return all(check(meta[k]) for k, check in checks.items() if k in meta)


def _accepts(tp: Any, value: Any, meta: typing.Mapping[str, Any]) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if _is_union(tp):
        return any(_accepts(arm, value, meta) for arm in typing.get_args(tp))
    if origin is Literal:  # True == 1, so the type must match too
        return any(value == c and type(value) is type(c) for c in typing.get_args(tp))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:  # a flag passed where a count belongs is a mistake worth catching
        return isinstance(value, int) and not isinstance(value, bool) and _in_range(value, meta)
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok and math.isfinite(value) and _in_range(value, meta)
    if tp is str:
        return isinstance(value, str) and (bool(value.strip()) or "nonempty" not in meta)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, tuple) or ("nonempty" in meta and not value):
            return False
        if len(args) == 2 and args[1] is Ellipsis:  # the range is each entry's
            entry = {k: v for k, v in meta.items() if k != "nonempty"}
            return all(_accepts(args[0], v, entry) for v in value)
        return len(args) == len(value) and all(_accepts(a, v, {}) for a, v in zip(args, value, strict=True))
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers")}


def _range(meta: typing.Mapping[str, Any]) -> str:
    low = next(((k, meta[k]) for k in ("gt", "ge") if k in meta), None)
    high = next(((k, meta[k]) for k in ("lt", "le") if k in meta), None)
    if low and high:
        return f" in {'(' if low[0] == 'gt' else '['}{low[1]}, {high[1]}{')' if high[0] == 'lt' else ']'}"
    sign = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return "".join(f" {sign[end[0]]} {end[1]}" for end in (low, high) if end)


def _describe(tp: Any, meta: typing.Mapping[str, Any], plural: bool = False) -> str:
    origin = typing.get_origin(tp)
    if _is_union(tp):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        text = " or ".join(_describe(a, meta, plural) for a in arms)
        return text + (" or None" if len(arms) < len(typing.get_args(tp)) else "")
    if origin is Literal:
        return f"one of {typing.get_args(tp)}"
    if tp is bool:
        return "True or False"
    if tp is str:
        blank = "non-empty " if "nonempty" in meta else ""
        return f"{blank}strings" if plural else f"a {blank}string"
    if tp in _NOUNS:
        return _NOUNS[tp][plural] + _range(meta)
    if origin is tuple:
        args = typing.get_args(tp)
        kind = ("non-empty " if "nonempty" in meta else "") + ("tuples" if plural else "tuple")
        kind = kind if plural else f"a {kind}"
        if len(args) == 2 and args[1] is Ellipsis:
            entry = {k: v for k, v in meta.items() if k != "nonempty"}
            return f"{kind} of {_describe(args[0], entry, plural=True)}"
        return f"{kind} ({', '.join(_describe(a, {}) for a in args)})"
    name = getattr(tp, "__name__", str(tp))
    return f"{name} values" if plural else f"a {name}"
