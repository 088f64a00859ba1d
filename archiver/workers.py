"""Worker self-reports: one ``archive_workers`` row per running worker.

A worker whose endpoint is down (circuit breaker open) or whose key is refused leaves
its IDs ``pending`` and waits; from the queue alone that looks like a stall. Each worker
records its state here, refreshed while it runs, so ``archiver check`` and
``archiver status`` can say why. Times are database-clock unix seconds, as in the queue.

A row not refreshed for a while belongs to a worker that died without saying goodbye:
it is ignored (and overwritten when a worker with that owner name starts again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Float, Table, Text, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from archiver.db import now_sql
from archiver.redaction import redact
from archiver.schema import metadata
from archiver.transactions import statement_at_a_time

if TYPE_CHECKING:
    from archiver.holds import Hold

WORKER_STATES = ("ok", "paused", "refused")
"""``ok``: fetching; ``paused``: circuit breaker open, the endpoint is down or wrong;
``refused``: the provider refuses the key (401/403, billing)."""
MAX_DETAIL_CHARS = 500
HEALTH_REFRESH_S = 60.0
"""A running worker refreshes its row this often (and on every change of state)."""
DEFAULT_MAX_AGE_S = 300.0
"""A row older than this is a dead worker's: the live ones refresh theirs more often."""

