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
import operator
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

_MISSING: Any = dataclasses.MISSING


def bounded(default: Any = _MISSING, *, gt=None, ge=None, lt=None, le=None, nonempty=False) -> Any:
    """A dataclass field with a declared range (``gt`` / ``ge`` / ``lt`` / ``le``; for a tuple,
    each entry's) or, with ``nonempty``, a non-empty string or tuple. A bound given as a string
    names an earlier field of the same config (``lt="every"``)."""
    bounds = {"gt": gt, "ge": ge, "lt": lt, "le": le, "nonempty": nonempty or None}
    return dataclasses.field(default=default, metadata={k: v for k, v in bounds.items() if v is not None})


def positive(default: Any = _MISSING) -> Any:
    """A field that must be ``> 0``."""
    return bounded(default, gt=0)


def at_least(low: float | str, default: Any = _MISSING) -> Any:
    """A field that must be ``>= low``."""
    return bounded(default, ge=low)


def between(
    low: float | str, high: float | str, default: Any = _MISSING, *, open_low=False, open_high=False
) -> Any:
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


def validate(cfg: Config) -> None:
    """Checks every field of the dataclass ``cfg`` against its annotation and declared range.

    Raises:
        ValueError: ``Owner.field must be <what it accepts>, got <value>`` for the first bad field.
    """
    for name, accepts, describe in _checks(type(cfg)):  # type: ignore[arg-type]  # classes hash by identity
        value = getattr(cfg, name)
        if not accepts(value, cfg):
            raise ValueError(f"{type(cfg).__name__}.{name} must be {describe(cfg)}, got {value!r}")


Check = Callable[[Any, Any], bool]  # (value, the config it belongs to) -> whether it is accepted


@functools.cache
def _checks(cls: type) -> list[tuple[str, Check, Callable[[Any], str]]]:
    """Each field's name, its check (compiled once per class from the annotation) and description."""
    hints = typing.get_type_hints(cls)
    return [
        (f.name, _compile(hints[f.name], f.metadata), functools.partial(_describe, hints[f.name], f.metadata))
        for f in dataclasses.fields(cls)
    ]


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _bound(bound: Any, cfg: Any) -> Any:
    return getattr(cfg, bound) if isinstance(bound, str) else bound


def _in_range(meta: Mapping[str, Any]) -> Check:
    ops = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}
    bounds = [(ops[k], v) for k, v in meta.items() if k in ops]
    return lambda x, cfg: all(op(x, _bound(bound, cfg)) for op, bound in bounds)


def _compile(tp: Any, meta: Mapping[str, Any]) -> Check:
    """The check of one annotation (with the field's declared range for numbers and tuple entries)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return lambda x, cfg: True
    if tp is type(None):
        return lambda x, cfg: x is None
    if _is_union(tp):
        arms = [_compile(arm, meta) for arm in args]
        return lambda x, cfg: any(arm(x, cfg) for arm in arms)
    if origin is Literal:  # True == 1, so the type must match too
        return lambda x, cfg: any(x == c and type(x) is type(c) for c in args)
    if tp is bool:
        return lambda x, cfg: isinstance(x, bool)
    if tp is int:  # a flag passed where a count belongs is a mistake worth catching
        within = _in_range(meta)
        return lambda x, cfg: isinstance(x, int) and not isinstance(x, bool) and within(x, cfg)
    if tp is float:
        within = _in_range(meta)
        return lambda x, cfg: (
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and within(x, cfg)
        )
    if tp is str:
        blank_ok = "nonempty" not in meta
        return lambda x, cfg: isinstance(x, str) and (blank_ok or bool(x.strip()))
    if origin is tuple:
        empty_ok = "nonempty" not in meta
        if len(args) == 2 and args[1] is Ellipsis:  # the range is each entry's
            entry = _compile(args[0], {k: v for k, v in meta.items() if k != "nonempty"})
            return lambda x, cfg: (
                isinstance(x, tuple) and (empty_ok or bool(x)) and all(entry(v, cfg) for v in x)
            )
        parts = [_compile(a, {}) for a in args]
        return lambda x, cfg: (
            isinstance(x, tuple)
            and len(x) == len(parts)
            and all(p(v, cfg) for p, v in zip(parts, x, strict=True))
        )
    if isinstance(tp, type):
        return lambda x, cfg: isinstance(x, tp)
    return lambda x, cfg: True


_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers")}


def _range(meta: Mapping[str, Any], cfg: Any) -> str:
    def show(bound: Any) -> str:
        return f"{bound}={_bound(bound, cfg)}" if isinstance(bound, str) else str(bound)

    low = next(((k, show(meta[k])) for k in ("gt", "ge") if k in meta), None)
    high = next(((k, show(meta[k])) for k in ("lt", "le") if k in meta), None)
    if low and high:
        return f" in {'(' if low[0] == 'gt' else '['}{low[1]}, {high[1]}{')' if high[0] == 'lt' else ']'}"
    sign = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return "".join(f" {sign[end[0]]} {end[1]}" for end in (low, high) if end)


def _describe(tp: Any, meta: Mapping[str, Any], cfg: Any, plural: bool = False) -> str:
    origin = typing.get_origin(tp)
    if _is_union(tp):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        text = " or ".join(_describe(a, meta, cfg, plural) for a in arms)
        return text + (" or None" if len(arms) < len(typing.get_args(tp)) else "")
    if origin is Literal:
        return f"one of {typing.get_args(tp)}"
    if tp is bool:
        return "True or False"
    if tp is str:
        blank = "non-empty " if "nonempty" in meta else ""
        return f"{blank}strings" if plural else f"a {blank}string"
    if tp in _NOUNS:
        return _NOUNS[tp][plural] + _range(meta, cfg)
    if origin is tuple:
        args = typing.get_args(tp)
        kind = ("non-empty " if "nonempty" in meta else "") + ("tuples" if plural else "tuple")
        kind = kind if plural else f"a {kind}"
        if len(args) == 2 and args[1] is Ellipsis:
            entry = {k: v for k, v in meta.items() if k != "nonempty"}
            return f"{kind} of {_describe(args[0], entry, cfg, plural=True)}"
        return f"{kind} ({', '.join(_describe(a, {}, cfg) for a in args)})"
    name = getattr(tp, "__name__", str(tp))
    return f"{name} values" if plural else f"a {name}"
