"""The one builder and the one ``key=value`` parser of every config dataclass (torch-free).

``build_config`` turns a parsed TOML table (nested dicts) into a frozen config dataclass, recursing into
fields whose default is itself a dataclass; keys may use ``-`` or ``_``; an unknown key is an error listing
the valid ones; values are coerced the TOML way (an integer where a float is meant is fine, nothing else
changes type). A config with sections and a true ``flat_keys`` class attribute (``EmulatorConfig``) may be
written flat: ``nest_flat_keys`` moves each leaf key into its one home section, found from the dataclass
fields, and ``flatten_sections`` writes it back flat. ``parse_assignment`` reads one ``key=value``
(``--set``, ``--sweep``, the study scripts), the value in TOML syntax and a bare word taken as a string.
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
    flat = getattr(cls, "flat_keys", False)  # a config with sections that users may write flat
    if flat:
        values = nest_flat_keys(cls, values, prefix)
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
        section = flat and is_dataclass(default_of(valid[name]))
        # Leaves of a flat_keys config are unique, so messages name them as users write them: flat.
        kwargs[name] = (
            build_config(type(default_of(valid[name])), value, prefix)
            if section
            else _coerce(valid[name], value, prefix + name)
        )
    return cls(**kwargs)


def nest_flat_keys(cls: type, values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``values`` with every flat key of a section's field moved into that section's table.

    ``cls`` has scalar fields and section fields (a dataclass default); a key is a scalar field, a section
    (a table, merged) or a field of exactly one section. ``-`` in keys is read as ``_``.

    Raises:
        ValueError: ``values`` is not a table, a key is unknown (the valid flat keys are listed) or given both
            flat and inside its section.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"config section {prefix.rstrip('.') or '(top)'} must be a table, got {values!r}")
    sections = {f.name: type(default_of(f)) for f in fields(cls) if is_dataclass(default_of(f))}
    home = {leaf.name: name for name, section in sections.items() for leaf in fields(section)}
    top = [f.name for f in fields(cls) if f.name not in sections]
    nested: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name in top:
            nested[name] = value
            continue
        if name in home:
            section, value = home[name], {name: value}
        elif name in sections and isinstance(value, Mapping):
            section = name
        else:
            where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
            raise ValueError(
                f"unknown config key {prefix + key!r} in {where}; valid keys: {', '.join(top + list(home))}"
            )
        table = nested.setdefault(section, {})
        for leaf, leaf_value in value.items():
            leaf = leaf.replace("-", "_")
            if home.get(leaf) != section:
                raise ValueError(
                    f"unknown config key {f'{prefix}{section}.{leaf}'!r} in [{prefix}{section}]; valid keys: "
                    f"{', '.join(k for k, s in home.items() if s == section)}"
                )
            if leaf in table:
                raise ValueError(f"config {prefix}{leaf} is given twice: flat and in [{prefix}{section}]")
            table[leaf] = leaf_value
    return nested


def flatten_sections(data: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """``asdict(config)`` with each section's table merged into the top level (``nest_flat_keys`` undone)."""
    flat: dict[str, Any] = {}
    for spec in fields(config):
        value = data[spec.name]
        flat |= value if is_dataclass(default_of(spec)) else {spec.name: value}
    return flat


def default_of(spec: Field) -> Any:
    """A dataclass field's default value (its factory called)."""
    return spec.default_factory() if callable(spec.default_factory) else spec.default


def _coerce(spec: Field, value: Any, name: str) -> Any:
    default = default_of(spec)
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
