"""Queue transitions of a written batch: each row leaves ``in_flight`` for what its outcome says.

Archived (or failed after too many polls), pending again after a delay (a retry, or an
unfinished response to poll again), or a final state. Every UPDATE is fenced by the lease
token: a row meanwhile re-leased to another worker is left alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection

from archiver.outcomes import Archived, Permanent, Retry, StopAll, with_body_sample
from archiver.queue import MAX_ERROR_CHARS, archive_queue

if TYPE_CHECKING:
    from archiver.store import FetchResult, WriteReport

_NO_BODY: dict[str, Any] = {"body": None, "body_bytes": None, "body_sha256": None}


def _body_columns(outcome: Retry | Permanent) -> dict[str, Any]:
    """The queue's forensic body parameters: a bounded prefix, the whole length, its SHA-256.

    Sampled here too, not only in the fetcher: ``writer.prepare()`` fails an ID whose
    body cannot be normalized with the whole body (``with_body_sample`` is idempotent).
    """
    sampled = with_body_sample(outcome)
    assert isinstance(sampled, (Retry, Permanent))
    return {"body": sampled.body, "body_bytes": sampled.body_bytes, "body_sha256": sampled.body_sha256}


def _short(text_: str) -> str:
    return text_ if len(text_) <= MAX_ERROR_CHARS else text_[: MAX_ERROR_CHARS - 1] + "…"


def move_queue_rows(
    conn: Connection,
    results: list[FetchResult],
    report: WriteReport,
    *,
    dialect: str,
    now: str,
    max_polls: int,
) -> None:
    """Move the queue rows of ``results`` in the transaction open on ``conn``, counting
    each outcome in ``report``.

    Args:
        dialect: the database's dialect name.
        now: the database clock (:func:`archiver.db.now_sql`).
        max_polls: snapshots of an unfinished response before its ID fails.
    """
    done: list[dict[str, Any]] = []
    later: list[dict[str, Any]] = []
    final: list[dict[str, Any]] = []
    for r in results:
        o = r.outcome
        rid, token = r.job.response_id, r.job.lease_token
        if isinstance(o, Archived):
            if o.terminal:
                report.archived += 1
                done.append({"rid": rid, "token": token})
            elif r.job.polls + 1 >= max_polls:
                report.failed += 1
                final.append(
                    {
                        "rid": rid,
                        "token": token,
                        "state": "failed",
                        "code": o.status_code,
                        "error": f"still {o.response_status} after {max_polls} polls "
                        "(latest snapshot is archived)",
                        **_NO_BODY,
                    }
                )
            else:
                report.repolled += 1
                later.append(
                    {
                        "rid": rid,
                        "token": token,
                        "delay": r.next_delay_s,
                        "code": o.status_code,
                        "error": f"response is {o.response_status}; re-polling",
                        **_NO_BODY,
                        "attempt_refund": r.job.attempt,
                        "polls": 1,
                    }
                )
        elif isinstance(o, Retry):
            report.retried += 1
            later.append(
                {
                    "rid": rid,
                    "token": token,
                    "delay": o.delay_s,
                    "code": o.status_code,
                    "error": _short(o.reason),
                    **_body_columns(o),
                    "attempt_refund": 0 if o.spend_attempt else 1,
                    "polls": 0,
                }
            )
        elif isinstance(o, Permanent):
            if o.state == "not_found":
                report.not_found += 1
            else:
                report.failed += 1
            final.append(
                {
                    "rid": rid,
                    "token": token,
                    "state": o.state,
                    "code": o.status_code,
                    "error": _short(o.reason),
                    **_body_columns(o),
                }
            )
        elif isinstance(o, StopAll):  # pragma: no cover - the worker releases these
            raise AssertionError("StopAll results are released, not written")
    fence = "WHERE id = :rid AND lease_token = :token"
    clear_lease = "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL"
    clear_body = "last_body = NULL, last_body_bytes = NULL, last_body_sha256 = NULL"
    set_body = "last_body = :body, last_body_bytes = :body_bytes, last_body_sha256 = :body_sha256"
    if done:
        _update_many(
            conn,
            dialect,
            f"UPDATE archive_queue SET state = 'archived', {clear_lease}, last_status_code = 200, "
            f"last_error = NULL, {clear_body}, updated_at = {now} {fence}",
            done,
        )
    if later:
        _update_many(
            conn,
            dialect,
            f"UPDATE archive_queue SET state = 'pending', {clear_lease}, "
            "attempts = CASE WHEN attempts >= :attempt_refund "
            "THEN attempts - :attempt_refund ELSE 0 END, "
            "polls = polls + :polls, "
            f"next_attempt_at = {now} + :delay, last_status_code = :code, "
            f"last_error = :error, {set_body}, updated_at = {now} {fence}",
            later,
        )
    if final:
        _update_many(
            conn,
            dialect,
            f"UPDATE archive_queue SET state = :state, {clear_lease}, last_status_code = :code, "
            f"last_error = :error, {set_body}, updated_at = {now} {fence}",
            final,
        )


def _update_many(conn: Connection, dialect: str, sql: str, params: list[dict[str, Any]]) -> None:
    """executemany of a queue UPDATE with named parameters (all values bound)."""
    if dialect == "sqlite":
        # sqlite3 binds :name parameters from dicts itself; skip SQLAlchemy's per-row work.
        conn.exec_driver_sql(sql, params)
        return
    statement = text(sql)
    if ":body" in sql:
        statement = statement.bindparams(bindparam("body", type_=archive_queue.c.last_body.type))
    conn.execute(statement, params)
