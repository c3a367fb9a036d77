"""Typed keyword arguments checked against a signature: the one place user values meet code.

The config layer validates the ``method`` and ``views`` sections with these functions, and
composite methods (multi-task) validate their tasks' arguments with them, so the defaults live
in one place: the signatures of the classes (with the paper they come from in the docstring).
Nested settings are frozen dataclasses (e.g. :class:`selfsup.views.AugmentSpec`): a partial
mapping given for one is merged over the default instance of that parameter.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from .errors import SelfsupError, closest


@dataclass(frozen=True)
class Range:
    """The accepted values of a number: from ``low`` to ``high`` (None: unbounded), each end
    included unless ``open_low`` / ``open_high``. Attached to a type with ``Annotated``, it is
    checked with the type, before anything runs, and named in the error."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def holds(self, value: Any) -> bool:
        if not math.isfinite(value):  # NaN compares false with every bound, and no setting means infinity
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or (value < self.high if self.open_high else value <= self.high)

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        if self.low is not None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        return f"{'<' if self.open_high else '<='} {self.high:g}"


@dataclass(frozen=True)
class NonEmpty:
    """A list that must hold at least one value."""

    def holds(self, value: Any) -> bool:
        return len(value) > 0

    def __str__(self) -> str:
        return "a non-empty list"


@dataclass(frozen=True)
class Ascending:
    """A pair (low, high) whose first value is not above its second (e.g. a crop scale range)."""

    def holds(self, value: Any) -> bool:
        return all(a <= b for a, b in zip(value, value[1:]))

    def __str__(self) -> str:
        return "in ascending order"


def rule_text(rule: Any, value: Any) -> str:
    """What ``value`` must be, as a phrase: ``>= 1``, ``a finite number > 0``, ``in ascending order``."""
    infinite = isinstance(value, float) and not math.isfinite(value)
    return f"a finite number {rule}" if infinite else str(rule)


# The ranges settings take, by what they count or measure.
PositiveInt = Annotated[int, Range(1)]
"""A count of at least one (batch size, epochs, image size, k of kNN)."""
Count = Annotated[int, Range(0)]
"""A count that may be zero (0 often meaning "never" or "none")."""
Positive = Annotated[float, Range(0, open_low=True)]
"""A strictly positive amount (a learning rate, a temperature)."""
NonNegative = Annotated[float, Range(0)]
"""An amount that may be zero (a weight decay, a warm-up length)."""
Fraction = Annotated[float, Range(0, 1)]
"""A share or a probability, from 0 to 1."""


def type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *rules = typing.get_args(annotation)
        return " ".join([type_name(base), *(str(rule) for rule in rules if hasattr(rule, "holds"))])
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(annotation))
    if origin in (list, tuple) and typing.get_args(annotation):
        args = typing.get_args(annotation)
        if origin is list or args[-1] is Ellipsis:
            return f"a list of ({type_name(args[0])})"
        return f"a list of {len(args)} ({', '.join(type_name(a) for a in args)})"
    if origin is dict and typing.get_args(annotation):
        key, value = typing.get_args(annotation)
        return f"a mapping of {type_name(key)} to ({type_name(value)})"
    if origin is not None:
        return str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", str(annotation))


def check_value(path: str, value: Any, annotation: Any, default: Any = None) -> Any:
    """``value`` converted to ``annotation`` (lists to tuples, ints to floats, mappings to
    dataclasses merged over ``default``) or a :class:`SelfsupError` naming ``path``.

    Supports the types configs use: bool, int, float, str, None, Literal, unions,
    tuple[...], list[...], dict[...] and dataclasses, and ``Annotated`` with the rules above
    (:class:`Range`, :class:`NonEmpty`, :class:`Ascending`).
    """
    if annotation is Any or annotation is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        value = check_value(path, value, args[0], default)
        for rule in args[1:]:
            if hasattr(rule, "holds") and not rule.holds(value):
                raise SelfsupError(f"config key '{path}': must be {rule_text(rule, value)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        given = [option for option in args if option is not type(None)]
        if value is not None and len(given) == 1:  # "X or null" given an X: X's own message is the useful one
            return check_value(path, value, given[0], default)
        for option in args:
            try:
                return check_value(path, value, option, default)
            except SelfsupError as err:
                if dataclasses.is_dataclass(option) and isinstance(value, dict):
                    raise err  # the mapping was meant for the dataclass: its own message is the useful one
                continue
    elif dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        base = default if isinstance(default, annotation) else None
        return build_dataclass(annotation, value, path, base)  # refuses a value that is not a mapping
    elif origin is Literal:
        if value in args:
            return value
    elif annotation is type(None):
        if value is None:
            return None
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_value(f"{path}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) == len(args):
            return tuple(check_value(f"{path}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    elif origin is list and isinstance(value, (list, tuple)):
        return [check_value(f"{path}[{i}]", v, args[0]) for i, v in enumerate(value)]
    elif origin is dict or annotation is dict:
        if isinstance(value, dict):
            if len(args) == 2:
                return {check_value(f"{path}.<key>", k, args[0]): check_value(f"{path}.{k}", v, args[1])
                        for k, v in value.items()}
            return value
    raise SelfsupError(f"config key '{path}': expected {type_name(annotation)}, got {value!r}")


def unknown_key(path: str, key: str, valid: list[str]) -> SelfsupError:
    where = f"'{path}.{key}'" if path else f"'{key}'"
    return SelfsupError(
        f"unknown config key {where}{closest(key, valid)}. Valid keys here: {', '.join(sorted(valid))}")


def build_dataclass(cls: type, values: dict[str, Any], path: str, base: Any = None) -> Any:
    """An instance of dataclass ``cls`` from a (partial) mapping, over ``base`` or the defaults."""
    if not isinstance(values, dict):
        raise SelfsupError(f"config section '{path}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    start = base if base is not None else None
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise unknown_key(path, key, list(fields))
        current = getattr(start, key) if start is not None else _field_default(fields[key])
        kwargs[key] = check_value(f"{path}.{key}" if path else key, value, hints[key], current)
    try:
        return dataclasses.replace(start, **kwargs) if start is not None else cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise SelfsupError(f"config section '{path}': {err}") from None


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def signature_defaults(fn: Any, skip: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """``{name: (annotation, default)}`` of the keyword parameters of ``fn`` (a class or function).

    Only ``fn``'s own signature counts: a class states every argument it takes.
    """
    target = fn.__init__ if inspect.isclass(fn) else fn
    hints = typing.get_type_hints(target, include_extras=True)
    out = {}
    for name, param in inspect.signature(target).parameters.items():
        if name in ("self", *skip) or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        out[name] = (hints.get(name, Any), param.default)
    return out


def check_kwargs(path: str, values: dict[str, Any], fn: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Validate ``values`` against the signature of ``fn``; return every argument, defaults filled in."""
    if not isinstance(values, dict):
        raise SelfsupError(f"config section '{path}' must be a mapping, got {values!r}")
    spec = signature_defaults(fn, skip)
    for key in values:
        if key not in spec:
            raise unknown_key(path, key, list(spec))
    resolved = {}
    for name, (annotation, default) in spec.items():
        if name in values:
            resolved[name] = check_value(f"{path}.{name}", values[name], annotation, default)
        elif default is inspect.Parameter.empty:
            raise SelfsupError(f"config key '{path}.{name}' is required")
        else:
            resolved[name] = default
    return resolved


def plain(value: Any) -> Any:
    """Dataclasses and tuples turned into the dicts and lists YAML and JSON hold."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
