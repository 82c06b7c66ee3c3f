"""The one builder and the one ``key=value`` parser of every config dataclass (torch-free).

``build_config`` turns a parsed TOML table (nested dicts) into a frozen config dataclass, recursing into
fields whose default is itself a dataclass; keys may use ``-`` or ``_``; an unknown key is an error listing
the valid ones; each scalar is read as its field's declared type by ``parse_typed``, strictly (an integer
where a float is meant, a string that spells the value, as Flower's run config and node config may send it:
``"false"`` / ``"0"`` / ``"no"`` are false; anything else is an error naming the key, the value and what is
allowed). A string in a config file where a number or a boolean is meant is refused: only text from a
command line or Flower's run config (``Spelled``, which ``parse_value`` returns) is read as the type it
spells. A config with sections and a true ``flat_keys`` class attribute (``EmulatorConfig``) may be
written flat: ``nest_flat_keys`` moves each leaf key into its one home section, found from the dataclass
fields, and ``flatten_sections`` writes it back flat; ``nest_tables`` and ``nested_key`` place a whole
config and an override's key in that nested form, so an override replaces a file's value whichever form
either uses. ``check_keys`` checks only the keys of a partial table merged over a config later (a compare
file's ``[quick]``), naming where it was written. A config whose ``check_given`` method exists is handed the
keys that were given, for checks that a value alone cannot make (``DPConfig``: a setting its clipping
ignores, given at its default).
``parse_assignment`` reads one ``key=value`` (``--set``, ``--sweep``, the study scripts), the value in TOML
syntax and a bare word taken as a string.
"""

from __future__ import annotations

import numbers
import tomllib
from collections.abc import Iterable, Mapping, Sequence
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
            raise ValueError(_unknown_key(prefix, key, valid))
        section = flat and is_dataclass(default_of(valid[name]))
        # Leaves of a flat_keys config are unique, so messages name them as users write them: flat.
        kwargs[name] = (
            build_config(type(default_of(valid[name])), value, prefix)
            if section
            else _coerce(valid[name], value, prefix + name)
        )
    config = cls(**kwargs)
    check_given = getattr(config, "check_given", None)  # sees which keys were written; __post_init__ cannot
    if check_given is not None:
        check_given(kwargs.keys())
    return config


def check_keys(cls: type, values: Any, prefix: str = "", extra: Sequence[str] = ()) -> None:
    """Refuse an unknown key or a value of the wrong type anywhere in ``values``, a partial table of ``cls``
    that is merged over a whole config later (a compare file's ``[quick]``): checked on its own, with
    ``prefix`` naming where it was written, since after the merge the error would be named as if the file's
    own section held it. Checks that need the rest of the config (ranges, one field against another) are left
    to ``build_config`` after the merge.

    Args:
        prefix: the table's dotted name with a trailing dot (``"quick."``).
        extra: further keys valid at this level, left unchecked (``[quick]``'s ``compare``).

    Raises:
        ValueError: as ``build_config``: a key is unknown (the valid ones are listed), given both flat and in
            its section, a section is not a table, or a value is not of its field's type.
    """
    flat = getattr(cls, "flat_keys", False)
    if flat:
        values = nest_flat_keys(cls, values, prefix)
    if not isinstance(values, Mapping):
        raise ValueError(f"config section {prefix.rstrip('.') or '(top)'} must be a table, got {values!r}")
    valid = {f.name: f for f in fields(cls)}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name in extra:
            continue
        if name not in valid:
            raise ValueError(_unknown_key(prefix, key, [*valid, *extra]))
        default = default_of(valid[name])
        if is_dataclass(default):
            check_keys(type(default), value, prefix if flat else f"{prefix}{name}.")
        else:
            _coerce(valid[name], value, prefix + name)


def _unknown_key(prefix: str, key: str, valid: Iterable[str]) -> str:
    where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
    return f"unknown config key {prefix + key!r} in {where}; valid keys: {', '.join(valid)}"


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
    sections, home = _sections(cls)
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


def _sections(cls: type) -> tuple[dict[str, type], dict[str, str]]:
    """A ``flat_keys`` config's sections (field name -> dataclass) and each leaf's home section."""
    sections = {f.name: type(default_of(f)) for f in fields(cls) if is_dataclass(default_of(f))}
    return sections, {leaf.name: name for name, section in sections.items() for leaf in fields(section)}


def nest_tables(cls: type, values: Any, prefix: str = "") -> Any:
    """``values`` (parsed TOML of a ``cls``) with every known key spelled with ``_`` and each table of a
    ``flat_keys`` config, at any depth, nested (``nest_flat_keys``): one place per value, which an override
    set at ``nested_key`` replaces. A key or value ``cls`` does not know is kept, for ``build_config`` to
    report.

    Raises:
        ValueError: a flat_keys table names an unknown key or gives one both flat and in its section, or a
            key is given both with ``-`` and with ``_``.
    """
    if not isinstance(values, Mapping):
        return values
    if getattr(cls, "flat_keys", False):
        values = nest_flat_keys(cls, values, prefix)
    specs = {f.name: f for f in fields(cls)}
    nested: dict[str, Any] = {}
    for key, value in values.items():
        spec = specs.get(key.replace("-", "_"))
        if spec is None:
            nested[key] = value
            continue
        if spec.name in nested:
            raise ValueError(f"config {prefix}{spec.name} is given twice: with '-' and with '_'")
        default = default_of(spec)
        section = is_dataclass(default) and not getattr(cls, "flat_keys", False)  # flat leaves: one prefix
        nested[spec.name] = (
            nest_tables(type(default), value, f"{prefix}{spec.name}." if section else prefix)
            if is_dataclass(default)
            else value
        )
    return nested


