"""The queue table and every operation on it: enqueue, claim, heartbeat, release, retry, counts.

Times in the queue are unix seconds (float) read from the database clock, so that several
hosts with skewed clocks agree on when a lease expired. Every statement is parameterized.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    bindparam,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from archiver.db import now_sql
from archiver.fleet_rate import archive_rate_limits  # noqa: F401  (registers the table, as archive_queue)
from archiver.follow import archive_follow  # noqa: F401  (registers the table, as archive_queue)
from archiver.holds import held_sources
from archiver.schema import metadata
from archiver.settings import DEFAULT_SOURCE, SOURCE_NAME
from archiver.transactions import statement_at_a_time
from archiver.workers import (
    archive_workers,  # noqa: F401  (registers the table, as archive_queue)
    troubled_workers,
)

QUEUE_STATES = ("pending", "in_flight", "archived", "not_found", "failed")
"""Every state a queue row can be in (contract)."""
TERMINAL_STATES = ("archived", "not_found", "failed")
ERROR_STATES = ("failed", "not_found", "pending")
"""The states ``status`` lists errors of by default, in this order: what needs action first."""
# Errors are listed by state in this order (then newest first), so the failed rows an
# operator must act on are never hidden behind not_found ones.
_ERROR_RANK = {state: rank for rank, state in enumerate(ERROR_STATES)}

PENDING_BY_SOURCE_INDEX = "ix_archive_queue_pending_source_next_attempt_at"
PENDING_INDEX = "ix_archive_queue_pending_next_attempt_at"
PENDING_ENQUEUED_INDEX = "ix_archive_queue_pending_enqueued_at"
IN_FLIGHT_INDEX = "ix_archive_queue_in_flight_lease_expires_at"
ERRORS_INDEX = "ix_archive_queue_failed_not_found_updated_at"

archive_queue = Table(
    "archive_queue",
    metadata,
    Column("id", String(256), primary_key=True),
    Column("state", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    # Leases that expired on this row (its worker died, hung or could not write); they
    # give the claim's attempt back, and --max-attempts of them end the row failed.
    Column("lease_expiries", Integer, nullable=False, server_default="0"),
    Column("polls", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Float, nullable=False),
    Column("enqueued_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("lease_owner", String(128)),
    Column("lease_token", String(36)),
    Column("lease_expires_at", Float),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    # A bad body: at most outcomes.FORENSIC_PREFIX_BYTES of it, with the whole body's
    # length and SHA-256 (all three NULL when there is no body).
    Column("last_body", LargeBinary),
    Column("last_body_bytes", BigInteger),
    Column("last_body_sha256", Text),
    Column("response_created_at", Float),
    # The source (provider account) the ID is fetched with; see archiver/sources.py.
    Column("source", String(64), nullable=False, server_default="default"),
    # Partial indexes (migration 0014): each holds only the rows of the states its queries
    # search, so the archived rows (nearly all of a grown queue) are in none of them, and
    # every hot query names its state as a literal (SQLite uses a partial index only when
    # the query's WHERE holds the index's own term, never a bound parameter).
    # (PostgreSQL gets the same predicates from declare_postgresql_predicates.)
    *(
        Index(name, *columns, sqlite_where=text(where))
        for name, columns, where in (
            (PENDING_BY_SOURCE_INDEX, ("source", "next_attempt_at"), "state = 'pending'"),
            (PENDING_INDEX, ("next_attempt_at",), "state = 'pending'"),
            (PENDING_ENQUEUED_INDEX, ("enqueued_at",), "state = 'pending'"),
            (IN_FLIGHT_INDEX, ("lease_expires_at",), "state = 'in_flight'"),
            (ERRORS_INDEX, ("state", "updated_at"), "state = 'failed' OR state = 'not_found'"),
        )
    ),
    # The primary key is the table on SQLite: no second copy of every ID in an index.
    sqlite_with_rowid=False,
    comment="One row per response ID to archive; see docs/schema.md",
)


def declare_postgresql_predicates() -> None:
    """Give the queue's partial indexes their predicate on PostgreSQL too (``postgresql_where``).

    Not declared at import: that keyword imports SQLAlchemy's PostgreSQL dialect, which
    every command on SQLite would pay for (~20 ms, see tests/unit/test_startup.py). The
    migrations call this on PostgreSQL (and so does the schema comparison).
    """
    for index in archive_queue.indexes:
        where = index.dialect_options["sqlite"]["where"]
        if where is not None:
            index.dialect_options["postgresql"]["where"] = where


MAX_ERROR_CHARS = 2000
"""Longest ``last_error`` archiver writes; ``status`` shows no more of one (a hand-edited row)."""

ENQUEUE_CHUNK = 20_000
RECOVER_EVERY_S = 1.0
"""How often claims sweep expired leases while the queue has a backlog."""


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed queue row: fetch ``response_id`` while holding ``lease_token``."""

    response_id: str
    attempt: int
    polls: int
    previous_status_code: int | None
    lease_token: str
    created_at: float | None = None

    @classmethod
    def from_row(cls, row: Any, lease_token: str) -> Job:
        """Build from a RETURNING row ``(id, attempts, polls, last_status_code, created, ...)``.

        ``created`` is the response's creation time when the enqueuer knew it, else
        when it was enqueued (the response existed at least since then).
        """
        return cls(row[0], int(row[1]), int(row[2]), row[3], lease_token, row[4])


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """Where one ID stands in the queue (for ``show`` and ``retry`` to explain themselves)."""

    response_id: str
    state: str
    attempts: int
    last_status_code: int | None
    last_error: str | None

    @classmethod
    def from_row(cls, row: Any) -> QueueEntry:
        """Build from ``(id, state, attempts, last_status_code, last_error)``, state and
        error as read (``QueueStore.state_read``, ``error_read``: bytes on SQLite)."""
        error = None if row[4] is None else stored_text(row[4])
        return cls(row[0], stored_text(row[1]), int(row[2]), row[3], error)


