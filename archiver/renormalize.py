"""``archiver renormalize``: rebuild the normalized rows from ``raw`` (see :mod:`archiver.rebuild`).

What it rebuilds: the IDs given, every response (``--all``), or the responses archived
since a time (``--since``). ``--all`` and ``--since`` save their position in
``archive_meta`` (row ``renormalize``) with every batch; the same command run again after
a crash or a stop resumes after the last batch committed (a run in another normalize
mode starts afresh), and the row is removed when the walk ends. ``--normalize`` with a
mode other than the archive's switches the archive to it first (every batch committed
from then on, the daemon's too, is written in the new mode) and needs ``--all``, which
then converts what was written before.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select, true
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver.errors import ConfigError
from archiver.ids import validate_response_id
from archiver.projection import (
    MODES,
    archive_mode_sync,
    read_meta_sync,
    record_projection_sync,
    switch_mode_sync,
)
from archiver.rebuild import Position, Rebuilder, RebuildReport, StopFlag, retried
from archiver.schema import archive_meta, responses
from archiver.transactions import statement_at_a_time

POSITION_KEY = "renormalize"
IDS_PER_WALK = 500
SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
SINCE_FORMS = (
    "an ISO 8601 date or time (2026-11-24, 2026-11-24T08:00, 2026-11-24T08:00:00+01:00; "
    "UTC when it has no offset) or an age: a number and s, m, h, d or w (90m, 36h, 7d, 2w)"
)
_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)


def parse_since(value: str, now: datetime) -> datetime:
    """The instant ``--since VALUE`` means, in UTC.

    Raises:
        ConfigError: ``value`` is neither an ISO 8601 date/time nor an age, or is in the future.
    """
    text = value.strip()
    age = _AGE.fullmatch(text)
    try:
        if age:
            return now - timedelta(seconds=float(age[1]) * SINCE_UNITS[age[2].lower()])
        when = datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        when = when.astimezone(UTC)
    except ValueError:
        raise ConfigError(f"--since {value!r} is not a time: use {SINCE_FORMS}") from None
    except OverflowError:  # an age or an offset past the years 1 to 9999
        raise ConfigError(f"--since {value!r} is outside the calendar (years 1 to 9999)") from None
    if when > now:
        raise ConfigError(f"--since {value!r} is in the future")
    return when


def check_scope(ids: Sequence[str], *, everything: bool, since: str | None) -> None:
    """Exactly one scope, and valid IDs and time.

    Raises:
        ConfigError: not exactly one of IDs, ``--all``, ``--since``; a bad ``--since``.
        InvalidResponseId: an ID that cannot be one.
    """
    if sum((bool(ids), everything, since is not None)) != 1:
        raise ConfigError("say what to renormalize: IDs, --all, or --since TIME (exactly one of them)")
    for rid in ids:
        validate_response_id(rid)
    if since is not None:
        parse_since(since, datetime.now(UTC))


@dataclass(slots=True)
class RenormalizeResult:
    """What ``renormalize`` did: the rebuild's counts, and what the summary line adds to them."""

    report: RebuildReport
    mode: str
    switched_from: str | None = None
    """The archive's mode before ``--normalize`` changed it."""
    missing: tuple[str, ...] = ()
    """IDs given that are not archived."""
    resumed_after: str | None = None
    """The ID an unfinished renormalize of the same scope had reached."""
    replaced: str | None = None
    """The scope of an unfinished renormalize of another scope, started afresh instead."""

    def lines(self) -> tuple[list[str], str]:
        """(notes for stderr, the summary line for stdout)."""
        notes = [f"archiver: {rid} not renormalized: not archived" for rid in self.missing]
        notes += self.report.failure_notes("renormalized")
        if self.switched_from is not None:
            notes.insert(
                0, f"archiver: the archive's normalize mode is now {self.mode} (was {self.switched_from})"
            )
        if self.resumed_after is not None:
            notes.insert(0, f"archiver: resuming the unfinished renormalize after {self.resumed_after}")
        if self.replaced is not None:
            notes.insert(0, f"archiver: an unfinished renormalize {self.replaced} is replaced by this one")
        if self.report.stopped:
            notes.append(f"archiver: stopped by {self.report.stopped}: run the same command again to finish")
        return notes, self.report.summary_line("renormalized") + f" (mode {self.mode})"

    def as_dict(self) -> dict[str, Any]:
        """The result for JSON output."""
        return {
            **self.report.as_dict(),
            "mode": self.mode,
            "switched_from": self.switched_from,
            "missing": list(self.missing),
            "resumed_after": self.resumed_after,
        }


