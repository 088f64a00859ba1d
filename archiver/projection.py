"""What an archive keeps of each body besides ``raw``: its normalize mode, kept in ``archive_meta``.

``raw`` is the source of truth; the normalized rows are a projection of it that
``archiver renormalize`` can rebuild at any time. How much of it an archive keeps is
its **normalize mode**, one per archive:

- ``full`` (the default): the ``responses`` row and every child table;
- ``summary``: the ``responses`` row (its typed columns, usage and billing included) and
  the usage child rows (``billing_details`` from ``usage.x_details``, ``tool_usage`` from
  ``usage.x_tools`` / ``tool_usage``), which are what billing reconciliation reads. No
  output items, content parts or tool-call details: those stay in ``raw``.

Input items are not a projection of ``raw`` (they come from another endpoint and cannot
be rebuilt from it), so both modes keep them, and neither renormalize nor compact ever
deletes a response's list (compact removes only stored items no response lists any more:
:mod:`archiver.orphans`).

The mode is recorded in the archive (row ``normalize`` of ``archive_meta``; no row means
``full``, what every archive written before held), so a run with the other value cannot
silently mix the two: see :func:`settle_mode_sync`. Writers read it inside each write
transaction after taking the ``archive_changes`` counter lock, and a mode switch takes the
same lock (:func:`switch_mode_sync`), so every batch committed after a switch is written in
the new mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.engine import Connection

from archiver.errors import ConfigError
from archiver.schema import CHILD_TABLES, archive_meta, conflict_insert, responses
from archiver.settings import NORMALIZE_MODES

MODES = NORMALIZE_MODES
DEFAULT_MODE = "full"
MODE_KEY = "normalize"
SUMMARY_TABLES = frozenset({"billing_details", "tool_usage"})
"""Child tables a ``summary`` archive keeps (input items are not child tables: both modes keep them)."""


PROJECTION_TABLES = CHILD_TABLES
"""The child tables built from ``raw``: what renormalize deletes and rebuilds."""


PROJECTION_VERSION = 3
"""What :func:`archiver.normalize.normalize` makes of a body. Bump it when a release changes
that (new columns, new child tables, fields mapped differently): archives whose rows were
built by an older version are then told to run ``archiver renormalize --all`` (``archiver
status`` and a warning when ``archiver run`` starts), which records the new version.

