"""archiver.export end to end: bodies archived through the Worker from the mock API, then exported.

Every test runs on SQLite and PostgreSQL (``db_url``) unless it is about the file system only.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import math
import os
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import event, func, select, text

import archiver.export as export_module
import archiver.export_files as export_files
import archiver.export_read as export_read
import archiver.export_writers as export_writers
from archiver.archived_bodies import read_bodies
from archiver.db import open_database
from archiver.export import ExportError, ExportReport, export, export_tables, schema_document
from archiver.export_schema import BATCHES_DIR
from archiver.mockapi import start_mock_server
from archiver.queue import QueueStore
from archiver.schema import export_cursors, input_items, responses, tool_sets
from archiver.worker import Worker

pytestmark = pytest.mark.timeout(180)

ROUND_1 = [f"resp_ok_e{i}" for i in range(30)] + ["resp_kitchensink_e", "resp_unicode_e", "resp_nul_e"]
ROUND_2 = [f"resp_ok_f{i}" for i in range(4)] + ["resp_kitchensink_f"]
TABLES = [str(t.name) for t in export_tables()]

ARROW_TYPES = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "json": pa.string(),
    "binary": pa.binary(),
}


# --- helpers --------------------------------------------------------------------------------


async def archive(engine: Any, settings: Any, ids: list[str]) -> None:
    """Queue the IDs and run the real pipeline once against the mock API."""
    await QueueStore(engine).enqueue(ids)
    summary = await Worker(settings, engine, once=True).run()
    assert summary.stop_reason is None


async def db_counts(engine: Any, ids: Collection[str] | None = None) -> dict[str, int]:
    """Rows per export table in the database (of the given response IDs only, if any)."""
    counts: dict[str, int] = {}
    async with engine.connect() as conn:
        for table in export_tables():
            key = table.c.id if table is responses else table.c.response_id
            stmt = select(func.count()).select_from(table)
            if ids is not None:
                stmt = stmt.where(key.in_(list(ids)))
            counts[str(table.name)] = int((await conn.execute(stmt)).scalar_one())
    return counts


async def db_responses(engine: Any) -> dict[str, Any]:
    """Every responses row, ``raw`` decoded (the body as received)."""
    async with engine.connect() as conn:
        with_tools = select(responses, tool_sets.c.tools).select_from(
            responses.outerjoin(tool_sets, tool_sets.c.id == responses.c.tool_set_id)
        )
        rows = {row.id: row for row in (await conn.execute(with_tools)).all()}
        bodies = await read_bodies(conn, list(rows))
    return {rid: SimpleNamespace(**{**row._asdict(), "raw": bodies[rid]}) for rid, row in rows.items()}


async def cursor_row(engine: Any, name: str = "default") -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(select(export_cursors).where(export_cursors.c.name == name))).first()


def data_file(out: Path, table: str, batch: int, fmt: str, cursor: str = "default") -> Path:
    return out / table / f"{cursor}-{batch:08d}.{fmt}"


def parse_csv(text_: str) -> list[list[tuple[str, bool]]]:
    """RFC 4180 records as ``(value, quoted)`` fields (csv.reader cannot tell "" from NULL)."""
    records: list[list[tuple[str, bool]]] = []
    fields: list[tuple[str, bool]] = []
    i, n = 0, len(text_)
    while i < n:
        if text_[i] == '"':
            parts, j = [], i + 1
            while True:
                k = text_.index('"', j)
                parts.append(text_[j:k])
                if text_[k + 1 : k + 2] == '"':
                    parts.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            fields.append(("".join(parts), True))
        else:
            k = i
            while k < n and text_[k] not in ",\n":
                k += 1
            fields.append((text_[i:k], False))
            i = k
        if text_[i : i + 1] == ",":
            i += 1
        else:
            assert text_[i : i + 1] == "\n", f"garbage after a field at {i}"
            records.append(fields)
            fields = []
            i += 1
    assert not fields, "the last record must end with a newline"
    return records


def read_csv_rows(path: Path) -> list[dict[str, Any]]:
    """Our CSV as dicts of ``(text, quoted)``; an unquoted empty field is NULL (``None``)."""
    header, *records = parse_csv(path.read_bytes().decode("utf-8"))
    names = [name for name, _ in header]
    return [
        {name: field if field != ("", False) else None for name, field in zip(names, r, strict=True)}
        for r in records
    ]


def read_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    """The rows of one export file as dicts (values as the format carries them)."""
    if fmt == "jsonl":
        return [orjson.loads(line) for line in path.read_bytes().splitlines()]
    if fmt == "csv":
        return [{k: None if v is None else v[0] for k, v in r.items()} for r in read_csv_rows(path)]
    return pq.read_table(path).to_pylist()  # type: ignore[no-any-return]


def listing(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def assert_no_temp_files(out: Path) -> None:
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".")]
    assert not leftovers, leftovers


def assert_batch_files(report: ExportReport, fmt: str) -> None:
    name = f"{report.cursor}-{report.batch:08d}"
    assert report.files == [
        *(f"{table}/{name}.{fmt}" for table in TABLES),
        f"_batches/{name}.json",
        "_schema.json",
    ]


# --- incremental export ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv"])
async def test_incremental_export_writes_each_response_once(
    db_url: str, make_settings: Any, tmp_path: Path, fmt: Any
) -> None:
    out = tmp_path / "export"
    async with await start_mock_server() as mock, open_database(db_url) as engine:
        settings = make_settings(db_url, mock.base_url)

        # Round 1: everything archived so far.
        await archive(engine, settings, ROUND_1)
        first = await export(engine, out, fmt=fmt)
        assert (first.batch, first.from_seq, first.responses, first.full) == (1, 0, len(ROUND_1), False)
        assert_batch_files(first, fmt)
        assert first.rows == await db_counts(engine)
        assert first.rows["content_parts"] > 0 and first.rows["tool_usage"] > 0
        ids = [r["id"] for r in read_rows(data_file(out, "responses", 1, fmt), fmt)]
        assert sorted(ids) == sorted(ROUND_1)
        for table in TABLES:
            assert len(read_rows(data_file(out, table, 1, fmt), fmt)) == first.rows[table], table

        # Round 2: only what was archived since.
        await archive(engine, settings, ROUND_2)
        second = await export(engine, out, fmt=fmt)
        assert (second.batch, second.from_seq) == (2, first.to_seq)
        assert second.to_seq > first.to_seq
        assert second.responses == len(ROUND_2)
        assert_batch_files(second, fmt)
        assert second.rows == await db_counts(engine, ROUND_2)
        ids = [r["id"] for r in read_rows(data_file(out, "responses", 2, fmt), fmt)]
        assert sorted(ids) == sorted(ROUND_2)
        for child in TABLES[1:]:
            rows = read_rows(data_file(out, child, 2, fmt), fmt)
            assert len(rows) == second.rows[child]
            assert {r["response_id"] for r in rows} <= set(ROUND_2)

        # Round 3: nothing new, nothing written, the batch number stays.
        before = listing(out)
        third = await export(engine, out, fmt=fmt)
        assert (third.batch, third.responses, third.files) == (2, 0, [])
        assert listing(out) == before
        assert_no_temp_files(out)

        row = await cursor_row(engine)
        assert (row.last_seq, row.batch) == (second.to_seq, 2)
        assert row.exported_at is not None
        manifest = orjson.loads((out / "_batches" / f"default-00000002.{'json'}").read_bytes())
        assert manifest["from_seq"] == first.to_seq and manifest["to_seq"] == second.to_seq
        assert manifest["rows"] == second.rows and manifest["format"] == fmt
        assert manifest["files"] == second.files[:-2]


async def test_export_of_an_empty_archive_writes_nothing(db_url: str, tmp_path: Path) -> None:
    out = tmp_path / "export"
    async with open_database(db_url) as engine:
        report = await export(engine, out, fmt="parquet", full=True)
        assert (report.batch, report.responses, report.files) == (0, 0, [])
        assert listing(out) == []
        assert await cursor_row(engine) is None


async def test_a_changed_response_is_exported_again(db_url: str, make_settings: Any, tmp_path: Path) -> None:
    rid = "resp_pending2_e"
    out = tmp_path / "export"
    async with await start_mock_server() as mock, open_database(db_url) as engine:
        # max_polls=1: the first fetch (status "queued") is archived, then the row gives up
        # as failed, so the run ends with the snapshot archived.
        await archive(engine, make_settings(db_url, mock.base_url, max_polls=1), [rid, "resp_ok_stay"])
        first = await export(engine, out, fmt="parquet")
        snapshot = {r["id"]: r for r in read_rows(data_file(out, "responses", 1, "parquet"), "parquet")}
        assert snapshot[rid]["status"] == "queued"

        # Fetched again through the real pipeline: in_progress, then completed.
        counts = await QueueStore(engine).enqueue([rid], refetch=True)
        assert counts.requeued == 1
        await Worker(make_settings(db_url, mock.base_url), engine, once=True).run()
        assert mock.stats.as_dict()["requests_by_id"][rid] == 3

        second = await export(engine, out, fmt="parquet")
        assert (second.batch, second.responses) == (2, 1)
        rows = read_rows(data_file(out, "responses", 2, "parquet"), "parquet")
        assert [r["id"] for r in rows] == [rid]
        assert rows[0]["status"] == "completed"
        assert rows[0]["change_seq"] > snapshot[rid]["change_seq"]
        assert rows[0]["change_seq"] <= second.to_seq and second.from_seq == first.to_seq
        assert second.rows == await db_counts(engine, [rid])
        assert second.rows["output_items"] > 0
        items = read_rows(data_file(out, "output_items", 2, "parquet"), "parquet")
        assert {r["change_seq"] for r in items} == {rows[0]["change_seq"]}
        # The first batch still holds the snapshot: files of committed batches never change.
        again = read_rows(data_file(out, "responses", 1, "parquet"), "parquet")
        assert {r["id"]: r["status"] for r in again}[rid] == "queued"


# --- crash safety ---------------------------------------------------------------------------


async def test_a_crash_before_the_cursor_commit_keeps_the_published_batch(
    db_url: str, make_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "export"
    async with await start_mock_server() as mock, open_database(db_url) as engine:
        settings = make_settings(db_url, mock.base_url)
        await archive(engine, settings, ROUND_1)

        async def crash(*_args: Any, **_kwargs: Any) -> None:
            raise RuntimeError("power cut")

        monkeypatch.setattr(export_module, "commit_cursor", crash)
        with pytest.raises(RuntimeError, match="power cut"):
            await export(engine, out, fmt="csv")
        # The files and the manifest are in place, but the cursor has not moved.
        crashed = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert out / "responses" / "default-00000001.csv" in crashed
        assert await cursor_row(engine) is None

        # More arrives before the next run. Batch 1 was published (a loader may have read
        # it): the re-run moves the cursor past it and writes what is new as batch 2.
        await archive(engine, settings, ROUND_2)
        monkeypatch.undo()
        report = await export(engine, out, fmt="csv")
        assert (report.batch, report.responses) == (2, len(ROUND_2))
        assert {p: p.read_bytes() for p in crashed} == crashed
        assert report.rows == await db_counts(engine, ROUND_2)
        ids = [r["id"] for r in read_rows(data_file(out, "responses", 2, "csv"), "csv")]
        assert sorted(ids) == sorted(ROUND_2)
        row = await cursor_row(engine)
        assert (row.batch, row.last_seq) == (2, report.to_seq)
        assert (await export(engine, out, fmt="csv")).files == []
        assert_no_temp_files(out)


async def test_a_failure_at_the_manifest_exports_the_same_batch_again(
    db_url: str, make_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "export"
    async with await start_mock_server() as mock, open_database(db_url) as engine:
        settings = make_settings(db_url, mock.base_url)
        await archive(engine, settings, ROUND_1)
        real_write = export_files.write_atomic

        def crash_at_the_manifest(path: Path, data: bytes) -> None:
            if path.parent.name == BATCHES_DIR:
                raise RuntimeError("power cut")  # an OSError would be a message
            real_write(path, data)

        monkeypatch.setattr(export_files, "write_atomic", crash_at_the_manifest)
        with pytest.raises(RuntimeError, match="power cut"):
            await export(engine, out, fmt="csv")
        # The batch is not published, and its data files are removed again.
        assert listing(out) == ["_schema.json"]

        # The re-run writes the same names, with everything.
        await archive(engine, settings, ROUND_2)
        monkeypatch.undo()
        report = await export(engine, out, fmt="csv")
        assert (report.batch, report.responses) == (1, len(ROUND_1) + len(ROUND_2))
        assert report.rows == await db_counts(engine)
        ids = [r["id"] for r in read_rows(data_file(out, "responses", 1, "csv"), "csv")]
        assert sorted(ids) == sorted(ROUND_1 + ROUND_2)
        assert_no_temp_files(out)


async def test_a_crash_while_writing_leaves_no_files(
    db_url: str, make_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "export"
    async with await start_mock_server() as mock, open_database(db_url) as engine:
        await archive(engine, make_settings(db_url, mock.base_url), ROUND_1)
        real_write = export_writers.Batch.write
        calls = 0

        def write_then_fail(self: Any, chunk: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise OSError(28, "No space left on device")
            real_write(self, chunk)

        monkeypatch.setattr(export_writers.Batch, "write", write_then_fail)
        with pytest.raises(OSError, match="No space"):
            await export(engine, out, fmt="parquet", chunk_size=10)
        assert listing(out) == []  # neither final nor temporary files
        monkeypatch.undo()
        report = await export(engine, out, fmt="parquet", chunk_size=10)
        assert (report.batch, report.responses) == (1, len(ROUND_1))


# --- formats --------------------------------------------------------------------------------


async def test_every_format_reads_back_with_the_documented_types(
    db_url: str, make_settings: Any, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    not_utf8 = b'{"id": "resp_ok_e1", "note": "\xff\xfe latin-1 \xe9"}'
    async with await start_mock_server() as mock, open_database(db_url) as engine:
        await archive(engine, make_settings(db_url, mock.base_url), ROUND_1)
        # A body that is not UTF-8 (kept byte-exact; exported as base64 in text formats).
        async with engine.begin() as conn:
            await conn.execute(
                responses.update()
                .where(responses.c.id == "resp_ok_e1")
                .values(raw=not_utf8, raw_codec=None, raw_sha256=hashlib.sha256(not_utf8).hexdigest())
            )
        reports = {fmt: await export(engine, out, fmt=fmt, cursor=fmt) for fmt in ("jsonl", "csv", "parquet")}
        want = await db_counts(engine)
        stored = await db_responses(engine)

    for fmt, report in reports.items():
        assert report.rows == want, fmt
        for table in TABLES:
            assert len(read_rows(data_file(out, table, 1, fmt, fmt), fmt)) == want[table], (fmt, table)

    # _schema.json describes the Parquet files exactly.
    doc = orjson.loads((out / "_schema.json").read_bytes())
    assert doc == orjson.loads(orjson.dumps(schema_document()))
    assert set(doc["tables"]) == set(TABLES)
    for table in TABLES:
        columns = [c for c in doc["tables"][table]["columns"] if "parquet" in c.get("formats", ["parquet"])]
        schema = pq.read_schema(data_file(out, table, 1, "parquet", "parquet"))
        assert schema.names == [c["name"] for c in columns], table
        for c in columns:
            assert schema.field(c["name"]).type == ARROW_TYPES[c["type"]], (table, c["name"])
    resp_cols = {c["name"]: c["type"] for c in doc["tables"]["responses"]["columns"]}
    assert resp_cols["input_tokens"] == "int64" and resp_cols["created_at"] == "timestamp"
    assert resp_cols["extra"] == "json" and resp_cols["raw"] == "binary"

    # Parquet: typed columns, raw byte-exact.
    table = pq.read_table(data_file(out, "responses", 1, "parquet", "parquet"))
    assert table.schema.field("input_tokens").type == pa.int64()
    assert table.schema.field("total_tokens").type == pa.int64()
    assert table.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("extra").type == pa.string()
    assert table.schema.field("raw").type == pa.binary()
    assert "raw_encoding" not in table.schema.names
    billing = pq.read_schema(data_file(out, "billing_details", 1, "parquet", "parquet"))
    assert billing.field("input_tokens").type == pa.int64()
    parquet_rows = {r["id"]: r for r in table.to_pylist()}
    for rid, row in stored.items():
        got = parquet_rows[rid]
        assert got["raw"] == bytes(row.raw), rid
        assert got["input_tokens"] == row.input_tokens
        assert got["created_at"] == as_utc(row.created_at)
        assert (None if got["tools"] is None else orjson.loads(got["tools"])) == row.tools

    # JSONL: the same values; integers stay integers; timestamps end in Z.
    json_columns = [c["name"] for c in doc["tables"]["responses"]["columns"] if c["type"] == "json"]
    jsonl_rows = {r["id"]: r for r in read_rows(data_file(out, "responses", 1, "jsonl", "jsonl"), "jsonl")}
    for rid, row in stored.items():
        got = jsonl_rows[rid]
        if rid == "resp_ok_e1":
            assert got["raw_encoding"] == "base64"
            assert base64.b64decode(got["raw"]) == not_utf8
        else:
            assert got["raw_encoding"] == "utf-8"
            assert got["raw"].encode() == bytes(row.raw), rid
        for name in ("input_tokens", "output_tokens", "total_tokens", "cached_tokens", "change_seq"):
            assert got[name] is None or type(got[name]) is int, (rid, name)
        assert got["input_tokens"] == row.input_tokens
        assert got["created_at"].endswith("Z") and got["fetched_at"].endswith("Z")
        assert datetime.fromisoformat(got["created_at"]) == as_utc(row.created_at)
        assert datetime.fromisoformat(got["fetched_at"]) == as_utc(row.fetched_at)
        assert got["tools"] is None or (
            isinstance(got["tools"], str) and orjson.loads(got["tools"]) == row.tools
        )
        for name in json_columns:  # e.g. instructions may be a JSON string: '"Be brief."'
            assert (None if got[name] is None else orjson.loads(got[name])) == getattr(row, name)
        assert got["metadata"] is None or isinstance(got["metadata"], str)
    assert "\\u0000" in jsonl_rows["resp_nul_e"]["raw"]

    # JSON columns are compact JSON text in every table (SQLite: as stored; PostgreSQL: re-serialized).
    for table_name in TABLES:
        json_columns = [c["name"] for c in doc["tables"][table_name]["columns"] if c["type"] == "json"]
        for row in read_rows(data_file(out, table_name, 1, "jsonl", "jsonl"), "jsonl"):
            for name in json_columns:
                value = row[name]
                assert value is None or orjson.dumps(orjson.loads(value)).decode() == value, (
                    table_name,
                    name,
                )

    # CSV: the same columns and values as JSONL, NULL as an unquoted empty field.
    for table_name in TABLES:
        text_rows = read_rows(data_file(out, table_name, 1, "jsonl", "jsonl"), "jsonl")
        csv_rows = read_csv_rows(data_file(out, table_name, 1, "csv", "csv"))
        header = [
            name
            for name, _ in parse_csv(data_file(out, table_name, 1, "csv", "csv").read_bytes().decode())[0]
        ]
        assert header == list(doc_columns(doc, table_name, "csv")), table_name
        assert len(csv_rows) == len(text_rows)
        for jrow, crow in zip(text_rows, csv_rows, strict=True):
            assert list(jrow) == header
            assert {k: as_csv_text(v) for k, v in jrow.items()} == crow, table_name


def doc_columns(doc: dict[str, Any], table: str, fmt: str) -> list[str]:
    return [c["name"] for c in doc["tables"][table]["columns"] if fmt in c.get("formats", [fmt])]


def as_csv_text(value: Any) -> tuple[str, bool] | None:
    """What a JSONL value must look like in the CSV: (text, quoted); strings and only strings quoted."""
    if value is None:
        return None
    if isinstance(value, str):
        return value, True
    if isinstance(value, bool):
        return ("true" if value else "false"), False
    if isinstance(value, float):
        return repr(value), False
    return str(value), False


def as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def test_csv_fields_tell_null_from_empty_text() -> None:
    field = export_writers._csv_field
    assert [field(None), field(""), field('say "hi"'), field(True), field(3), field(0.5)] == [
        "",
        '""',
        '"say ""hi"""',
        "true",
        "3",
        "0.5",
    ]
    assert export_module.raw_as_text("żółw".encode()) == ("żółw", "utf-8")
    assert export_module.raw_as_text(b"a\x00b") == ("YQBi", "base64")