async def renormalize(
    engine: AsyncEngine,
    *,
    ids: Sequence[str] = (),
    everything: bool = False,
    since: str | None = None,
    mode: str | None = None,
    batch_size: int = 200,
    max_batch_bytes: int = 4 << 20,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[RebuildReport], None] | None = None,
    stop: StopFlag | None = None,
    now: datetime | None = None,
) -> RenormalizeResult:
    """Rebuild the normalized rows of ``ids``, of everything, or of what was archived ``since``.

    Args:
        engine: the open database.
        ids / everything / since: the scope (exactly one).
        mode: ``--normalize`` (None: the archive's mode). Another mode than the
            archive's switches it, and needs ``everything``.
        batch_size / max_batch_bytes: see :class:`archiver.rebuild.Rebuilder`.
        on_start: called with how many responses are in scope, before the first batch.
        on_batch: called with the report after every batch.
        stop: end after the batch in flight once set (the position stays saved).
        now: the clock ``since`` is judged by (tests).

    Raises:
        ConfigError: not exactly one scope; a bad ``since``; a mode switch without ``--all``.
    """
    check_scope(ids, everything=everything, since=since)
    if mode is not None and mode not in MODES:
        raise ConfigError(f"--normalize must be one of {', '.join(MODES)}, not {mode!r}")
    since_at = parse_since(since, now or datetime.now(UTC)) if since is not None else None
    # Every step here is retried like the walk's batches (a restart at the start or at the
    # end is no reason to stop): each is idempotent.
    current, saved_text = await retried(partial(_mode_and_position, engine), stop)
    result = RenormalizeResult(RebuildReport(), current)
    if mode is not None and mode != current:
        if not everything:
            raise ConfigError(
                f"--normalize {mode} changes this archive's mode (now {current}), which rebuilds "
                "every response: use --all"
            )
        await retried(partial(_in_transaction, engine, partial(switch_mode_sync, mode=mode)), stop)
        result.mode, result.switched_from = mode, current

    def rebuilder(position: Position | None) -> Rebuilder:
        return Rebuilder(
            engine,
            batch_size=batch_size,
            max_batch_bytes=max_batch_bytes,
            on_batch=on_batch,
            position=position,
            report=result.report,
            stop=stop,
        )

    if ids:
        wanted = sorted(set(ids))
        found = await retried(partial(_archived, engine, wanted), stop)
        result.missing = tuple(rid for rid in dict.fromkeys(ids) if rid not in found)
        result.report.total = len(found)
        if on_start is not None:
            on_start(len(found))
        walker = rebuilder(None)
        for start in range(0, len(wanted), IDS_PER_WALK):
            await walker.walk(responses.c.id.in_(wanted[start : start + IDS_PER_WALK]))
        return result

    state: dict[str, Any] = {"scope": "all"} if everything else {"scope": "since", "since": since}
    # The mode the committed batches were written in: a run in another mode starts afresh
    # (resumed, the responses before its position would keep the other mode's rows).
    state["mode"] = result.mode
    if since_at is not None:
        state["from"] = since_at.isoformat()
    after = ""
    saved = _loads(saved_text)
    if saved is not None:
        if all(saved.get(k) == v for k, v in state.items() if k != "from"):
            state, after = saved, str(saved.get("after") or "")
            result.resumed_after = after or None
        else:
            scope = f"--since {saved.get('since')}" if saved.get("scope") == "since" else "--all"
            result.replaced = f"{scope} (mode {saved.get('mode') or 'unrecorded'})"
    where: ColumnElement[bool] = true()
    if "from" in state:
        where = responses.c.archived_at >= datetime.fromisoformat(state["from"])
    result.report.total = await retried(partial(_count, engine, where, after), stop)
    if on_start is not None:
        on_start(result.report.total)
    await rebuilder(Position(POSITION_KEY, state)).walk(where, after)
    if result.report.stopped:
        return result  # the position stays: the same command resumes there
    await retried(partial(_in_transaction, engine, partial(_finish_sync, everything=everything)), stop)
    return result


def _finish_sync(conn: Connection, *, everything: bool) -> None:
    """The walk is over: forget its position; after ``--all``, record the projection version."""
    conn.execute(delete(archive_meta).where(archive_meta.c.name == POSITION_KEY))
    if everything:  # every response's rows are now this version's
        record_projection_sync(conn)


async def _mode_and_position(engine: AsyncEngine) -> tuple[str, str | None]:
    async with statement_at_a_time(engine) as conn:
        return await conn.run_sync(archive_mode_sync), await conn.run_sync(read_meta_sync, POSITION_KEY)


async def _in_transaction(engine: AsyncEngine, work: Callable[[Connection], None]) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(work)


def _loads(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def _archived(engine: AsyncEngine, ids: list[str]) -> set[str]:
    found: set[str] = set()
    async with statement_at_a_time(engine) as conn:
        for start in range(0, len(ids), IDS_PER_WALK):
            chunk = ids[start : start + IDS_PER_WALK]
            found.update(
                (await conn.execute(select(responses.c.id).where(responses.c.id.in_(chunk)))).scalars()
            )
    return found


async def _count(engine: AsyncEngine, where: ColumnElement[bool], after: str) -> int:
    async with statement_at_a_time(engine) as conn:
        stmt = select(func.count()).select_from(responses).where(where, responses.c.id > after)
        return int((await conn.execute(stmt)).scalar() or 0)
