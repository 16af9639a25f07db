"""KEY=VALUE overrides as the CLI and the experiments take them: `l=2`, `router=patch`, `cnn:neurons=40,l=2`."""
from __future__ import annotations

import json
from typing import Iterable

from pmoe.errors import check


def parse_options(items: Iterable[str] | None, what: str) -> dict:
    """['l=2', 'router=patch'] -> {'l': 2, 'router': 'patch'}: values as JSON where they parse, else strings."""
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        check(bool(eq and key), f"bad {what} {item!r}; expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def parse_spec(spec: str, names: Iterable[str], fields: Iterable[str] | None = None,
               kind: str = "model") -> tuple[str, dict]:
    """'cnn:neurons=40,l=2' -> ('cnn', {'neurons': 40, 'l': 2}): a name from `names` (a `kind` of thing) with
    optional overrides, each a key of `fields` when given."""
    name, _, rest = spec.partition(":")
    names = list(names)
    check(name in names, f"unknown {kind} {name!r} in {spec!r}; expected one of {names}")
    options = parse_options(filter(None, rest.split(",")), f"option in {spec!r}:")
    if fields is not None:
        unknown = sorted(set(options) - set(fields))
        check(not unknown, f"bad model option(s) {unknown} in {spec!r}; expected keys of {sorted(fields)}")
    return name, options