archive_workers = Table(
    "archive_workers",
    metadata,
    Column("owner", Text, primary_key=True),
    Column("state", Text, nullable=False),
    Column("detail", Text),
    Column("base_url", Text),
    # When the current state began: updated_at moves on every refresh, this does not.
    Column("state_since", Float, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # Why the worker holds its source's IDs (NULL while fetching): see archiver/holds.py.
    Column("source", Text),
    Column("hold_kind", Text),
    Column("hold_error", Text),
    Column("next_probe_at", Float),
    comment="One row per running worker: is its endpoint usable; see archiver/workers.py",
)


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """A worker's last word about itself, with ages by the database clock."""

    owner: str
    state: str
    detail: str | None
    base_url: str | None
    state_age_s: float
    updated_age_s: float

    @classmethod
    def from_row(cls, row: Any) -> WorkerReport:
        """Build from ``(owner, state, detail, base_url, state_age_s, updated_age_s)``."""
        return cls(row[0], row[1], row[2], row[3], max(float(row[4]), 0.0), max(float(row[5]), 0.0))

    def as_dict(self) -> dict[str, Any]:
        """The fields ``status --json`` shows under ``workers``."""
        return {
            "owner": self.owner,
            "state": self.state,
            "detail": self.detail,
            "updated_age_s": round(self.updated_age_s, 3),
        }

    def problem(self) -> str:
        """One line for ``archiver check``."""
        from archiver.health import format_duration  # health imports this module

        where = f" {self.base_url}" if self.base_url else ""
        if self.state == "paused":
            what = f"endpoint{where} paused"
        elif self.state == "refused":
            what = f"key refused by{where or ' the endpoint'}"
        else:
            what = f"worker {self.state}"
        detail = f": {self.detail}" if self.detail else ""
        return f"{what} on {self.owner}{detail} (since {format_duration(self.state_age_s)})"


async def record_worker(
    engine: AsyncEngine,
    owner: str,
    *,
    state: str,
    detail: str | None,
    base_url: str | None,
    source: str | None = None,
    hold: Hold | None = None,
) -> None:
    """Insert or refresh this worker's row; ``updated_at`` is the database's now.

    Call it when the state changes and periodically while running (a row not refreshed
    within ``max_age_s`` of :func:`worker_problems` counts as a dead worker's).

    Args:
        engine: the open database.
        owner: the worker's name (``Settings.owner``, host:pid).
        state: one of :data:`WORKER_STATES`.
        detail: why, for a state that is not ``ok`` (redacted and shortened here).
        base_url: the endpoint, as shown to users (no credentials).
        source: the source the worker serves.
        hold: why it holds the source's IDs (:mod:`archiver.holds`); None while fetching,
            which clears the last one. Its error text is redacted and shortened here.

    Raises:
        ValueError: ``state`` is not one of :data:`WORKER_STATES`.
    """
    if state not in WORKER_STATES:
        raise ValueError(f"worker state must be one of {', '.join(WORKER_STATES)}, not {state!r}")
    now = now_sql(engine.dialect.name)
    sql = (
        "INSERT INTO archive_workers (owner, state, detail, base_url, state_since, started_at, updated_at, "
        "source, hold_kind, hold_error, next_probe_at) "
        f"VALUES (:owner, :state, :detail, :base_url, {now}, {now}, {now}, "
        f":source, :kind, :error, {now} + :probe_in) "
        "ON CONFLICT (owner) DO UPDATE SET "
        "state_since = CASE WHEN archive_workers.state = excluded.state "
        "THEN archive_workers.state_since ELSE excluded.state_since END, "
        "state = excluded.state, detail = excluded.detail, base_url = excluded.base_url, "
        "updated_at = excluded.updated_at, source = excluded.source, hold_kind = excluded.hold_kind, "
        "hold_error = excluded.hold_error, next_probe_at = excluded.next_probe_at"
    )
    values = {
        "owner": owner,
        "state": state,
        "detail": _shown(detail),
        "base_url": base_url,
        "source": source,
        "kind": hold.kind if hold else None,
        "error": _shown(hold.error) if hold else None,
        "probe_in": hold.probe_in_s if hold else None,
    }
    async with engine.begin() as conn:
        await conn.execute(text(sql), values)


def _shown(detail: str | None) -> str | None:
    """Redacted (server text may echo a secret) and at most ``MAX_DETAIL_CHARS`` long."""
    if detail is None:
        return None
    detail = redact(detail)
    return detail if len(detail) <= MAX_DETAIL_CHARS else detail[: MAX_DETAIL_CHARS - 1] + "…"


async def forget_worker(engine: AsyncEngine, owner: str) -> None:
    """Remove this worker's row (on a clean exit)."""
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM archive_workers WHERE owner = :owner"), {"owner": owner})


async def troubled_workers(
    conn: AsyncConnection, *, max_age_s: float = DEFAULT_MAX_AGE_S
) -> list[WorkerReport]:
    """Live workers (row refreshed within ``max_age_s``) whose state is not ``ok``, by owner."""
    now = now_sql(conn.dialect.name)
    rows = (
        await conn.execute(
            text(
                f"SELECT owner, state, detail, base_url, {now} - state_since, {now} - updated_at "
                f"FROM archive_workers WHERE state <> 'ok' AND updated_at >= {now} - :age "
                "ORDER BY owner"
            ),
            {"age": max_age_s},
        )
    ).fetchall()
    return [WorkerReport.from_row(row) for row in rows]


async def worker_problems(engine: AsyncEngine, *, max_age_s: float = DEFAULT_MAX_AGE_S) -> list[str]:
    """One line per live worker that cannot fetch (endpoint paused, key refused).

    Rows not refreshed within ``max_age_s`` are ignored: their workers are gone.
    """
    async with statement_at_a_time(engine) as conn:  # a read: no SQLite write lock
        reports = await troubled_workers(conn, max_age_s=max_age_s)
    return [report.problem() for report in reports]


def worker_lines(details: dict[str, Any]) -> list[str]:
    """Lines for the plain ``archiver status`` output: one per worker that is not ok."""
    workers = details.get("workers") or []
    if not workers:
        return []
    lines = ["workers not fetching:"]
    for w in workers:
        detail = f": {w['detail']}" if w.get("detail") else ""
        lines.append(f"  {w['owner']}  {w['state']}{detail}  (reported {w['updated_age_s']:.0f}s ago)")
    return lines
