"""Typed columns from JSON values, and ``extra`` for what no column takes.

The converters (``as_text``, ``as_bigint``, ...) return a value of the column's type, or
None when the JSON value has another type (``bool`` is not an integer). :class:`Columns`
names the typed columns one kind of JSON object fills; :func:`fill_row` sets them from an
object and puts every other field, and every value a column could not take, in the row's
``extra`` (opaque payloads as their stubs). :func:`take` and :func:`remainder` do the same
for objects whose columns are spread over a row by hand (usage and its details).
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from archiver.jsontext import json_text
from archiver.opaque import OPAQUE_MIN_CHARS, is_opaque, without_opaque

Row = dict[str, Any]
Rows = dict[str, list[Row]]
"""Table name -> rows."""

# --- coercion into typed columns: the value, or None when it has another JSON type ---

_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def as_text(value: Any) -> str | None:
    """A string, else None."""
    return value if type(value) is str else None


def as_bool(value: Any) -> bool | None:
    """A boolean, else None."""
    return value if type(value) is bool else None


def _int_in(value: Any, low: int, high: int) -> int | None:
    # type() rather than isinstance(): bool is an int subclass and must not count as one.
    kind = type(value)
    if kind is int:
        return value if low <= value <= high else None
    if kind is float and value.is_integer() and low <= value <= high:
        return int(value)
    return None


def as_bigint(value: Any) -> int | None:
    """An integer (or an integral float) that fits 64 bits, else None."""
    return _int_in(value, _INT64_MIN, _INT64_MAX)


def as_int32(value: Any) -> int | None:
    """An integer (or an integral float) that fits 32 bits, else None."""
    return _int_in(value, _INT32_MIN, _INT32_MAX)


def as_float(value: Any) -> float | None:
    """A number as a float (None for an integer too large for one), else None."""
    kind = type(value)
    if kind is float:
        return float(value)
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            return None
    return None


def as_timestamp(value: Any) -> datetime | None:
    """Unix seconds (int or float) as an aware UTC datetime."""
    kind = type(value)
    if kind is int or kind is float:
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def as_json_text(value: Any) -> str | None:
    """A string as given; any other JSON value as its compact JSON text."""
    if value is None or type(value) is str:
        return value
    return json_text(value)


# --- the typed columns of a JSON object, and extra for the rest ---

Convert = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Columns:
    """The typed columns one kind of JSON object fills.

    Attributes:
        fields: (column, key, converter) for each typed column a key of the object fills.
        mapped: the keys a column takes (so they stay out of ``extra``).
    """

    fields: tuple[tuple[str, str, Convert], ...]
    mapped: frozenset[str]

    @classmethod
    def of(cls, *fields: tuple[str, str, Convert], also: Iterable[str] = ()) -> Columns:
        """:class:`Columns` of ``fields``; ``also``: keys a column of another kind takes."""
        return cls(fields, frozenset(key for _, key, _ in fields) | frozenset(also))


def fill_row(row: Row, element: dict[str, Any], columns: Columns, spread: Iterable[str] = ()) -> None:
    """Set ``row``'s typed columns from ``element`` and ``row["extra"]`` to the rest.

    ``spread`` are the keys whose value went into rows of
    another table. A value a column cannot take (another JSON type, an opaque payload)
    stays in ``extra``; ``extra`` is None when nothing is left.
    """
    get = element.get
    mapped = columns.mapped
    kept: list[str] | None = None
    for column, key, convert in columns.fields:
        value = get(key)
        if value is None:
            row[column] = None
            continue
        typed = convert(value)
        if typed is None or (type(typed) is str and len(typed) >= OPAQUE_MIN_CHARS and is_opaque(typed)):
            row[column] = None
            if kept is None:
                kept = []
            kept.append(key)
        else:
            row[column] = typed
    extra: Row | None = None
    for key, value in element.items():
        if key in mapped and (kept is None or key not in kept):
            continue
        if key in spread:
            continue
        if extra is None:
            extra = {}
        extra[key] = without_opaque(value)
    row["extra"] = extra


def take(obj: dict[str, Any], key: str, convert: Convert, taken: dict[str, Any]) -> Any:
    """``convert(obj[key])``, recording in ``taken`` that the key's value is in a column."""
    value = obj.get(key)
    if value is None:
        if key in obj:
            taken[key] = True  # JSON null: the column's NULL says it
        return None
    typed = convert(value)
    if typed is not None:
        taken[key] = True
    return typed


def remainder(obj: dict[str, Any], taken: dict[str, Any]) -> Row:
    """``obj`` without what ``taken`` says went to columns (``True``: the key; a dict: within
    the key's object). Objects left empty are left out."""
    rest: Row = {}
    for key, value in obj.items():
        spec = taken.get(key)
        if spec is True:
            continue
        if spec is not None and type(value) is dict:
            sub = remainder(value, spec)
            if sub:
                rest[key] = sub
            continue
        rest[key] = without_opaque(value)
    return rest


def element_extra(element: Any) -> Any:
    """``extra`` of an array element that is not an object: the value itself."""
    return without_opaque(element)


def element_row(row: Row, element: Any, columns: Columns, spread: Iterable[str] = ()) -> Row:
    """Typed columns and ``extra`` of one array element (any JSON value)."""
    if type(element) is not dict:
        for column, _, _ in columns.fields:
            row[column] = None
        row["extra"] = element_extra(element)
        return row
    fill_row(row, element, columns, spread)
    return row


def url_row(row: Row, element: Any, columns: Columns) -> Row:
    """An element given as a bare URL string or as an object with ``url``."""
    if type(element) is str and not is_opaque(element):
        for column, _, _ in columns.fields:
            row[column] = None
        row["url"] = element
        row["extra"] = None
        return row
    return element_row(row, element, columns)
