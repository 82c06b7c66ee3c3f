"""The one builder and the one ``key=value`` parser of every config dataclass (torch-free).

``build_config`` turns a parsed TOML table (nested dicts) into a frozen config dataclass, recursing into
fields whose default is itself a dataclass; keys may use ``-`` or ``_``; an unknown key is an error listing
the valid ones; values are coerced the TOML way (an integer where a float is meant is fine, nothing else
changes type). ``parse_assignment`` reads one ``key=value`` (``--set``, ``--sweep``, the study scripts),
the value in TOML syntax and a bare word taken as a string.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import Field, fields, is_dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def build_config(cls: type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    """``cls(**values)`` with nested sections built too.

    Args:
        cls: a config dataclass.
        values: parsed TOML of its section.
        prefix: the section's dotted name with a trailing dot (``"federation."``), for messages.

    Raises:
        ValueError: ``values`` is not a table, a key is unknown (the valid ones are listed), a value has the
            wrong type, or ``cls`` rejects a value.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"config section {prefix.rstrip('.') or '(top)'} must be a table, got {values!r}")
    valid = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in valid:
            where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
            raise ValueError(
                f"unknown config key {prefix + key!r} in {where}; valid keys: {', '.join(valid)}"
            )
        kwargs[name] = _coerce(valid[name], value, prefix + name)
    return cls(**kwargs)


def _coerce(spec: Field, value: Any, name: str) -> Any:
    default = spec.default_factory() if callable(spec.default_factory) else spec.default
    if is_dataclass(default):
        return build_config(type(default), value, name + ".")
    if isinstance(default, dict):
        if not isinstance(value, Mapping):
            raise ValueError(f"config {name}={value!r} must be a table")
        return {k.replace("-", "_"): v for k, v in value.items()}
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple):
            raise ValueError(f"config {name}={value!r} must be a list")
        return tuple(value)
    if isinstance(default, bool) or isinstance(value, bool):
        if type(value) is not type(default):
            raise ValueError(f"config {name}={value!r} must be a {type(default).__name__}")
        return value
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if isinstance(default, int | float | str) and not isinstance(value, type(default)):
        raise ValueError(f"config {name}={value!r} must be a {type(default).__name__}")
    return value


def parse_value(raw: str) -> Any:
    """A TOML value (``0.25``, ``true``, ``[1, 2]``, ``"x"``); anything that is not valid TOML as a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def parse_assignment(
    item: str, what: str = "override", example: str = "section.key=value"
) -> tuple[str, Any]:
    """``"key=value"`` -> ``(key, parse_value(value))``.

    Raises:
        ValueError: see ``split_assignment``.
    """
    key, raw = split_assignment(item, what, example)
    return key, parse_value(raw)


def split_assignment(
    item: str, what: str = "override", example: str = "section.key=value"
) -> tuple[str, str]:
    """``"key=value"`` -> ``(key, value)``, both stripped, the value left unparsed.

    Args:
        what, example: for the message, e.g. ``"--set"`` and ``"FIELD=VALUE"``.

    Raises:
        ValueError: no ``=`` or an empty key.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{what} {item!r} must look like {example}")
    return key.strip(), raw.strip()