@dataclass(frozen=True, slots=True)
class EnqueueCounts:
    """How one enqueue call went."""

    queued: int = 0
    already_known: int = 0
    requeued: int = 0


class QueueStore:
    """Queue operations on one engine. Safe to use from many processes at once."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.now = now_sql(self.dialect)
        # Text columns another program may write, read as bytes on SQLite, which keeps
        # whatever it was given in a TEXT column (a BLOB, a number, bytes that are not
        # UTF-8, which the driver refuses to read as text): see :func:`stored_text`.
        self.state_read = self._read_cut("state")
        self.source_read = self._read_cut("source")
        self.id_read = self._read_cut("id")
        self.error_read = self._read_cut("last_error")
        self._last_recovery = -RECOVER_EVERY_S

    # --- enqueue -----------------------------------------------------------------

    async def enqueue(
        self,
        response_ids: Sequence[str],
        *,
        refetch: bool = False,
        created_at: Sequence[float | None] | None = None,
        sources: Sequence[str] | None = None,
    ) -> EnqueueCounts:
        """Add IDs as ``pending``; known IDs are left alone unless ``refetch``.

        Args:
            response_ids: validated IDs (duplicates allowed; each is queued once).
            refetch: move known IDs in a terminal state back to ``pending``.
            created_at: per ID, the response's creation time (unix seconds) if known.
            sources: per ID, its source name (default: ``default``). A known ID keeps
                the source it was queued with.
        """
        queued = requeued = 0
        for start in range(0, len(response_ids), ENQUEUE_CHUNK):
            chunk = list(response_ids[start : start + ENQUEUE_CHUNK])
            created = list(created_at[start : start + ENQUEUE_CHUNK]) if created_at else None
            if created is not None and all(c is None for c in created):
                created = None
            chunk_sources = list(sources[start : start + ENQUEUE_CHUNK]) if sources else None
            async with self.engine.begin() as conn:
                counts = await self.enqueue_on(
                    conn, chunk, refetch=refetch, created_at=created, sources=chunk_sources
                )
            queued += counts.queued
            requeued += counts.requeued
        # A line whose ID was known before, or seen earlier in the same input, is "already known".
        return EnqueueCounts(queued=queued, already_known=len(response_ids) - queued, requeued=requeued)

    async def enqueue_on(
        self,
        conn: AsyncConnection,
        response_ids: list[str],
        *,
        refetch: bool = False,
        created_at: list[float | None] | None = None,
        sources: list[str] | None = None,
    ) -> EnqueueCounts:
        """:meth:`enqueue` of one chunk (up to ``ENQUEUE_CHUNK`` IDs) in the caller's transaction.

        ``archiver enqueue --follow`` saves its file position in the same transaction.
        """
        queued = await self._insert_chunk(conn, response_ids, created_at, sources)
        requeued = await self._requeue(conn, response_ids, TERMINAL_STATES) if refetch else 0
        return EnqueueCounts(queued=queued, already_known=len(response_ids) - queued, requeued=requeued)

    async def _insert_chunk(
        self,
        conn: AsyncConnection,
        ids: list[str],
        created: list[float | None] | None,
        sources: list[str] | None = None,
    ) -> int:
        cols = "id, state, attempts, polls, next_attempt_at, enqueued_at, updated_at, "
        cols += "response_created_at, source"
        if sources is not None and all(s == DEFAULT_SOURCE for s in sources):
            sources = None
        # In key order, a chunk's inserts walk the primary key's B-tree once, left to right:
        # random IDs (UUIDs) into a 1.5M-row WITHOUT ROWID queue took 2.3x as long unsorted.
        # The order within a chunk means nothing: its rows share one due time.
        order = sorted(range(len(ids)), key=ids.__getitem__)
        ids = [ids[n] for n in order]
        created = [created[n] for n in order] if created is not None else None
        sources = [sources[n] for n in order] if sources is not None else None
        if self.dialect == "postgresql":
            sql = (
                f"INSERT INTO archive_queue ({cols}) "
                "SELECT u.id, 'pending', 0, 0, n, n, n, u.created, coalesce(u.source, 'default') "
                "FROM unnest(CAST(:ids AS text[]), CAST(:created AS float8[]), CAST(:sources AS text[])) "
                "AS u(id, created, source), "
                f"(SELECT {self.now} AS n) AS clock "
                "ON CONFLICT (id) DO NOTHING"
            )
            result = await conn.execute(
                text(sql),
                {
                    "ids": ids,
                    "created": created or [None] * len(ids),
                    "sources": sources or [DEFAULT_SOURCE] * len(ids),
                },
            )
        elif created is None and sources is None:
            # One JSON array parameter per chunk: no variable limit, one statement.
            sql = (
                f"INSERT INTO archive_queue ({cols}) "
                f"SELECT value, 'pending', 0, 0, {self.now}, {self.now}, {self.now}, NULL, 'default' "
                "FROM json_each(:ids) WHERE true ON CONFLICT (id) DO NOTHING"
            )
            result = await conn.execute(text(sql), {"ids": orjson.dumps(ids).decode()})
        else:
            sql = (
                f"INSERT INTO archive_queue ({cols}) "
                f"SELECT value ->> 0, 'pending', 0, 0, {self.now}, {self.now}, {self.now}, value ->> 1, "
                "coalesce(value ->> 2, 'default') "
                "FROM json_each(:rows) WHERE true ON CONFLICT (id) DO NOTHING"
            )
            rows = orjson.dumps(
                [
                    [i, created[n] if created else None, sources[n] if sources else None]
                    for n, i in enumerate(ids)
                ]
            ).decode()
            result = await conn.execute(text(sql), {"rows": rows})
        return max(result.rowcount, 0)

    async def enqueue_due_now(self, response_ids: Sequence[str], source: str = "default") -> EnqueueCounts:
        """Queue IDs the provider says just finished (a webhook), due now.

        New IDs are queued; ``pending`` ones are made due now; one whose archived snapshot
        is still ``queued``/``in_progress`` (its row ``archived`` or ``failed`` after
        ``--max-polls``) goes back to ``pending``, due now, attempts and polls reset.
        Rows in flight, and terminal snapshots, are left alone. One transaction.

        Returns:
            ``queued`` new rows, ``requeued`` rows moved back to pending, and
            ``already_known`` the rest (a pending row made due now counts here).
        """
        ids = list(dict.fromkeys(response_ids))
        if not ids:
            return EnqueueCounts()
        unfinished = (
            "EXISTS (SELECT 1 FROM responses AS r WHERE r.id = archive_queue.id "
            "AND r.status IN ('queued', 'in_progress'))"
        )
        due_now = text(
            f"UPDATE archive_queue SET next_attempt_at = {self.now}, updated_at = {self.now} "
            f"WHERE id IN :ids AND state = 'pending' AND next_attempt_at > {self.now}"
        ).bindparams(bindparam("ids", expanding=True))
        async with self.engine.begin() as conn:
            queued = await self._insert_chunk(conn, ids, None, [source] * len(ids))
            await conn.execute(due_now, {"ids": ids})
            requeued = await self._requeue(conn, ids, TERMINAL_STATES, where=unfinished)
        return EnqueueCounts(queued=queued, already_known=len(ids) - queued, requeued=requeued)

    async def _requeue(
        self, conn: AsyncConnection, ids: list[str], from_states: Sequence[str], *, where: str = "true"
    ) -> int:
        stmt = text(
            f"UPDATE archive_queue SET state = 'pending', attempts = 0, polls = 0, lease_expiries = 0, "
            f"next_attempt_at = {self.now}, updated_at = {self.now}, last_error = NULL, "
            "last_body = NULL, last_body_bytes = NULL, last_body_sha256 = NULL, "
            "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL "
            f"WHERE id IN :ids AND state IN :states AND {where}"
        ).bindparams(bindparam("ids", expanding=True), bindparam("states", expanding=True))
        total = 0
        for start in range(0, len(ids), 500):
            result = await conn.execute(stmt, {"ids": ids[start : start + 500], "states": list(from_states)})
            total += max(result.rowcount, 0)
        return total

    # --- claim, heartbeat, release -----------------------------------------------------

    def _read_cut(self, expression: str) -> str:
        """A text column (or a cut of it) as read: bytes on SQLite (see :func:`stored_text`)."""
        return f"CAST({expression} AS BLOB)" if self.dialect == "sqlite" else expression

    async def claim_batch(
        self, owner: str, limit: int, lease_seconds: float, max_attempts: int, source: str | None = None
    ) -> list[Job]:
        """Lease up to ``limit`` due rows to ``owner`` and count an attempt on each.

        ``source``: only rows of this source (None: any; rows of every source are
        recovered from expired leases either way).

        Rows whose lease expired go back to ``pending`` first, their attempt given back
        (or to ``failed`` when their lease has now expired ``max_attempts`` times), so a
        crashed worker's rows are finished by others.
        That sweep runs at most every ``RECOVER_EVERY_S`` while claims come back full,
        and whenever a claim comes back short: with a backlog an expired row waits at most
        that long, and a nearly drained queue always finds it.
        """
        if limit <= 0:
            return []
        token = uuid.uuid4().hex
        # Statement at a time: the claim is hot, and on SQLite a transaction around it
        # would hold the file's write lock across event-loop round trips in a busy process
        # (the writer waits on that lock). Every statement here is correct on its own.
        async with statement_at_a_time(self.engine) as conn:
            swept = time.monotonic() - self._last_recovery >= RECOVER_EVERY_S
            if swept:
                await self._recover_expired(conn, max_attempts)
            jobs = await self._claim(conn, owner, token, limit, lease_seconds, source)
            if len(jobs) < limit and not swept and await self._recover_expired(conn, max_attempts):
                jobs += await self._claim(conn, owner, token, limit - len(jobs), lease_seconds, source)
        return jobs

    async def _claim(
        self,
        conn: AsyncConnection,
        owner: str,
        token: str,
        limit: int,
        lease_seconds: float,
        source: str | None,
    ) -> list[Job]:
        of_source = "" if source is None else "AND source = :source "
        if self.dialect == "postgresql":
            # The CTE is a fence: the planner cannot lock or update more rows than LIMIT.
            sql = (
                "WITH due AS (SELECT id FROM archive_queue "
                f"WHERE state = 'pending' AND next_attempt_at <= {self.now} {of_source}"
                "ORDER BY next_attempt_at LIMIT :limit FOR UPDATE SKIP LOCKED) "
                "UPDATE archive_queue AS q SET state = 'in_flight', attempts = q.attempts + 1, "
                f"lease_owner = :owner, lease_token = :token, "
                f"lease_expires_at = {self.now} + :lease, updated_at = {self.now} "
                "FROM due WHERE q.id = due.id "
                "RETURNING q.id, q.attempts, q.polls, q.last_status_code, "
                "coalesce(q.response_created_at, q.enqueued_at), q.next_attempt_at"
            )
        else:
            sql = (
                "UPDATE archive_queue SET state = 'in_flight', attempts = attempts + 1, "
                f"lease_owner = :owner, lease_token = :token, "
                f"lease_expires_at = {self.now} + :lease, updated_at = {self.now} "
                "WHERE id IN (SELECT id FROM archive_queue "
                f"WHERE state = 'pending' AND next_attempt_at <= {self.now} {of_source}"
                "ORDER BY next_attempt_at LIMIT :limit) "
                # The ID as bytes (see readable_ids): read as text, one ID another program
                # wrote that is not UTF-8 failed the whole claim after it had committed.
                "RETURNING CAST(id AS BLOB), attempts, polls, last_status_code, "
                "coalesce(response_created_at, enqueued_at), next_attempt_at, typeof(id)"
            )
        result = await conn.execute(
            text(sql),
            {"limit": limit, "owner": owner, "token": token, "lease": lease_seconds, "source": source},
        )
        rows: list[Any] = list(result.fetchall())
        if self.dialect != "postgresql":
            rows, unreadable = readable_ids(rows)
            if unreadable:
                await self._fail_unreadable(conn, token, unreadable)
        # RETURNING comes in no promised order (on SQLite: the primary key's, by ID); the
        # fetchers take the jobs in this order, so the longest due go first.
        return [Job.from_row(row, token) for row in sorted(rows, key=lambda row: row[5])]

    async def _fail_unreadable(self, conn: AsyncConnection, token: str, raw_ids: list[bytes]) -> None:
        """End claimed rows whose ID is not text (SQLite) ``failed``: no request can name it."""
        await conn.execute(
            text(
                "UPDATE archive_queue SET state = 'failed', lease_owner = NULL, lease_token = NULL, "
                f"lease_expires_at = NULL, updated_at = {self.now}, last_error = :why "
                "WHERE lease_token = :token AND CAST(id AS BLOB) = :raw"
            ),
            [{"token": token, "raw": raw, "why": UNREADABLE_ID} for raw in raw_ids],
        )

    async def _recover_expired(self, conn: AsyncConnection, max_attempts: int) -> int:
        """Finish rows whose lease expired; returns how many went back to ``pending``.

        An expired lease is the worker's failure, not the ID's (killed, hung, or unable
        to write: disk full, a read-only file), so the claim's attempt is given back and
        ``lease_expiries`` counts it instead; ``max_attempts`` expiries end the row
        ``failed``, so a body that kills every worker that fetches it cannot loop for ever.
        """
        self._last_recovery = time.monotonic()
        expired = f"state = 'in_flight' AND lease_expires_at <= {self.now}"
        clear = f"lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = {self.now}"
        given_back = "attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"
        await conn.execute(
            text(
                f"UPDATE archive_queue SET state = 'failed', {clear}, {given_back}, "
                "lease_expiries = lease_expiries + 1, "
                "last_error = 'lease expired ' || (lease_expiries + 1) || "
                "' times (each worker holding this ID died, hung or could not write)' "
                f"WHERE {expired} AND lease_expiries + 1 >= :max"
            ),
            {"max": max_attempts},
        )
        result = await conn.execute(
            text(
                f"UPDATE archive_queue SET state = 'pending', {clear}, {given_back}, "
                f"lease_expiries = lease_expiries + 1, next_attempt_at = {self.now}, "
                "last_error = 'lease expired (worker died, hung or could not write); attempt given back' "
                f"WHERE {expired}"
            )
        )
        return max(result.rowcount, 0)

    async def extend_leases(self, tokens: Iterable[str], lease_seconds: float) -> int:
        """Heartbeat: push back the expiry of rows still leased under these tokens."""
        token_list = list(tokens)
        if not token_list:
            return 0
        stmt = text(
            f"UPDATE archive_queue SET lease_expires_at = {self.now} + :lease "
            "WHERE state = 'in_flight' AND lease_token IN :tokens"
        ).bindparams(bindparam("tokens", expanding=True))
        async with self.engine.begin() as conn:
            result = await conn.execute(stmt, {"lease": lease_seconds, "tokens": token_list})
        return max(result.rowcount, 0)

    async def refund_attempts(self, spent: Mapping[str, int], owner: str | None = None) -> int:
        """Give back attempts that were not the IDs' fault (ID -> how many), fenced like
        every queue update: to a ``pending`` row (nobody holds it), or to one in flight
        under a lease of ``owner`` (the caller's own claims, the ones it is registering
        included). A row another worker holds now (the caller lost its lease) keeps its
        attempts.

        Returns:
            how many rows got attempts back.
        """
        params: list[dict[str, Any]] = [
            {"id": rid, "n": n, "owner": owner} for rid, n in spent.items() if n > 0
        ]
        if not params:
            return 0
        decrement = (
            "UPDATE archive_queue SET attempts = CASE WHEN attempts > :n THEN attempts - :n ELSE 0 END "
            "WHERE id = :id AND "
        )
        mine = "(state = 'pending' OR (state = 'in_flight' AND lease_owner = :owner))"
        async with self.engine.begin() as conn:
            result = await conn.execute(text(decrement + mine), params)
        return max(result.rowcount, 0)

    async def release(self, jobs: Iterable[Job], reason: str) -> int:
        """Give leased rows back as ``pending`` and due now, without spending their attempt.

        ``reason`` is for the caller's log line; the row keeps its last real error.
        """
        params = [{"id": j.response_id, "token": j.lease_token} for j in jobs]
        if not params:
            return 0
        async with self.engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE archive_queue SET state = 'pending', "
                    "attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, "
                    "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, "
                    f"next_attempt_at = {self.now}, updated_at = {self.now} "
                    "WHERE id = :id AND lease_token = :token AND state = 'in_flight'"
                ),
                params,
            )
        return len(params)

    # --- operator commands ---------------------------------------------------------------

    async def retry(self, states: Sequence[str], response_ids: Sequence[str] | None = None) -> int:
        """Move rows in ``states`` (all, or only ``response_ids``) back to ``pending``."""
        if response_ids:
            async with self.engine.begin() as conn:
                return await self._requeue(conn, list(response_ids), states)
        moved = 0
        async with self.engine.begin() as conn:
            # A literal state per statement: failed and not_found rows are found in their
            # partial index (a bound state would make SQLite scan the whole queue).
            for state in dict.fromkeys(states):
                result = await conn.execute(
                    text(
                        "UPDATE archive_queue SET state = 'pending', attempts = 0, polls = 0, "
                        f"lease_expiries = 0, next_attempt_at = {self.now}, updated_at = {self.now}, "
                        "last_error = NULL, last_body = NULL, last_body_bytes = NULL, "
                        f"last_body_sha256 = NULL WHERE {state_is(state)}"
                    )
                )
                moved += max(result.rowcount, 0)
        return moved

    async def entries(self, response_ids: Sequence[str]) -> dict[str, QueueEntry]:
        """The queue rows of these IDs (IDs not in the queue are absent)."""
        stmt = text(
            f"SELECT id, {self.state_read}, attempts, last_status_code, {self.error_read} FROM archive_queue "
            "WHERE id IN :ids"
        ).bindparams(bindparam("ids", expanding=True))
        found: dict[str, QueueEntry] = {}
        ids = list(dict.fromkeys(response_ids))
        async with statement_at_a_time(self.engine) as conn:
            for start in range(0, len(ids), 500):
                for row in (await conn.execute(stmt, {"ids": ids[start : start + 500]})).fetchall():
                    found[row[0]] = QueueEntry.from_row(row)
        return found

    async def counts(self, *, archived: bool = True) -> dict[str, int]:
        """Rows per state, in one snapshot; every state name is present.

        Every state but ``archived`` is counted from its partial index (cost grows with
        the rows in that state). ``archived`` has no index: counting it reads the whole
        queue, so ``archived=False`` leaves it out of the answer (see the README decision
        "Queue indexes"). That read also counts rows in a state archiver does not know
        (written by another application), which no claim takes: they are in the answer.
        """
        indexed = [s for s in QUEUE_STATES if s != "archived"]
        columns = ", ".join(f"(SELECT count(*) FROM archive_queue WHERE {state_is(s)})" for s in indexed)
        if archived:
            # One read of the whole queue, in the same statement (one snapshot): archived
            # rows, and all rows; the difference is rows in states archiver does not know.
            sql = (
                f"SELECT {columns}, whole.archived, whole.total FROM (SELECT "
                "sum(CASE WHEN state = 'archived' THEN 1 ELSE 0 END) AS archived, count(*) AS total "
                "FROM archive_queue) AS whole"
            )
        else:
            sql = f"SELECT {columns}"
        async with statement_at_a_time(self.engine) as conn:
            row = (await conn.execute(text(sql))).one()
            counts = {state: int(n or 0) for state, n in zip(indexed, row, strict=False)}
            if archived:
                counts["archived"] = int(row[len(indexed)] or 0)
                if int(row[len(indexed) + 1]) > sum(counts.values()):
                    counts.update(await self._unknown_states(conn))
        return {**{s: counts[s] for s in QUEUE_STATES if s in counts}, **counts}

    async def _unknown_states(self, conn: AsyncConnection) -> dict[str, int]:
        """Rows per state archiver does not know (another application's): a read of the whole
        queue, made only when a count found such rows."""
        known = " AND ".join(f"NOT {state_is(s)}" for s in QUEUE_STATES)
        result = await conn.execute(
            text(f"SELECT {self.state_read}, count(*) FROM archive_queue WHERE {known} GROUP BY state")
        )
        unknown: dict[str, int] = {}
        for state, n in result.fetchall():
            name = stored_text(state)  # 42 and '42' are two groups of one name
            unknown[name] = unknown.get(name, 0) + int(n)
        return unknown

    async def counts_by_source(self) -> dict[str, dict[str, int]]:
        """Rows per state of each source that has rows; every state name is present.

        Reads the whole queue (``status``); :meth:`waiting_by_source` reads only indexes.
        """
        counts: dict[str, dict[str, int]] = {}
        async with statement_at_a_time(self.engine) as conn:
            result = await conn.execute(
                text(
                    f"SELECT {self.source_read}, {self.state_read}, count(*) FROM archive_queue "
                    "GROUP BY source, state ORDER BY source"
                )
            )
            for source, state, n in result.fetchall():
                of_source = counts.setdefault(stored_text(source), dict.fromkeys(QUEUE_STATES, 0))
                name = stored_text(state)
                of_source[name] = of_source.get(name, 0) + int(n)
        return counts

    async def waiting_by_source(self) -> dict[str, int]:
        """Rows waiting (``pending`` + ``in_flight``) per source that has any, from the partial indexes."""
        waiting: dict[str, int] = {}
        async with statement_at_a_time(self.engine) as conn:
            result = await conn.execute(
                text(
                    f"SELECT {self.source_read}, count(*) FROM archive_queue WHERE state = 'pending' "
                    f"GROUP BY source UNION ALL SELECT {self.source_read}, count(*) FROM archive_queue "
                    "WHERE state = 'in_flight' GROUP BY source"
                )
            )
            for source, n in result.fetchall():
                name = stored_text(source)
                waiting[name] = waiting.get(name, 0) + int(n)
        return waiting

    async def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest ``pending`` row was enqueued (None: nothing pending)."""
        oldest = await self._scalar(
            f"SELECT {self.now} - min(enqueued_at) FROM archive_queue WHERE state = 'pending'"
        )
        return round(float(oldest), 3) if oldest is not None else None

    async def expired_leases(self) -> int:
        """``in_flight`` rows whose lease has expired (not yet recovered by a claim)."""
        expired = await self._scalar(
            f"SELECT count(*) FROM archive_queue WHERE state = 'in_flight' AND lease_expires_at <= {self.now}"
        )
        return int(expired or 0)

    async def _scalar(self, sql: str) -> Any:
        async with statement_at_a_time(self.engine) as conn:
            return (await conn.execute(text(sql))).scalar()

    async def due_summary(self, horizon_s: float, source: str | None = None) -> tuple[int, float | None]:
        """What ``run --once`` still has to wait for.

        Returns:
            (rows due within ``horizon_s``, seconds until the next one is due). A row is
            due when it is ``pending`` and its ``next_attempt_at`` comes, or when it is
            ``in_flight`` and its lease expires (its worker may have died: the queue is
            not drained while any row is in flight anywhere). With ``source``, only
            that source's rows count.
        """
        of_source = "" if source is None else " AND source = :source"
        # One part per state, each a range of its partial index.
        async with statement_at_a_time(self.engine) as conn:
            row = (
                await conn.execute(
                    text(
                        f"SELECT count(*), min(due_at) - {self.now} FROM ("
                        "SELECT next_attempt_at AS due_at FROM archive_queue "
                        f"WHERE state = 'pending' AND next_attempt_at <= {self.now} + :h{of_source} "
                        "UNION ALL SELECT lease_expires_at FROM archive_queue "
                        f"WHERE state = 'in_flight' AND lease_expires_at <= {self.now} + :h{of_source}"
                        ") AS waiting"
                    ),
                    {"h": horizon_s, "source": source},
                )
            ).one()
        return int(row[0]), (float(row[1]) if row[1] is not None else None)

    async def expiry_counts(
        self, retention_s: float, warn_within_s: float = 86400.0, source: str | None = None
    ) -> tuple[int, int]:
        """(pending rows within ``warn_within_s`` of expiry, pending rows already past it).

        With ``source``, only that source's rows count. ``in_flight`` rows count as
        pending. The rows are read through the partial indexes of the two states: the
        cost grows with the rows waiting, never with the archived ones.

        A row's age is counted from the response's creation time when the enqueuer
        gave it, else from when it was enqueued (a lower bound of its true age).
        """
        expires = f"coalesce(response_created_at, enqueued_at) + :retention - {self.now}"
        of_source = "" if source is None else " AND source = :source"
        waiting = " UNION ALL ".join(
            f"SELECT {expires} AS left_s FROM archive_queue WHERE {state_is(state)}{of_source}"
            for state in ("pending", "in_flight")
        )
        async with statement_at_a_time(self.engine) as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT sum(CASE WHEN left_s > 0 AND left_s <= :warn THEN 1 ELSE 0 END), "
                        f"sum(CASE WHEN left_s <= 0 THEN 1 ELSE 0 END) FROM ({waiting}) AS waiting"
                    ),
                    {"retention": retention_s, "warn": warn_within_s, "source": source},
                )
            ).one()
        return int(row[0] or 0), int(row[1] or 0)

    async def status_details(
        self,
        recent_errors: int = 10,
        retention_s: float | None = None,
        error_states: Sequence[str] | None = None,
        served_sources: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """Counts, oldest pending age, expired leases, expiry risk, the most recent errors and
        the live workers that cannot fetch (``workers``, see :mod:`archiver.workers`).

        Args:
            recent_errors: how many rows with an error to list (0: none, and no count).
            retention_s: the provider's retention, for the expiry counts.
            error_states: list errors of rows in these states (default ``ERROR_STATES``):
                ``failed`` first, then ``not_found``, then ``pending``, newest first within
                each. ``error_rows`` counts every row that matches.

        A recent error carries ``body_bytes`` (the whole bad body's length) when a body
        was kept for it. ``sources`` maps each source with rows to its counts per state;
        ``unserved_sources`` lists the sources not in ``served_sources`` (when given) that
        have rows waiting (``pending`` or ``in_flight``): no worker of this config fetches them.
        ``held_sources`` maps each source a live worker holds (endpoint paused, key
        refused) to why, since when and its next probe (see :mod:`archiver.holds`).
        """
        states = list(error_states or ERROR_STATES)
        # One read of the whole queue (per source and state); the rest reads partial indexes.
        by_source = await self.counts_by_source()
        counts = dict.fromkeys(QUEUE_STATES, 0)
        for per_state in by_source.values():
            for state, n in per_state.items():
                counts[state] = counts.get(state, 0) + n
        unserved = unserved_sources(
            {name: c.get("pending", 0) + c.get("in_flight", 0) for name, c in by_source.items()},
            served_sources,
        )
        near, past = await self.expiry_counts(retention_s) if retention_s else (None, None)
        oldest = await self.oldest_pending_age()
        expired = await self.expired_leases()
        errors, error_rows = await self.recent_errors(states, recent_errors)
        async with statement_at_a_time(self.engine) as conn:
            workers = await troubled_workers(conn)
            held = await held_sources(conn)
        return {
            "states": counts,
            "total": sum(counts.values()),
            # Rows no claim, retry or recovery takes (another version's or an INSERT's state).
            "unknown_states": {s: counts[s] for s in sorted(counts) if s not in QUEUE_STATES},
            "oldest_pending_age_s": oldest,
            "expired_leases": expired,
            "retention_days": round(retention_s / 86400, 3) if retention_s else None,
            "pending_near_expiry": near,
            "pending_past_retention": past,
            "recent_errors": [_recent_error(r) for r in errors],
            "error_states": states,
            "error_rows": error_rows,
            "workers": [w.as_dict() for w in workers],
            "sources": by_source,
            "unserved_sources": unserved,
            "held_sources": {
                h.source: h.as_dict(by_source.get(h.source, {}).get("pending", 0)) for h in held
            },
        }

    async def recent_errors(self, states: Sequence[str], limit: int) -> tuple[list[Any], int | None]:
        """The ``limit`` most recent errors of rows in ``states`` (failed first, then
        not_found, then pending, newest first within each) and how many rows have one
        (None when ``limit`` is 0).

        One query per state, its name a literal: failed and not_found rows are read from
        their partial index newest first, so a listing reads about ``limit`` rows.
        """
        if limit <= 0:
            return [], None
        errors: list[Any] = []
        error_rows = 0
        async with statement_at_a_time(self.engine) as conn:
            for state in dict.fromkeys(states):
                with_error = f"FROM archive_queue WHERE {state_is(state)} AND last_error IS NOT NULL"
                errors += (
                    await conn.execute(
                        text(
                            # At most what archiver writes: a row edited by hand may hold more.
                            f"SELECT {self.id_read}, state, attempts, last_status_code, "
                            f"{self._read_cut('substr(last_error, 1, :chars)')}, "
                            "CASE WHEN last_body IS NULL THEN NULL "
                            "ELSE coalesce(last_body_bytes, length(last_body)) END, updated_at "
                            f"{with_error} ORDER BY updated_at DESC LIMIT :n"
                        ),
                        {"n": limit, "chars": MAX_ERROR_CHARS},
                    )
                ).fetchall()
                error_rows += int((await conn.execute(text(f"SELECT count(*) {with_error}"))).scalar() or 0)
        # Each state's rows came newest first; a stable sort keeps that (a text updated_at too).
        errors.sort(key=lambda row: _ERROR_RANK.get(row[1], len(_ERROR_RANK)))
        return errors[:limit], error_rows


UNREADABLE_ID = (
    "the ID is not text (another program wrote bytes that are not UTF-8, or a BLOB, into "
    "archive_queue.id): no request can name it"
)


def readable_ids(rows: Iterable[Any]) -> tuple[list[tuple[Any, ...]], list[bytes]]:
    """Split SQLite claim rows (the ID as bytes first, its ``typeof`` last) into rows with
    the ID as text and the raw IDs that are not UTF-8 text."""
    readable: list[tuple[Any, ...]] = []
    unreadable: list[bytes] = []
    for row in rows:
        raw = bytes(row[0])
        try:
            if row[-1] != "text":
                raise ValueError(row[-1])
            readable.append((raw.decode("utf-8"), *row[1:-1]))
        except ValueError:  # UnicodeDecodeError too
            unreadable.append(raw)
    return readable, unreadable


def stored_text(value: object) -> str:
    """A queue state or source as read (``QueueStore.state_read``, ``source_read``): bytes
    that are not UTF-8 are shown as ``\\xff`` escapes, never refused, so one row another
    program wrote cannot make ``run``, ``check``, ``status``, ``retry`` or ``show`` fail for
    the whole queue."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def state_is(state: str) -> str:
    """``state = '<state>'``: a state as a SQL literal, so the planner may use the state's
    partial index (SQLite never does for a bound parameter).

    Raises:
        ValueError: not a queue state (nothing else is ever put in SQL text).
    """
    if state not in QUEUE_STATES:
        raise ValueError(f"not a queue state: {state!r}")
    return f"state = '{state}'"


def unserved_sources(waiting: Mapping[str, int], served: Iterable[str] | None) -> dict[str, int]:
    """Sources not in ``served`` with rows waiting (``pending`` + ``in_flight``: ``waiting``
    maps a source to that count, as :meth:`QueueStore.waiting_by_source`), with the count.

    Empty when ``served`` is None (the serving config is unknown).
    """
    if served is None:
        return {}
    known = set(served)
    return {name: n for name, n in waiting.items() if name not in known and n}


def unserved_line(source: str, waiting: int) -> str:
    """What ``status`` and ``check`` say about rows of a source no config serves."""
    rows = "1 row waits" if waiting == 1 else f"{waiting:,} rows wait"
    if not SOURCE_NAME.match(source):  # another program's INSERT: no config can name it
        return f"source {shown_name(source)} is not a source name: {rows} for it (set their source by hand)"
    return f"source {source!r} is not configured: {rows} for it (add [sources.{source}] to the config file)"


def shown_name(name: str) -> str:
    """A state or source name as the output shows it: rows come from any writer, so a name
    that is not short printable text is shown quoted and cut (never a terminal escape)."""
    if name.isprintable() and " " not in name and len(name) <= 32:
        return name
    return repr(name[:32] + ("..." if len(name) > 32 else ""))


def _recent_error(row: Any) -> dict[str, Any]:
    error = {
        "response_id": stored_text(row[0]),
        "state": row[1],
        "attempts": row[2],
        "status_code": row[3],
        # SQLite keeps whatever a hand edit put in a TEXT column, bytes too.
        "error": stored_text(row[4]) if isinstance(row[4], bytes) else row[4],
    }
    if row[5] is not None:
        error["body_bytes"] = int(row[5])
    return error
