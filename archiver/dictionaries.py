"""Compression dictionaries: reading them, and the one a writer compresses new bodies with.

A writer loads the newest dictionary on its first batch, trains a new one when the bodies
written make one due (:mod:`archiver.codec` has the rule), and once it gets the archive's
first dictionary re-encodes the rows stored as plain ``zstd`` (:mod:`archiver.reencode`),
each after a batch committed, in a transaction of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import zstandard
from sqlalchemy import LargeBinary, cast, func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from archiver import codec, reencode
from archiver.codec import Codec
from archiver.errors import ArchiverError, first_line
from archiver.logs import get_logger, redact
from archiver.reencode import REENCODE_ATTEMPTS, PlainWalk
from archiver.schema import archive_dictionaries, conflict_insert, responses

log = get_logger()

DICTIONARY_BYTES = cast(archive_dictionaries.c.data, LargeBinary)
"""A dictionary's bytes, read as bytes even from a SQLite row whose ``data`` was set to
text by hand (SQLite keeps the storage class a value is given): read as it was, text
came back as a ``str`` (a TypeError in every reader) or failed to decode as UTF-8
(every query of the table failed); as bytes it is a damaged dictionary, which the
bodies' ``raw_sha256`` finds."""


def load_dictionaries_sync(conn: Connection, ids: Iterable[int] | None = None) -> dict[int, bytes]:
    """Dictionary bytes by id: the ones in ``ids``, or all of them."""
    stmt = select(archive_dictionaries.c.id, DICTIONARY_BYTES)
    if ids is not None:
        stmt = stmt.where(archive_dictionaries.c.id.in_(sorted(set(ids))))
    return {int(i): bytes(data) for i, data in conn.execute(stmt)}


async def load_dictionaries(conn: AsyncConnection, ids: Iterable[int] | None = None) -> dict[int, bytes]:
    """Dictionary bytes by id: the ones in ``ids``, or all of them."""
    return await conn.run_sync(load_dictionaries_sync, ids)


