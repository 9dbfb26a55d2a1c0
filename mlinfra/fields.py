"""The stack file's sections as typed fields: how a value is checked against its annotation,
its range or its choices, and described in an error. ``spec`` declares the sections; every
section inherits ``Section``, whose ``__post_init__`` runs these checks, then its own rules.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar

from mlinfra.clouds.gcp.catalog import did_you_mean
from mlinfra.errors import SpecError


def in_range(lo: float, hi: float) -> dict:
    return {"range": (lo, hi)}


def one_of(*values: str) -> dict:
    return {"choices": values}


class Section:
    """Shared validation for the stack's tables: types, ranges, choices."""

    _key: ClassVar[str] = ""  # the TOML table name, for error key paths

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # every section is a dataclass
            if not f.compare:  # bookkeeping (the stack's path, its placement), not user input
                continue
            value = _coerce(self._path(f.name), getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)
            lo_hi = f.metadata.get("range")
            if lo_hi and not lo_hi[0] <= value <= lo_hi[1]:
                raise SpecError(self._path(f.name), f"{value} is out of range ({lo_hi[0]}–{lo_hi[1]})")
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                allowed = ", ".join(repr(c) for c in choices)
                raise SpecError(
                    self._path(f.name),
                    f"{value!r} is not one of {allowed}" + did_you_mean(str(value), list(choices)),
                )
        self._check()

    def _path(self, name: str) -> str:
        return f"{self._key}.{name}" if self._key else name

    def _check(self) -> None:
        """Rules that involve more than one field's type; overridden per section."""


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """A section's field types, evaluated once (the module defers annotations)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a field's type and return its canonical form."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise SpecError(key, f"expected true or false, got {describe(value)}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(key, f"expected an integer, got {describe(value)}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(key, f"expected a number, got {describe(value)}")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise SpecError(key, f"expected a string, got {describe(value)}")
    elif origin is tuple and args == (str, ...):
        if not isinstance(value, (list, tuple)):
            raise SpecError(key, f"expected a list of strings, got {describe(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise SpecError(f"{key}[{i}]", f"expected a string, got {describe(item)}")
        value = tuple(value)
    elif origin is dict and args == (str, str):
        if not isinstance(value, dict):
            raise SpecError(key, f"expected a table of strings, got {describe(value)}")
        for name, item in value.items():
            if not isinstance(item, str):
                raise SpecError(f"{key}.{name}", f"expected a string, got {describe(item)}")
        value = dict(value)
    elif type(None) in args:  # an optional table (verify.payload, [autoscale])
        if value is not None and not isinstance(value, (dict, Section)):
            raise SpecError(key, f"expected a table, got {describe(value)}")
    elif not isinstance(value, Section):
        raise SpecError(key, f"expected a table, got {describe(value)}")
    return value


def describe(value: Any) -> str:
    kinds = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        tuple: "a list",
        dict: "a table",
    }
    return f"{kinds.get(type(value), type(value).__name__)} {value!r}"
