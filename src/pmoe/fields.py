"""Typed fields: values for a config dataclass (from a KEY=VALUE option, a preset override or config.json) checked
against each field's declared type before use, so that a bad value is refused by name instead of failing deep
inside (an int is taken where a float is declared; a list where a tuple is)."""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Literal, Mapping, Union

from pmoe.errors import check


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _matches(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(args) == len(value) and all(map(_matches, value, args))
        return not args or all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (tp, dict))  # a nested config, as read back from JSON
    return isinstance(value, origin or tp)


def type_name(tp: Any) -> str:
    """How a declared type reads in a message: 'int', 'float or None', 'list of int'."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (list, tuple):
        return f"list of {type_name(args[0])}" if args else "list"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def typed(cls: type, values: Any, what: str) -> Any:
    """`cls(**values)` once `check_fields` accepts `values`."""
    check_fields(cls, values, what)
    return cls(**values)


def check_fields(cls: type, values: Any, what: str, hidden: tuple[str, ...] = ()) -> None:
    """Refuse `values` unless it is a mapping of fields of dataclass `cls` (but not `hidden` ones), each of its
    declared type; the message names `what` (e.g. "preset 'vit-tiny'"), the field, the expected type and the value."""
    check(isinstance(values, Mapping), f"{what} must be an object of {cls.__name__} fields, got {values!r}")
    hints = {f.name: _hints(cls)[f.name] for f in dataclasses.fields(cls) if f.init and f.name not in hidden}
    unknown = sorted(set(values) - set(hints))
    check(not unknown, f"{what}: unknown field(s) {', '.join(map(str, unknown))}; valid: {', '.join(hints)}")
    for name, value in values.items():
        check(_matches(value, hints[name]), f"{what}: {name} must be {type_name(hints[name])}, got {value!r} "
                                            f"({type(value).__name__})")
