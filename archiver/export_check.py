"""Whether a published export batch still holds what the archive has in its range.

An export that published its manifest but never moved its cursor leaves the batch for the
next run to adopt (see :mod:`archiver.export`). Adopting it is right only if every response
the archive now holds in the batch's range (``from_seq < change_seq <= to_seq``) is in the
batch, at that ``change_seq``: since the batch was read, rows can only leave that range
(re-archived, renormalized or compacted, they get a higher ``change_seq``), never enter it.

An archive restored from a backup taken before the batch does not pass: the daemon then
numbers new rows inside the old batch's range. Checking the manifest's ``last`` response
alone did not tell (the restored archive may re-archive that very response above the
batch's ``to_seq``), so the batch's ``responses`` file is read back, only its ``change_seq``
and ``id`` columns kept, and walked beside the archive's rows of the range in the same
order, ``(change_seq, id)``, in which the export wrote them (the database's own ordering, so
no collation is assumed). Memory: one row of the file at a time (a Parquet row group of
two columns), whatever the batch's size. Only run when there is a batch to adopt.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import and_
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver.schema import responses
from archiver.transactions import read_snapshot

_READ_AHEAD = 2000
"""Rows of the file read in one worker-thread call."""


def _file_keys(path: Path, fmt: str) -> Iterator[tuple[int, str]]:
    """``(change_seq, id)`` of every row of an exported ``responses`` file, in file order."""
    if fmt == "parquet":
        import pyarrow.parquet as pq  # type: ignore[import-untyped,unused-ignore]

        for batch in pq.ParquetFile(str(path)).iter_batches(columns=["change_seq", "id"], batch_size=1000):
            yield from zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True)
        return
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"not an export format: {fmt!r}")
    with open(path, encoding="utf-8", newline="") as file:
        if fmt == "csv":
            # A raw body is one field: the reader's 128 KiB default would refuse it.
            csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
            rows = csv.reader(file)
            header = next(rows)
            seq_at, id_at = header.index("change_seq"), header.index("id")
            for row in rows:
                yield int(row[seq_at]), row[id_at]
            return
        for line in file:
            record = orjson.loads(line)
            yield int(record["change_seq"]), str(record["id"])


async def batch_holds_range(engine: AsyncEngine, path: Path, fmt: str, from_seq: int, to_seq: int) -> bool:
    """Whether every response the archive holds with ``from_seq < change_seq <= to_seq`` is a
    row of the exported ``responses`` file ``path`` (format ``fmt``) at that ``change_seq``.

    Raises:
        OSError, ValueError, KeyError, IndexError, TypeError, ImportError, csv.Error: the
            file cannot be read as an export's in ``fmt`` (a Parquet file's errors are
            ``OSError`` or ``ValueError``; ImportError: no pyarrow).
    """
    keys = _file_keys(path, fmt)
    ahead: list[tuple[int, str]] = []

    async def next_key() -> tuple[int, str] | None:
        if not ahead:
            ahead.extend(reversed(await asyncio.to_thread(list, itertools.islice(keys, _READ_AHEAD))))
        return ahead.pop() if ahead else None

    c = responses.c
    stmt: Any = (
        responses.select()
        .with_only_columns(c.change_seq, c.id)
        .where(and_(c.change_seq > from_seq, c.change_seq <= to_seq))
        .order_by(c.change_seq, c.id)
        .execution_options(yield_per=1000)
    )
    async with read_snapshot(engine) as conn:
        result = await conn.stream(stmt)
        async for seq, rid in result:
            # The file holds the range's rows in this order: skip those that left it.
            while (key := await next_key()) is not None and key != (seq, rid) and key[0] <= seq:
                pass
            if key != (seq, rid):
                return False
    return True