class WritingCodec:
    """The codec one writer compresses new bodies with, and the upkeep its dictionaries need.

    Call :meth:`checked` in each batch's transaction, :meth:`note_written` with the last
    change sequence number it wrote, and :meth:`upkeep` after the batch committed when
    :attr:`upkeep_due`.
    """

    def __init__(self) -> None:
        # How new bodies are compressed: loaded with the newest dictionary on the first
        # batch; _train_at is the bodies written (archive_changes.seq) that make the next due.
        self._codec: Codec | None = None
        self._codec_row: dict[str, Any] | None = None
        """The ``archive_dictionaries`` row of ``_codec``'s dictionary, to put back if deleted."""
        self._train_at = codec.FIRST_TRAINING_AT
        self._train_due = False
        # Set when this writer got the archive's first dictionary: the plain rows to re-encode.
        self._plain_walk: PlainWalk | None = None

    def note_written(self, last_seq: int) -> None:
        """A batch wrote bodies up to change sequence number ``last_seq``: train after it if due."""
        if last_seq >= self._train_at:
            self._train_due = True

    @property
    def upkeep_due(self) -> bool:
        """Whether a committed batch leaves work behind: a dictionary to train, plain rows to re-encode."""
        return self._train_due or self._plain_walk is not None

    def upkeep(self, conn: Connection) -> None:
        """After a committed batch, on ``conn`` (no transaction open): train the dictionary
        if one is due, then re-encode plain rows, each in a transaction of its own. The
        batch is committed: a database error here never fails it."""
        if self._train_due:
            try:
                with conn.begin():
                    self.train_dictionary_sync(conn)
            except (DBAPIError, OSError) as exc:
                self._training_failed(exc)
            except BaseException:
                self._training_rolled_back()
                raise
        while self._plain_walk is not None:
            try:
                with conn.begin():
                    self._plain_walk.step(conn)
            except (DBAPIError, OSError) as exc:
                self._plain_walk_failed(exc)
                break
            self._plain_walk_stepped()

    def _training_rolled_back(self) -> None:
        """Forget what a training whose transaction did not commit did in memory: a body
        written or re-encoded with a dictionary the database does not hold is unreadable."""
        self._codec = None  # reloaded from the database with the next batch
        self._plain_walk = None

    def _training_failed(self, exc: Exception) -> None:
        """A training failed on a database error after its batch committed: the batch stands
        (raising would make the caller write it again, its rows then counted as lost leases);
        the training is due again with the next batch, from what the database holds."""
        self._training_rolled_back()
        log.warning("archiver.dictionary_training_failed", error=redact(first_line(exc)))

    def _plain_walk_stepped(self) -> None:
        """After a committed step of the re-encoding walk: log and forget it once it is done."""
        walk = self._plain_walk
        if walk is None or not walk.done:
            return
        self._plain_walk = None
        log.info(
            "archiver.plain_bodies_reencoded",
            dictionary_id=walk.encoder.current,
            rows=walk.rewritten,
            left_alone=walk.left_alone,
            stored_bytes_before=walk.stored_before,
            stored_bytes_after=walk.stored_after,
        )

    def _plain_walk_failed(self, exc: Exception) -> None:
        """A step failed (its transaction rolled back): try again after the next batch, a few times."""
        walk = self._plain_walk
        assert walk is not None
        walk.failures += 1
        log.warning("archiver.reencode_failed", error=redact(first_line(exc)), attempt=walk.failures)
        if walk.failures >= REENCODE_ATTEMPTS:
            self._plain_walk = None  # archiver compact re-encodes what is left

    def _writing_codec(self, conn: Connection) -> Codec:
        """The codec new bodies are written with: the newest dictionary, if there is one."""
        if self._codec is None:
            row = conn.execute(
                select(
                    *(c for c in archive_dictionaries.c if c.name != "data"), DICTIONARY_BYTES.label("data")
                )
                .order_by(archive_dictionaries.c.id.desc())
                .limit(1)
            ).first()
            self._codec_row = {**row._mapping, "data": bytes(row.data)} if row is not None else None
            self._codec = Codec({int(row.id): bytes(row.data)} if row is not None else None)
            self._train_at = codec.next_training_at(int(row.trained_on) if row is not None else None)
        return self._codec

    def checked(self, conn: Connection) -> Codec:
        """:meth:`_writing_codec`, once its dictionary is known to be in the database still
        (locked against a delete until this transaction ends on PostgreSQL; SQLite's write
        lock is held already). A row deleted by hand while this writer ran made every body
        it wrote afterwards name a dictionary nobody could read them with: the writer puts
        back the row it holds, which makes the bodies written with it readable again."""
        encoder = self._writing_codec(conn)
        row = self._codec_row
        if row is None:
            return encoder
        still = select(archive_dictionaries.c.id).where(archive_dictionaries.c.id == row["id"])
        if conn.execute(still.with_for_update(read=True, key_share=True)).first() is None:
            log.warning("archiver.dictionary_restored", dictionary=row["id"])
            put_back = conflict_insert(conn, archive_dictionaries).values(row)
            conn.execute(put_back.on_conflict_do_nothing(index_elements=["id"]))
        return encoder

    def train_dictionary_sync(self, conn: Connection, *, bodies_written: int = 0) -> int | None:
        """Train a new dictionary on the most recent bodies, if one is due; its id or None.

        Due when the bodies written (``archive_changes.seq``) reach
        ``codec.FIRST_TRAINING_AT`` (128) for the first one, then 10 times the count the
        newest one was trained on. Runs in its own transaction after a batch. Another
        writer may have trained one meanwhile: then that one is adopted. A dictionary that
        does not make the bodies held out of its training smaller
        (:func:`archiver.codec.train_checked`) is not kept, and a failed training (too
        little data) is not either: both wait for the archive to double. When this store
        gets the archive's first dictionary (trained or adopted), the writer then
        re-encodes the rows stored as plain ``zstd`` (:mod:`archiver.reencode`).

        Args:
            bodies_written: count at least this many bodies written (the counter starts
                at 0 in archives older than change tracking; ``archiver compact``).
        """
        self._train_due = False
        before = self._codec
        self._codec = None  # reload: picks up a dictionary another writer trained
        current = self._writing_codec(conn)
        first = before is not None and before.current is None  # writing plain zstd until now
        if first and current.current is not None:
            self._walk_plain_rows(conn, current.current)
        written = int(conn.execute(text("SELECT coalesce(max(seq), 0) FROM archive_changes")).scalar() or 0)
        written = max(written, bodies_written)
        if written < self._train_at:
            return None
        samples: list[bytes] = []
        size = 0
        reader = Codec(load_dictionaries_sync(conn))
        rows = conn.execute(
            select(responses.c.raw, responses.c.raw_codec, responses.c.raw_dict_id)
            .where(func.length(responses.c.raw) <= codec.SMALL_BODY_BYTES)  # larger ones train nothing
            # A body that echoes a key keeps it in raw only, never in a dictionary's bytes.
            .where(responses.c.secret_masked.is_not(True))
            .order_by(responses.c.change_seq.desc())
            .limit(codec.TRAINING_SAMPLES)
        )
        for raw, raw_codec, dict_id in rows:
            try:
                body = reader.decode(raw, raw_codec, dict_id)
            except (ArchiverError, zstandard.ZstdError):  # an unreadable row trains nothing
                continue
            if len(body) > codec.SMALL_BODY_BYTES:
                continue
            samples.append(body)
            size += len(body)
            if size >= codec.TRAINING_BYTES:
                break
        try:
            training = codec.train_checked(samples)
        except Exception as exc:  # zstd refuses too few or too small samples
            self._train_at = written * 2
            log.warning("archiver.dictionary_not_trained", bodies=len(samples), error=str(exc))
            return None
        if not training.useful:  # too few or too unlike bodies: worse than none, or no better
            self._train_at = written * 2
            log.warning(
                "archiver.dictionary_not_kept",
                bodies=len(samples),
                held_out=training.held_out,
                plain_bytes=training.plain_bytes,
                dictionary_bytes=training.dictionary_bytes,
            )
            return None
        data = training.data
        values = {
            "created_at": datetime.now(UTC),
            "size": len(data),
            "trained_on": written,
            "samples": training.trained_on,
            "data": data,
        }
        dict_id = conn.execute(
            archive_dictionaries.insert().values(values).returning(archive_dictionaries.c.id)
        ).scalar_one()
        current.add(int(dict_id), data)
        self._codec_row = {"id": int(dict_id), **values}
        self._train_at = codec.next_training_at(written)
        if first:
            self._walk_plain_rows(conn, int(dict_id))
        log.info(
            "archiver.dictionary_trained",
            dictionary_id=dict_id,
            bodies=training.trained_on,
            written=written,
            size=len(data),
            held_out_plain_bytes=training.plain_bytes,
            held_out_dictionary_bytes=training.dictionary_bytes,
        )
        return int(dict_id)

    def _walk_plain_rows(self, conn: Connection, dict_id: int) -> None:
        """Re-encode the plain rows with the archive's first dictionary, after this batch."""
        encoder = Codec(load_dictionaries_sync(conn, [dict_id]))
        self._plain_walk = PlainWalk(encoder, left=reencode.REENCODE_LIMIT)