1: rows with whole-element JSON copies (before migration 0010); 2: nothing stored twice
(issue 17.2: ``extra`` holds only unmapped fields, opaque payloads only in ``raw``); 3:
integers beyond 64 bits keep every digit in JSON columns (version 2 held the nearest double:
orjson's reading, see :mod:`archiver.jsontext`)."""
PROJECTION_KEY = "projection"


class NormalizeModeMismatch(ConfigError):
    """The archive is normalized in another mode than the one asked for."""


def keep_children(children: Mapping[str, list[Any]], mode: str) -> Mapping[str, list[Any]]:
    """The child rows an archive in ``mode`` keeps (input items always)."""
    if mode == DEFAULT_MODE:
        return children
    return {name: rows for name, rows in children.items() if name in SUMMARY_TABLES}


def read_meta_sync(conn: Connection, name: str) -> str | None:
    """The value of one ``archive_meta`` row, or None."""
    value = conn.execute(select(archive_meta.c.value).where(archive_meta.c.name == name)).scalar()
    return None if value is None else str(value)


def write_meta_sync(conn: Connection, name: str, value: str | None) -> None:
    """Set (or, with None, remove) one ``archive_meta`` row.

    An upsert: two transactions setting the same row at once (daemons starting together
    on a new archive, two renormalize runs) both succeed, the later commit's value stays.
    A delete and an insert failed the second on PostgreSQL (``pk_archive_meta``).
    """
    if value is None:
        conn.execute(delete(archive_meta).where(archive_meta.c.name == name))
        return
    statement = conflict_insert(conn, archive_meta).values(name=name, value=value)
    conn.execute(
        statement.on_conflict_do_update(index_elements=["name"], set_={"value": statement.excluded.value})
    )


def archive_mode_sync(conn: Connection) -> str:
    """The archive's normalize mode (``full`` when none is recorded)."""
    return read_meta_sync(conn, MODE_KEY) or DEFAULT_MODE


def lock_writers_sync(conn: Connection) -> None:
    """Wait for every write transaction in progress, and hold the next ones until commit.

    Writers take the ``archive_changes`` row lock before they read the mode (see the module
    docstring); on SQLite ``BEGIN IMMEDIATE`` already serializes them.
    """
    conn.execute(text("UPDATE archive_changes SET seq = seq WHERE name = 'archive'"))


def switch_mode_sync(conn: Connection, mode: str) -> None:
    """Record ``mode`` as the archive's; every batch committed after this one uses it."""
    lock_writers_sync(conn)
    write_meta_sync(conn, MODE_KEY, mode)


def settle_mode_sync(conn: Connection, wanted: str | None) -> str:
    """The mode to write this archive in, given ``--normalize`` (None: not given).

    Not given: the archive's mode. Given on an archive with no responses yet: recorded,
    so later runs follow it. Given and different from the mode of an archive that holds
    responses: refused, because the archive would then hold both kinds of rows.

    Raises:
        NormalizeModeMismatch: ``wanted`` differs from the archive's mode.
    """
    current = archive_mode_sync(conn)
    if wanted is None or wanted == current:
        return current
    if conn.execute(select(responses.c.id).limit(1)).first() is not None:
        raise NormalizeModeMismatch(
            f"this archive is normalized {current!r}, not {wanted!r}; to convert it, run "
            f"`archiver renormalize --all --normalize {wanted}` (online, beside a running "
            f"daemon), or leave --normalize / ARCHIVER_NORMALIZE unset to use the archive's mode"
        )
    switch_mode_sync(conn, wanted)
    return wanted


def projection_version_sync(conn: Connection) -> int | None:
    """The version of the oldest normalized rows in the archive; None for an archive without
    responses (nothing in it was built by any version, whatever a migration recorded).

    An archive with responses and no record was written before versions were recorded: 1.
    """
    if conn.execute(select(responses.c.id).limit(1)).first() is None:
        return None
    recorded = read_meta_sync(conn, PROJECTION_KEY)
    return int(recorded) if recorded is not None and recorded.isdigit() else 1


def record_projection_sync(conn: Connection, *, only_if_new: bool = False) -> None:
    """Record that every response's rows are built by this version (:data:`PROJECTION_VERSION`).

    ``only_if_new``: only in an archive with no responses (what it will hold is built by
    this version; migration 0013 recorded the version of its day in a new archive).
    """
    if only_if_new and conn.execute(select(responses.c.id).limit(1)).first() is not None:
        return
    if read_meta_sync(conn, PROJECTION_KEY) != str(PROJECTION_VERSION):
        write_meta_sync(conn, PROJECTION_KEY, str(PROJECTION_VERSION))


def archive_facts_sync(conn: Connection) -> dict[str, Any]:
    """What ``archiver status`` shows about the archive's rows: mode, projection, unfinished work."""
    version = projection_version_sync(conn)
    return {
        "normalize": archive_mode_sync(conn),
        "projection_version": version,
        "projection_current": PROJECTION_VERSION,
        "renormalize_needed": version is not None and version < PROJECTION_VERSION,
        "renormalize_unfinished": read_meta_sync(conn, "renormalize"),
    }


def archive_lines(facts: dict[str, Any]) -> list[str]:
    """The status lines of :func:`archive_facts_sync`."""
    lines = [f"normalize mode: {facts['normalize']}"]
    if facts["renormalize_needed"]:
        lines.append(
            f"normalized rows: some were built by an older archiver (projection "
            f"{facts['projection_version']}, now {facts['projection_current']}): run `archiver "
            "renormalize --all`"
        )
    if facts["renormalize_unfinished"]:
        lines.append("renormalize: unfinished (run the same command again to finish it)")
    return lines