# --- full export, chunking, guards ----------------------------------------------------------


async def test_full_exports_everything_and_moves_the_cursor(
    db_url: str, make_settings: Any, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    async with await start_mock_server() as mock, open_database(db_url) as engine:
        settings = make_settings(db_url, mock.base_url)
        await archive(engine, settings, ROUND_1)
        first = await export(engine, out)
        await archive(engine, settings, ROUND_2)

        full = await export(engine, out, full=True)
        assert (full.batch, full.from_seq, full.full) == (2, 0, True)
        assert full.responses == len(ROUND_1) + len(ROUND_2)
        assert full.rows == await db_counts(engine)
        assert full.to_seq > first.to_seq
        manifest = orjson.loads((out / "_batches" / "default-00000002.json").read_bytes())
        assert manifest["full"] is True
        row = await cursor_row(engine)
        assert (row.batch, row.last_seq) == (2, full.to_seq)
        # A full export again, with nothing new, still writes everything.
        again = await export(engine, out, full=True)
        assert (again.batch, again.responses) == (3, full.responses)
        # The incremental cursor continues from the full export.
        assert (await export(engine, out)).files == []


async def test_export_reads_in_chunks(
    db_url: str, make_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "export"
    async with await start_mock_server() as mock, open_database(db_url) as engine:
        await archive(engine, make_settings(db_url, mock.base_url), ROUND_1)
        statements: list[str] = []

        def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if "FROM responses" in statement and "LIMIT" in statement:
                statements.append(statement)

        event.listen(engine.sync_engine, "before_cursor_execute", record)
        try:
            report = await export(engine, out, fmt="parquet", chunk_size=7)
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", record)
        chunks = math.ceil(len(ROUND_1) / 7)
        assert len(statements) == chunks == 5
        path = data_file(out, "responses", 1, "parquet")
        assert pq.ParquetFile(path).num_row_groups == chunks
        rows = read_rows(path, "parquet")
        assert sorted(r["id"] for r in rows) == sorted(ROUND_1)
        seqs = [r["change_seq"] for r in rows]
        assert seqs == sorted(seqs)
        assert report.rows == await db_counts(engine)

        # A chunk also ends at CHUNK_BYTES of bodies: here, one response per chunk.
        monkeypatch.setattr(export_read, "CHUNK_BYTES", 1)
        full = await export(engine, out, fmt="parquet", full=True, cursor="small")
        path = data_file(out, "responses", 1, "parquet", "small")
        assert pq.ParquetFile(path).num_row_groups == len(ROUND_1)
        assert full.rows == report.rows


async def test_rows_sharing_one_change_seq_are_all_exported(
    db_url: str, make_settings: Any, tmp_path: Path
) -> None:
    """Archives from before change tracking all have change_seq 1 (migration 0003)."""
    out = tmp_path / "export"
    async with await start_mock_server() as mock, open_database(db_url) as engine:
        await archive(engine, make_settings(db_url, mock.base_url), ROUND_1)
        async with engine.begin() as conn:
            for table in export_tables():
                if table is not input_items:  # a view: it shows the response's change_seq
                    await conn.execute(text(f"UPDATE {table.name} SET change_seq = 1"))
            await conn.execute(text("UPDATE archive_changes SET seq = 1"))
        report = await export(engine, out, chunk_size=4)
        assert (report.from_seq, report.to_seq, report.responses) == (0, 1, len(ROUND_1))
        ids = [r["id"] for r in read_rows(data_file(out, "responses", 1, "jsonl"), "jsonl")]
        assert sorted(ids) == sorted(ROUND_1) and len(set(ids)) == len(ids)
        assert report.rows == await db_counts(engine)


async def test_export_refuses_what_would_lose_or_mix_data(
    sqlite_url: str, make_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "export"
    async with await start_mock_server() as mock, open_database(sqlite_url) as engine:
        await archive(engine, make_settings(sqlite_url, mock.base_url), ROUND_2)

        for bad in ("../up", ".hidden", "a/b", "", "x" * 129):
            with pytest.raises(ExportError, match="invalid cursor name"):
                await export(engine, out, cursor=bad)
        with pytest.raises(ExportError, match="unknown export format"):
            await export(engine, out, fmt="xml")  # type: ignore[arg-type]

        # Another export writing into the same directory.
        out.mkdir()
        fd = os.open(out, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with pytest.raises(ExportError, match="another export is writing"):
                await export(engine, out)
        finally:
            os.close(fd)

        # Another export with the same cursor committed meanwhile (e.g. into another directory).
        real_read = export_module.read_position

        async def read_then_race(engine_: Any, cursor: str) -> Any:
            position = await real_read(engine_, cursor)
            async with engine_.begin() as conn:
                await conn.execute(
                    export_cursors.insert().values(name=cursor, last_seq=position.to_seq, batch=1)
                )
            return position

        monkeypatch.setattr(export_module, "read_position", read_then_race)
        with pytest.raises(ExportError, match="moved while exporting"):
            await export(engine, out, cursor="raced")
        monkeypatch.undo()

        # A cursor ahead of the database (restored from an older backup) would skip rows.
        async with engine.begin() as conn:
            await conn.execute(export_cursors.insert().values(name="ahead", last_seq=10**6, batch=7))
        with pytest.raises(ExportError, match="restored from a backup"):
            await export(engine, out, cursor="ahead")
        report = await export(engine, out, cursor="ahead", full=True)
        assert (report.batch, report.responses) == (8, len(ROUND_2))
        row = await cursor_row(engine, "ahead")
        assert row.last_seq == report.to_seq
