"""Re-encoding the bodies stored as plain ``zstd`` once the archive's first dictionary exists.

Until the first dictionary is trained (:data:`archiver.codec.FIRST_TRAINING_AT` bodies
written), the writer stores bodies as plain ``zstd``: about 780 B per mock body against
125 B with a dictionary. Right after it trains (or adopts) the archive's first
dictionary, the writer (:class:`archiver.dictionaries.WritingCodec`) re-encodes those rows with
it, in :class:`PlainWalk` steps: at most ``REENCODE_LIMIT`` rows in all, each step one short
transaction of at most ``REENCODE_BATCH`` rows and ``REENCODE_BATCH_BYTES`` stored bytes,
walking ``responses`` in ``id`` order. What is left (more plain rows than the limit, rows a
concurrent writer stored plain meanwhile, rows locked by another transaction) is
``archiver compact``'s job.

Every row is decoded and checked against its ``raw_sha256``, the new frame is decoded
again and compared with the body, and the row is only updated if it is still the plain
body that was read: ``UPDATE ... WHERE id = ? AND raw_codec = 'zstd' AND raw_sha256 = ?``.
A response re-archived, compacted or re-encoded by someone else meanwhile is left as they
wrote it; a body whose SHA-256 is unchanged is the same body, so its new frame decodes to
exactly it. Only ``raw``, ``raw_codec`` and ``raw_dict_id`` change: the body as received is
the same, so the normalized rows and ``change_seq`` (what exports follow) stay. The
dictionary was committed before the first step; a crash between steps leaves every row
either plain or re-encoded, both readable, and a step that fails changes nothing.

On PostgreSQL the rows of a step are locked when they are read (``FOR UPDATE SKIP
LOCKED``, in ``id`` order), so a step never waits for a writer's transaction and cannot
deadlock with one; on SQLite the step's transaction holds the file's write lock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import zstandard
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Connection

from archiver.codec import ZSTD, ZSTD_DICT, Codec
from archiver.errors import ArchiverError
from archiver.logs import get_logger
from archiver.schema import archive_dictionaries, responses

log = get_logger()

REENCODE_LIMIT = 4_000
"""At most this many plain rows are re-encoded by a writer (about 0.15 s of work in all)."""
REENCODE_BATCH = 250
"""Rows per transaction."""
REENCODE_BATCH_BYTES = 4 << 20
"""A transaction also closes once the stored bytes it read reach this."""
REENCODE_ATTEMPTS = 3
"""Failed steps (database errors, each retried after the writer's next batch) before a writer gives up."""

_REENCODE = (
    update(responses)
    .where(
        responses.c.id == bindparam("rid"),
        responses.c.raw_codec == ZSTD,
        responses.c.raw_sha256 == bindparam("sha"),
    )
    .values(
        raw=bindparam("stored", type_=responses.c.raw.type),
        raw_codec=ZSTD_DICT,
        raw_dict_id=bindparam("dict_id", type_=responses.c.raw_dict_id.type),
    )
)


@dataclass(frozen=True, slots=True)
class Reencoded:
    """A plain row read and re-encoded, about to be written (:meth:`PlainWalk.write`)."""

    response_id: str
    raw_sha256: str
    stored_before: int
    stored: bytes


@dataclass(slots=True)
class PlainWalk:
    """Re-encodes plain ``zstd`` rows with ``encoder``'s dictionary, one :meth:`step` at a time.

    Args:
        encoder: a codec whose current dictionary the rows are re-encoded with.
        left: rows still to re-encode at most.
    """

    encoder: Codec
    left: int = REENCODE_LIMIT
    after: str = ""
    """The last ``id`` looked at."""
    rewritten: int = 0
    left_alone: int = 0
    """Rows changed by someone else meanwhile, unreadable, or not smaller with the dictionary."""
    stored_before: int = 0
    stored_after: int = 0
    failures: int = 0
    """Steps that failed (a database error): the walk gives up after a few."""

    @property
    def done(self) -> bool:
        """True when nothing is left to do (or allowed)."""
        return self.left <= 0

    def step(self, conn: Connection) -> None:
        """Re-encode the next rows in the transaction open on ``conn`` (:meth:`read`, then :meth:`write`)."""
        self.write(conn, self.read(conn))

    def read(self, conn: Connection) -> list[Reencoded]:
        """The next rows, read and re-encoded (not written); sets :attr:`done` when none is left.

        On PostgreSQL the rows stay locked until the transaction ends; rows another
        transaction holds are skipped.
        """
        dictionary = select(archive_dictionaries.c.id).where(
            archive_dictionaries.c.id == self.encoder.current
        )
        if conn.execute(dictionary).first() is None:  # never write a row no one could read
            log.warning(
                "archiver.reencode_stopped", dictionary_id=self.encoder.current, error="no such dictionary"
            )
            self.left = 0
            return []
        r = responses.c
        listed = select(r.id, r.raw_sha256, func.length(r.raw)).where(r.raw_codec == ZSTD, r.id > self.after)
        listed = listed.order_by(r.id).limit(min(REENCODE_BATCH, self.left))
        if conn.dialect.name == "postgresql":
            listed = listed.with_for_update(skip_locked=True)
        rows = conn.execute(listed).all()
        if not rows:
            self.left = 0
            return []
        chosen: list[tuple[str, str]] = []
        size = 0
        for rid, sha, stored_bytes in rows:
            if chosen and size + int(stored_bytes or 0) > REENCODE_BATCH_BYTES:
                break
            chosen.append((rid, sha))
            size += int(stored_bytes or 0)
        self.left -= len(chosen)
        self.after = chosen[-1][0]
        stored = dict(conn.execute(select(r.id, r.raw).where(r.id.in_([rid for rid, _ in chosen]))).all())
        planned: list[Reencoded] = []
        for rid, sha in chosen:
            old = stored.get(rid)
            new = None if old is None else self._reencoded(rid, sha, bytes(old))
            if old is None or new is None:
                self.left_alone += 1
            else:
                planned.append(Reencoded(rid, sha, len(old), new))
        return planned

    def write(self, conn: Connection, planned: list[Reencoded]) -> None:
        """Store the re-encoded rows that are still the plain bodies :meth:`read` read."""
        for row in planned:  # one statement each: its rowcount says whether the fence held
            params = {"rid": row.response_id, "sha": row.raw_sha256, "stored": row.stored}
            if conn.execute(_REENCODE, {**params, "dict_id": self.encoder.current}).rowcount == 1:
                self.rewritten += 1
                self.stored_before += row.stored_before
                self.stored_after += len(row.stored)
            else:
                self.left_alone += 1

    def _reencoded(self, rid: str, sha: str, stored: bytes) -> bytes | None:
        """The row's body re-encoded with the dictionary, or None to leave the row as it is."""
        try:
            body = self.encoder.decode(stored, ZSTD, None)
        except (ArchiverError, zstandard.ZstdError) as exc:
            log.warning("archiver.reencode_skipped", response_id=rid, error=f"cannot decode raw: {exc}")
            return None
        if hashlib.sha256(body).hexdigest() != sha:
            log.warning(
                "archiver.reencode_skipped", response_id=rid, error="raw does not match its raw_sha256"
            )
            return None
        new, raw_codec, dict_id = self.encoder.encode(body)
        if raw_codec != ZSTD_DICT or len(new) >= len(stored):
            return None
        if self.encoder.decode(new, raw_codec, dict_id) != body:  # pragma: no cover - zstd's own guarantee
            raise AssertionError(f"{rid}: the re-encoded body does not decode to the body")
        return new