def nested_key(cls: type, key: str) -> str:
    """Where ``nest_tables`` places the dotted ``key`` of a ``cls``: ``-`` read as ``_``, and a flat leaf of a
    ``flat_keys`` config under its section (``emulator.harmonizer_rank`` ->
    ``emulator.stage1.harmonizer_rank``). The walk stops at a part ``cls`` does not know; the rest is kept as
    written, for ``build_config`` to report."""
    node: type | None = cls
    path = []
    for part in (p.replace("-", "_") for p in key.split(".")):
        if node is not None and getattr(node, "flat_keys", False):
            sections, home = _sections(node)
            if part in home:
                path.append(home[part])
                node = sections[home[part]]
        spec = {f.name: f for f in fields(node)}.get(part) if node is not None else None
        path.append(part)
        default = default_of(spec) if spec is not None else None
        node = type(default) if is_dataclass(default) else None
    return ".".join(path)


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


class Spelled(str):
    """Text from a command line (``--set``, ``--setting``) or Flower's run config, which carries any value as
    a string: read as the type of the field it sets (``"3"`` a number, ``"no"`` false). A plain ``str``, as
    a TOML file gives it, is taken as written: ``rounds = "2"`` is refused, as ``rounds = 2.0`` is."""


_SCALARS: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str}
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
_ALLOWED = {
    bool: "true or false (also 1 / 0, yes / no)",
    int: "an integer",
    float: "a number",
    str: 'a string (quote it: "...")',
}
_UNQUOTED = {bool: "true or false", int: "an integer", float: "a number"}


def declared_type(spec: Field) -> type | None:
    """The scalar type a dataclass field declares (``bool``, ``int``, ``float``, ``str``), else None.

    The annotation, not the default's type: ``client_num_cpus: float = 0`` takes 0.5.
    """
    annotation = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", "")
    return _SCALARS.get(annotation)


def parse_typed(value: Any, kind: type, name: str, spelled: bool = True) -> Any:
    """``value`` read as ``kind`` (``bool``, ``int``, ``float`` or ``str``), strictly.

    A value of the right type is kept (an int where a float is meant becomes a float). A string, as Flower's
    run config, node config and message records may carry any value, is parsed: ``"true"`` / ``"1"`` /
    ``"yes"`` and ``"false"`` / ``"0"`` / ``"no"`` (any case) for a bool, an integer or a number literal
    otherwise. For a bool the integers 1 and 0 are accepted too; a bool is never taken for a number.

    Args:
        name: how the message names the value, e.g. ``"config output.tensorboard"``.
        spelled: whether a string may spell a number or a boolean; False for a config file's value, where
            a quoted number is a mistake to point out, not to guess past.

    Raises:
        ValueError: ``"{name}={value!r} must be {what is allowed}"``, one line.
    """
    if kind is str and isinstance(value, str):
        return str(value)  # a plain str: a Spelled one is only on its way in
    if isinstance(value, str) and not spelled and kind in _UNQUOTED:
        raise ValueError(f"{name}={value!r} must be {_UNQUOTED[kind]}, not a string: remove the quotes")
    if kind is bool:
        parsed = _parse_bool(value)
    elif isinstance(value, bool):
        parsed = None
    elif kind is int:  # numbers.Integral: NumPy's integers too, never a float that would be rounded
        parsed = int(value) if isinstance(value, numbers.Integral) else _parse_str(value, int)
    elif kind is float:
        parsed = float(value) if isinstance(value, numbers.Real) else _parse_str(value, float)
    else:
        parsed = None
    if parsed is None:
        raise ValueError(f"{name}={value!r} must be {_ALLOWED.get(kind, kind.__name__)}")
    return parsed


def _parse_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    return None


def _parse_str(value: Any, kind: type) -> Any:
    if not isinstance(value, str):
        return None
    try:
        return kind(value.strip())  # int("1.5") and float("x") fail: nothing is rounded or guessed
    except ValueError:
        return None


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
        item = _SCALARS.get(str(spec.type).removeprefix("tuple[").removesuffix(", ...]"))
        return (
            tuple(_typed(v, item, f"config {name}[{i}]") for i, v in enumerate(value))
            if item
            else tuple(value)
        )
    kind = declared_type(spec) or (type(default) if isinstance(default, bool | int | float | str) else None)
    return _typed(value, kind, f"config {name}") if kind is not None else value


def _typed(value: Any, kind: type, name: str) -> Any:
    return parse_typed(value, kind, name, spelled=isinstance(value, Spelled))


def parse_value(raw: str) -> Any:
    """A TOML value (``0.25``, ``true``, ``[1, 2]``); a string (``"x"``, or anything that is not valid TOML)
    as ``Spelled``: typed on a command line, it may spell the field's type (``--set output.tensorboard=no``).
    """
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return Spelled(value) if isinstance(value, str) else value


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
