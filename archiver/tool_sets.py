"""The ``tools`` of each response, stored once per distinct value.

Every Response echoes its request's ``tools`` array, and an application sends the same
one on every request, so an archive would hold the same array (function JSON schemas:
often several KB) once per response. ``tool_sets`` keeps each distinct value once, under
a compact integer ``id`` that ``responses.tool_set_id`` names, and the ``sha256`` of its
canonical JSON (:func:`tools_digest`), unique, by which a writer finds it.

:class:`ToolSetIds` resolves values to ids for one writer: from an in-process cache, and
on a miss with ``INSERT ... ON CONFLICT (sha256) DO NOTHING`` and a ``SELECT`` in the
writer's own transaction, which is correct with several writers sharing one PostgreSQL
database (the second one's INSERT waits for the first one's commit, then does nothing,
and its SELECT sees the row). Rows of ``tool_sets`` are never updated; ``archiver
compact`` deletes the ones no response names (:mod:`archiver.orphans`) and counts each
such sweep in ``archive_meta`` row :data:`SWEPT_KEY`, which :class:`ToolSetIds` reads
before it resolves, so a cached id is used only while no sweep has run since.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from archiver.jsontext import json_bytes
from archiver.normalize import item_digest
from archiver.schema import conflict_insert, tool_sets

__all__ = ["SWEPT_KEY", "ToolSetIds", "tools_digest"]

SWEPT_KEY = "tool_sets_swept"
"""``archive_meta`` row counting the sweeps that deleted tool sets (:mod:`archiver.orphans`)."""
_SWEPT_SQL = f"SELECT value FROM archive_meta WHERE name = '{SWEPT_KEY}'"

_IN_CHUNK = 500
MAX_CACHED = 10_000
"""Ids a writer remembers (the most recently used): a bound on its memory however many
distinct arrays a provider sends; a forgotten one costs a SELECT when it comes back."""

_EXACT_INTS = 2**63


def tools_digest(tools: Any) -> str:
    """SHA-256 (hex) of a ``tools`` value's canonical JSON: keys sorted, no whitespace, and
    floats with an integral value (within 64 bits) written as integers.

    Neither key order nor such a float's spelling survives PostgreSQL's ``jsonb``
    (``{"b":1,"a":1e18,"c":-0.0}`` comes back as ``{"a": 1000000000000000000, "b": 1,
    "c": 0.0}``), and migration 0015 digests the values ``jsonb`` kept: with both
    normalized, a value it moved is found again by the writer that archives the same
    array from a body. The stored value is the one given, unchanged.

    The copy that rewrites such floats is made only when the canonical JSON has a token
    that could be one (``1.0``, ``1e18``): the writer digests every response's tools, and
    walking a 14 KB array of function schemas in Python costs ~200 us a response.
    """
    canonical = json_bytes(tools, sort_keys=True)
    if _POINT_ZERO.search(canonical) is None and _BIG_EXPONENT.search(canonical) is None:
        return hashlib.sha256(canonical).hexdigest()  # no integral float: the walk changes nothing
    return item_digest(_integral_floats_as_ints(tools))


# Where an integral float's JSON can be: ``1.0``, ``-0.0`` (shorter forms have no ``.0``),
# or, from 1e16 on, an exponent (``1e16``, ``1.5e20``; the standard library's ``1e+16``).
# Strings match them too, which only costs the walk. Two searches: one pattern with both
# alternatives took five times as long on 14 KB of schemas.
_POINT_ZERO = re.compile(rb"\.0")
_BIG_EXPONENT = re.compile(rb"e[1-9+]")


def _integral_floats_as_ints(value: Any) -> Any:
    """A copy of a JSON value with integral floats as ints, walked without recursion (a
    hostile body nests hundreds of levels deep)."""

    def scalar(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer() and abs(v) < _EXACT_INTS:
            return int(v)
        return v

    if not isinstance(value, dict | list):
        return scalar(value)
    copy: dict[str, Any] | list[Any] = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any]] = [(value, copy)]
    while stack:
        source, target = stack.pop()
        pairs = source.items() if isinstance(source, dict) else enumerate(source)
        for key, v in pairs:
            if isinstance(v, dict | list):
                new: Any = {} if isinstance(v, dict) else []
                stack.append((v, new))
            else:
                new = scalar(v)
            if isinstance(target, dict):
                target[key] = new
            else:
                target.append(new)
    return copy


class ToolSetIds:
    """Resolves ``tools`` values to ``tool_sets.id`` for one writer, with a cache.

    A transaction may insert new tool sets and then roll back: their ids are kept apart
    (*unconfirmed*) until the caller says the transaction committed (:meth:`confirm`);
    the next transaction starts by forgetting them (:meth:`begin`), so a rolled-back id is
    never used again. At most :data:`MAX_CACHED` confirmed ids are kept, and all are
    forgotten when a sweep has deleted tool sets since they were resolved.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._unconfirmed: dict[str, int] = {}
        self._swept: str | None = None
        """The ``SWEPT_KEY`` value the cached ids were resolved under."""

    def begin(self) -> None:
        """Start a transaction: forget ids no commit confirmed."""
        self._unconfirmed.clear()

    def confirm(self) -> None:
        """The transaction committed: its new ids join the cache."""
        self._ids.update(self._unconfirmed)
        self._unconfirmed.clear()
        excess = len(self._ids) - MAX_CACHED
        if excess > 0:  # forget the least recently used: dicts keep insertion order
            for digest in list(itertools.islice(self._ids, excess)):
                del self._ids[digest]

    def resolve_sync(self, conn: Connection, values: Sequence[Any]) -> list[int | None]:
        """The ``tool_sets.id`` of each value (None for None), inserting the new ones.

        Runs in the transaction open on ``conn``, which must hold the ``archive_changes``
        counter lock (the writers take it first), as a sweep does: then no sweep commits
        between the check of ``SWEPT_KEY`` and the commit. New values are inserted in
        digest order, so two writers inserting overlapping sets wait for each other in
        one order.
        """
        digests = [None if value is None else tools_digest(value) for value in values]
        if any(digest is not None for digest in digests):
            self._follow_sweeps(conn)
        missing: dict[str, Any] = {}
        for digest, value in zip(digests, values, strict=True):
            if digest is not None and self._known(digest) is None:
                missing.setdefault(digest, value)
        if missing:
            self._unconfirmed.update(self._insert(conn, missing))
        return [None if digest is None else self._known(digest) for digest in digests]

    def _follow_sweeps(self, conn: Connection) -> None:
        """Forget the cached ids if a sweep has deleted tool sets since they were resolved."""
        swept = conn.exec_driver_sql(_SWEPT_SQL).scalar()  # a fifth of what a select() costs
        if swept != self._swept:
            self._ids.clear()
            self._swept = swept

    def _known(self, digest: str) -> int | None:
        found = self._ids.pop(digest, None)
        if found is None:
            return self._unconfirmed.get(digest)
        self._ids[digest] = found  # now the most recently used
        return found

    def _insert(self, conn: Connection, values: dict[str, Any]) -> dict[str, int]:
        statement = conflict_insert(conn, tool_sets).on_conflict_do_nothing(index_elements=["sha256"])
        now = datetime.now(UTC)
        digests = sorted(values)
        conn.execute(statement, [{"sha256": d, "tools": values[d], "first_seen_at": now} for d in digests])
        ids: dict[str, int] = {}
        for start in range(0, len(digests), _IN_CHUNK):
            chunk = digests[start : start + _IN_CHUNK]
            found = conn.execute(
                select(tool_sets.c.sha256, tool_sets.c.id).where(tool_sets.c.sha256.in_(chunk))
            )
            ids.update((str(sha), int(id_)) for sha, id_ in found)
        assert len(ids) == len(digests), "every tool set is in tool_sets after its insert"
        return ids
