"""Apply a function to every string of a parsed JSON value, and the lone-surrogate scrub.

:func:`map_strings` serves the scrubs that must reach every string of a body or row: the
lone UTF-16 surrogates that text columns cannot store (:func:`scrub_surrogates`), the
secrets that must not leave the process, the NUL characters PostgreSQL refuses. It walks
with a stack of its own, so the deepest body a parse accepts does not exhaust Python's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def map_strings(value: Any, fix: Callable[[str], str]) -> Any:
    """A parsed JSON value with ``fix`` applied to every string in it, keys included.

    Walked with a stack of its own, not Python's: a body may nest 512 levels
    (``jsontext.MAX_NESTING``), and a recursion of two frames a level (a function and its
    comprehension) ran out of stack there (the lone surrogate and secret scrubs)."""
    todo: list[tuple[Any, Any]] = []
    root = _mapped_or_queued(value, fix, todo)
    while todo:
        source, target = todo.pop()
        if type(target) is dict:
            for key, item in source.items():
                target[fix(key) if isinstance(key, str) else key] = _mapped_or_queued(item, fix, todo)
        else:
            target.extend(_mapped_or_queued(item, fix, todo) for item in source)
    return root


def _mapped_or_queued(value: Any, fix: Callable[[str], str], todo: list[tuple[Any, Any]]) -> Any:
    """``value`` fixed when a string; for a dict or list, an empty one that ``todo`` fills."""
    if isinstance(value, str):
        return fix(value)
    if isinstance(value, dict | list):
        target: dict[Any, Any] | list[Any] = {} if isinstance(value, dict) else []
        todo.append((value, target))
        return target
    return value


def _fix_str(value: str) -> str:
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def scrub_surrogates(value: Any) -> Any:
    """Replace lone surrogates in every string of a parsed JSON value with U+FFFD."""
    return map_strings(value, _fix_str)
