"""compact's orphan sweep (archiver.orphans) beside running daemons, on SQLite and PostgreSQL:
tool sets and input items nothing references are removed, and no writer ever stores a
reference to a row the sweep deleted, whether it had the id cached or resolved it a moment ago."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiohttp import web
from sqlalchemy import event, func, make_url, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.util import await_

from archiver import orphans
from archiver.commands import show
from archiver.compact import compact
from archiver.db import open_database
from archiver.db_faults import database_error
from archiver.orphans import OrphanCounts, sweep_orphans
from archiver.projection import read_meta_sync
from archiver.queue import QueueStore, archive_queue
from archiver.schema import input_item_contents, input_items, responses, tool_sets
from archiver.schema import response_input_items as input_items_listed
from archiver.tool_sets import SWEPT_KEY, ToolSetIds
from archiver.worker import Worker
from tests.loopback import serving
from tests.pgserver import PgCluster

pytestmark = pytest.mark.timeout(240)

TOOLS = [
    [{"type": "function", "name": f"tool_{n}", "parameters": {"type": "object", "properties": {}}}]
    for n in range(4)
]
ITEMS = [
    {
        "id": f"msg_{n:04d}",
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": f"q{n}"}],
    }
    for n in range(8)
]


@dataclass
class Provider:
    """What the test server answers: per response ID, its body and its input items."""

    bodies: dict[str, bytes] = field(default_factory=dict)
    items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    tools: dict[str, Any] = field(default_factory=dict)

    def set(self, rid: str, tools: Any, items: list[dict[str, Any]], text_: str) -> None:
        body = {
            "id": rid,
            "object": "response",
            "status": "completed",
            "model": "qwen-plus",
            "tools": tools,
            "output": [
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text_}]}
            ],
        }
        self.bodies[rid] = orjson.dumps(body)
        self.items[rid] = items
        self.tools[rid] = tools


@asynccontextmanager
async def provider_server(provider: Provider) -> AsyncIterator[str]:
    """A Responses API serving ``provider``'s current bodies and input items; yields its base URL."""

    async def response(request: web.Request) -> web.Response:
        return web.Response(body=provider.bodies[request.match_info["rid"]], content_type="application/json")

    async def listed(request: web.Request) -> web.Response:
        data = provider.items[request.match_info["rid"]]
        page = {"object": "list", "data": data, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
        return web.Response(body=orjson.dumps({**page, "has_more": False}), content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/responses/{rid}", response)
    app.router.add_get("/v1/responses/{rid}/input_items", listed)
    async with serving(app) as origin:
        yield f"{origin}/v1"


@asynccontextmanager
async def daemons(db_url: str, settings: Any, count: int) -> AsyncIterator[None]:
    """``count`` daemons (``archiver run``), each on its own engine: several writers."""
    async with open_database(db_url) as first, open_database(db_url) as second:
        workers = [Worker(settings, engine, once=False) for engine in (first, second)[:count]]
        tasks = [asyncio.create_task(worker.run()) for worker in workers]
        try:
            yield
        finally:
            for worker in workers:
                worker.request_stop("test over")
            await asyncio.gather(*tasks)


async def archive_all(engine: Any, ids: list[str], *, during: Callable[[], Any] | None = None) -> None:
    """Enqueue ``ids`` again and wait until the daemons archived them all."""
    await QueueStore(engine).enqueue(ids, refetch=True)
    deadline = time.monotonic() + 60
    while True:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(archive_queue.c.state, archive_queue.c.last_error).where(
                        archive_queue.c.id.in_(ids)
                    )
                )
            ).all()
        if all(state == "archived" for state, _ in rows) and len(rows) == len(ids):
            assert all(error is None for _, error in rows), rows
            return
        assert time.monotonic() < deadline, rows
        if during is not None:
            await during()
        await asyncio.sleep(0.01)


async def assert_resolved(engine: Any, provider: Provider, settings: Any) -> None:
    """Every reference resolves to the value the last fetch sent, and show is byte-exact."""
    async with engine.connect() as conn:
        dangling_sets = (
            await conn.execute(
                text(
                    "SELECT r.id, r.tool_set_id FROM responses AS r LEFT JOIN tool_sets AS t "
                    "ON t.id = r.tool_set_id WHERE r.tool_set_id IS NOT NULL AND t.id IS NULL"
                )
            )
        ).all()
        dangling_items = (
            await conn.execute(
                text(
                    "SELECT l.response_id, l.position FROM response_input_items AS l "
                    "LEFT JOIN input_item_contents AS c ON c.sha256 = l.item_sha256 WHERE c.sha256 IS NULL"
                )
            )
        ).all()
        stored_tools = dict(
            (
                await conn.execute(
                    select(responses.c.id, tool_sets.c.tools).select_from(
                        responses.join(tool_sets, tool_sets.c.id == responses.c.tool_set_id)
                    )
                )
            ).all()
        )
        listed: dict[str, list[Any]] = {}
        for rid, item in await conn.execute(
            select(input_items.c.response_id, input_items.c.item).order_by(
                input_items.c.response_id, input_items.c.position
            )
        ):
            listed.setdefault(rid, []).append(orjson.loads(item) if isinstance(item, str) else item)
    assert dangling_sets == [], "responses name tool sets that were deleted"
    assert dangling_items == [], "responses list input items that were deleted"
    got = {rid: orjson.loads(v) if isinstance(v, str) else v for rid, v in stored_tools.items()}
    assert got == provider.tools
    assert listed == provider.items
    for rid, body in provider.bodies.items():
        assert await show(settings, rid) == body, rid


async def unreferenced(engine: Any) -> tuple[list[int], int, int]:
    """(tool set ids no response names, the highest id, input items no response lists)."""
    async with engine.connect() as conn:
        sets = sorted(
            (
                await conn.execute(text("SELECT id FROM tool_sets EXCEPT SELECT tool_set_id FROM responses"))
            ).scalars()
        )
        highest = int((await conn.execute(select(func.max(tool_sets.c.id)))).scalar() or 0)
        items = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM (SELECT sha256 FROM input_item_contents "
                    "EXCEPT SELECT item_sha256 FROM response_input_items) AS u"
                )
            )
        ).scalar()
    return sets, highest, int(items or 0)


def two_responses() -> Provider:
    provider = Provider()
    provider.set("resp_one", TOOLS[0], ITEMS[:1], "first")
    provider.set("resp_two", TOOLS[1], ITEMS[1:2], "first")
    return provider


async def orphan_x(engine: Any, provider: Provider) -> None:
    """Archive both responses, then resp_one again with other tools and items: X (TOOLS[0],
    tool set 1, and ITEMS[0]) loses its only response."""
    await archive_all(engine, ["resp_one", "resp_two"])
    provider.set("resp_one", TOOLS[2], ITEMS[2:3], "second")
    await archive_all(engine, ["resp_one", "resp_two"])


async def test_a_daemon_does_not_reuse_the_cached_id_of_a_swept_tool_set(
    db_url: str, make_settings: Any
) -> None:
    """The daemon caches set X; X loses its last response and is swept; the daemon then
    archives X again and must store it anew, not name the id it remembers."""
    provider = two_responses()
    async with provider_server(provider) as base_url, open_database(db_url) as engine:
        settings = make_settings(db_url, base_url, with_input_items=True)
        async with daemons(db_url, settings, 1):
            await orphan_x(engine, provider)
            swept = await sweep_orphans(engine)
            assert swept == OrphanCounts(tool_sets=1, input_items=1)
            provider.set("resp_two", TOOLS[0], ITEMS[:1], "third")  # the daemon has X's id cached
            await archive_all(engine, ["resp_one", "resp_two"])
        await assert_resolved(engine, provider, settings)
        async with engine.connect() as conn:
            ids = dict((await conn.execute(select(responses.c.id, responses.c.tool_set_id))).all())
            count = (await conn.execute(select(func.count()).select_from(input_item_contents))).scalar()
        assert ids["resp_two"] > ids["resp_one"], "X came back under a new id"
        assert count == 3  # ITEMS[1] lost its response meanwhile, as did TOOLS[1]
        assert await sweep_orphans(engine) == OrphanCounts(tool_sets=1, input_items=1)
        assert await sweep_orphans(engine) == OrphanCounts()
        await assert_resolved(engine, provider, settings)


async def test_a_reference_written_between_the_scan_and_the_delete_keeps_its_row(
    db_url: str, make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep finds X unreferenced; before its delete, the daemon archives a response
    naming X (from its cache) and listing item Y; the delete must leave both."""
    provider = two_responses()
    async with provider_server(provider) as base_url, open_database(db_url) as engine:
        settings = make_settings(db_url, base_url, with_input_items=True)
        async with daemons(db_url, settings, 1):
            await orphan_x(engine, provider)
            assert (await unreferenced(engine))[0] == [1]
            deletes = []
            real = orphans._delete_page

            async def after_the_scan(*args: Any) -> Any:
                deletes.append(args)
                if len(deletes) == 1:  # the first table's candidates are found: the daemon writes
                    provider.set("resp_two", TOOLS[0], ITEMS[:1], "third")
                    await archive_all(engine, ["resp_two"])
                return await real(*args)

            monkeypatch.setattr(orphans, "_delete_page", after_the_scan)
            swept = await sweep_orphans(engine)
            monkeypatch.undo()
        await assert_resolved(engine, provider, settings)
        # The tool sets were scanned before the write: X is kept, and what resp_two named
        # before (TOOLS[1]) is left to the next sweep. The input items were scanned after it:
        # Y is referenced, ITEMS[1] is not.
        assert swept == OrphanCounts(tool_sets=0, input_items=1)
        assert await sweep_orphans(engine) == OrphanCounts(tool_sets=1)
        assert await sweep_orphans(engine) == OrphanCounts()


async def test_a_delete_waits_for_a_writer_that_is_naming_the_row(db_url: str, make_settings: Any) -> None:
    """A writer's transaction holds the counter lock and names X (from its cache), not
    committed yet; the sweep found X unreferenced and must wait for that commit, then
    see the reference and keep X."""
    provider = two_responses()
    async with provider_server(provider) as base_url, open_database(db_url) as engine:
        async with daemons(db_url, make_settings(db_url, base_url, with_input_items=True), 1):
            await orphan_x(engine, provider)
        cache = ToolSetIds()
        async with engine.begin() as conn:  # a writer that has X, now unreferenced, cached
            cache.begin()
            (x_id,) = await conn.run_sync(cache.resolve_sync, [TOOLS[0]])
        cache.confirm()
        assert (await unreferenced(engine))[0] == [x_id]
        async with open_database(db_url) as writer_engine, writer_engine.connect() as writer:
            await writer.begin()
            # What the writer does: the counter lock and new change_seq, then the cached id.
            seq = (
                await writer.execute(
                    text("UPDATE archive_changes SET seq = seq + 1 WHERE name = 'archive' RETURNING seq")
                )
            ).scalar_one()
            cache.begin()
            assert (await writer.run_sync(cache.resolve_sync, [TOOLS[0]])) == [x_id]
            await writer.execute(
                text("UPDATE responses SET tool_set_id = :x, change_seq = :seq WHERE id = 'resp_two'"),
                {"x": x_id, "seq": seq},
            )
            sweeping = asyncio.create_task(sweep_orphans(engine))
            await asyncio.sleep(0.5)
            assert not sweeping.done(), "the delete waits for the writer's commit"
            await writer.commit()
            swept = await asyncio.wait_for(sweeping, 60)
        # X stays; TOOLS[1], which resp_two named before, lost its reference after the scan
        assert swept.tool_sets == 0
        assert (await sweep_orphans(engine)).tool_sets == 1
        async with engine.connect() as conn:
            named = (
                await conn.execute(
                    text("SELECT r.id, t.id FROM responses AS r JOIN tool_sets AS t ON t.id = r.tool_set_id")
                )
            ).all()
        assert dict(named)["resp_two"] == x_id


async def test_a_sweep_cut_off_before_its_commit_deletes_nothing(
    db_url: str, make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete and the sweep count commit together: cut off between them (a crash
    before the commit), X is still there and a writer's cache stays valid; run again, the
    sweep deletes X and counts itself."""
    provider = two_responses()
    async with provider_server(provider) as base_url, open_database(db_url) as engine:
        async with daemons(db_url, make_settings(db_url, base_url, with_input_items=True), 1):
            await orphan_x(engine, provider)

        def power_cut(*args: Any) -> None:
            raise RuntimeError("power cut")

        monkeypatch.setattr(orphans, "write_meta_sync", power_cut)
        with pytest.raises(RuntimeError, match="power cut"):
            await sweep_orphans(engine)
        monkeypatch.undo()
        assert (await unreferenced(engine))[0] == [1]
        async with engine.connect() as conn:
            assert await conn.run_sync(read_meta_sync, SWEPT_KEY) is None
        assert await sweep_orphans(engine) == OrphanCounts(tool_sets=1, input_items=1)
        async with engine.connect() as conn:
            assert await conn.run_sync(read_meta_sync, SWEPT_KEY) == "1"
        assert (await unreferenced(engine))[0] == []


async def test_sweeps_racing_two_daemons_lose_no_reference(db_url: str, make_settings: Any) -> None:
    """Two daemons archive responses again and again with rotating tools and input items
    (so sets and items lose their last reference, are swept, and come back from the
    daemons' caches), while sweeps run without pause; then compact sweeps what is left."""
    rids = [f"resp_race_{n:02d}" for n in range(24)]
    provider = Provider()
    swept = OrphanCounts()

    def assign(round_: int) -> None:
        for n, rid in enumerate(rids):
            tools = TOOLS[(round_ + n % 2) % len(TOOLS)]
            items = [ITEMS[(round_ * 3 + j) % len(ITEMS)] for j in range(1 + n % 3)]
            provider.set(rid, tools, items, f"round {round_}")

    async def sweep() -> None:
        got = await sweep_orphans(engine, page=2)
        swept.tool_sets += got.tool_sets
        swept.input_items += got.input_items

    assign(0)
    async with provider_server(provider) as base_url, open_database(db_url) as engine:
        settings = make_settings(db_url, base_url, with_input_items=True, batch_size=4, concurrency=4)
        async with daemons(db_url, settings, 2):
            for round_ in range(1, 9):
                await archive_all(engine, rids, during=sweep)
                assign(round_)
            await archive_all(engine, rids, during=sweep)
        assert swept.tool_sets >= 4 and swept.input_items >= 4, swept  # the sweeps had work
        await assert_resolved(engine, provider, settings)
        result = await compact(engine)
        sets, highest, items = await unreferenced(engine)
        assert items == 0 and sets in ([], [highest]), (sets, highest, items)
        summary = result.lines()[1]
        assert (
            f"orphans removed: {result.orphans.tool_sets} tool sets, {result.orphans.input_items}" in summary
        )
        assert result.as_dict()["orphans_removed"] == result.orphans.as_dict()
        await assert_resolved(engine, provider, settings)


# --- one scan per table, however many pages ----------------------------------------------------

NOW = datetime(2026, 12, 1, tzinfo=UTC)


async def plant_orphans(engine: Any, count: int) -> None:
    """``count`` tool sets and input items no response references, beside one response that
    references the highest tool set and one input item."""
    async with engine.begin() as conn:
        await conn.execute(
            tool_sets.insert(),
            [
                {"id": n, "sha256": f"{n:064x}", "tools": [], "first_seen_at": NOW}
                for n in range(1, count + 2)
            ],
        )
        await conn.execute(
            input_item_contents.insert(), [{"sha256": f"{n:064x}", "item": {}} for n in range(count + 1)]
        )
        await conn.execute(
            text(
                "INSERT INTO responses (id, raw, raw_sha256, fetched_at, archived_at, change_seq, "
                "tool_set_id) VALUES ('resp_kept', :raw, :sha, :now, :now, 1, :top)"
            ),
            {"raw": b"{}", "sha": "0" * 64, "now": NOW, "top": count + 1},
        )
        await conn.execute(
            input_items_listed.insert().values(
                response_id="resp_kept", position=0, item_sha256=f"{count:064x}"
            )
        )


@contextmanager
def scans_counted(engine: Any) -> Iterator[list[str]]:
    """The statements that scan a referencing table (``EXCEPT``), as the sweep runs them."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "EXCEPT" in statement:
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", note)


async def temp_tables_left(engine: Any) -> int:
    """The sweep's temporary tables that any session still holds (PostgreSQL)."""
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM pg_class WHERE relpersistence = 't' AND relname LIKE 'sweep_%'"
                    )
                )
            ).scalar()
            or 0
        )


async def test_the_sweep_reads_each_referencing_table_once_however_many_pages(db_url: str) -> None:
    """Before, each page of candidates was found by its own EXCEPT over the whole
    referencing table (30 minutes at 10 million responses and 100,000 orphans)."""
    async with open_database(db_url) as engine:
        await plant_orphans(engine, 9)
        with scans_counted(engine) as scans:
            assert await sweep_orphans(engine, page=2) == OrphanCounts(tool_sets=9, input_items=9)
        assert len(scans) == 2, scans  # five pages of each table, one scan of each
        sets, highest, items = await unreferenced(engine)
        assert (sets, highest, items) == ([], 10, 0)
        if engine.dialect.name == "postgresql":  # none left on the pooled connection
            assert await temp_tables_left(engine) == 0
        with scans_counted(engine) as scans:
            assert await sweep_orphans(engine, page=2) == OrphanCounts()
        assert len(scans) == 2


@pytest.mark.parametrize(("during_scan", "expected"), [(0, 6), (10, 2)])
async def test_writes_beside_a_long_sweep_make_it_scan_again(
    db_url: str, monkeypatch: pytest.MonkeyPatch, during_scan: int, expected: int
) -> None:
    """Each page's delete reads the responses written since the scan, under the writers'
    lock; once more than RESCAN_AFTER were, the rest is found again with a new counter,
    unless the writers wrote more during the scan itself (then twice as many): a rescan
    could not leave fewer to read."""
    monkeypatch.setattr(orphans, "RESCAN_AFTER", 3)
    real = orphans._delete_page
    seqs: list[int] = []

    async def write(engine: Any, changes: int) -> None:
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE archive_changes SET seq = seq + :n WHERE name = 'archive'"), {"n": changes}
            )

    async def writers_beside(engine: Any, table: Any, keys: Any, seq: int) -> int:
        seqs.append(seq)
        await write(engine, 2)  # two changes a page: a rescan every other page
        return await real(engine, table, keys, seq)

    monkeypatch.setattr(orphans, "_delete_page", writers_beside)
    async with open_database(db_url) as engine:
        await plant_orphans(engine, 9)

        def during_the_scan(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if "EXCEPT" in statement and during_scan:
                await_(write(engine, during_scan))

        event.listen(engine.sync_engine, "after_cursor_execute", during_the_scan)
        with scans_counted(engine) as scans:
            assert await sweep_orphans(engine, page=2) == OrphanCounts(tool_sets=9, input_items=9)
        event.remove(engine.sync_engine, "after_cursor_execute", during_the_scan)
        # Without writes during the scan: pages 1-2, 3-4, 5 of each table; with ten, the
        # five pages' ten changes stay within twice ten.
        assert len(scans) == expected, scans
        assert seqs == sorted(seqs) and len(set(seqs)) == expected, seqs
        assert (await unreferenced(engine))[2] == 0


async def test_a_sweep_whose_connection_the_server_ends_scans_again(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL restart mid-sweep ends the connection holding the candidates (and its
    temporary table): the sweep finds the rest again on a new connection and finishes."""
    real = orphans._delete_page
    ended: list[int] = []

    async def restart_after_the_first_page(engine: Any, table: Any, keys: Any, seq: int) -> int:
        dropped = await real(engine, table, keys, seq)
        if table.name == "input_item_contents" and not ended:
            async with engine.connect() as admin:
                held = await admin.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid() AND query LIKE '%sweep_input_items%'"
                    )
                )
                pids = list(held.scalars())
                assert len(pids) == 1, pids
                await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pids[0]})
                ended.append(pids[0])
        return dropped

    monkeypatch.setattr(orphans, "_delete_page", restart_after_the_first_page)
    async with open_database(pg_url) as engine:
        await plant_orphans(engine, 9)
        with scans_counted(engine) as scans:
            assert await sweep_orphans(engine, page=2) == OrphanCounts(tool_sets=9, input_items=9)
        assert ended and len(scans) == 3, scans  # the input items were found twice
        assert (await unreferenced(engine))[2] == 0
        assert await temp_tables_left(engine) == 0


async def test_a_reference_written_right_after_the_scan_keeps_its_row(db_url: str) -> None:
    """The counter is read before the scan, not after: a writer that commits between the
    scan and that read would otherwise be taken for one the scan saw."""
    async with open_database(db_url) as engine, open_database(db_url) as writer_engine:
        await plant_orphans(engine, 9)

        async def name(reference: str) -> None:  # what a writer commits: new change_seq, a reference
            async with writer_engine.begin() as conn:
                seq = (
                    await conn.execute(
                        text("UPDATE archive_changes SET seq = seq + 1 WHERE name = 'archive' RETURNING seq")
                    )
                ).scalar_one()
                await conn.execute(text(reference), {"seq": seq})
                await conn.execute(
                    text("UPDATE responses SET change_seq = :seq WHERE id = 'resp_kept'"), {"seq": seq}
                )

        def after_the_scan(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if "EXCEPT" in statement and "FROM tool_sets" in statement:
                await_(name("UPDATE responses SET tool_set_id = 1 WHERE id = 'resp_kept'"))
            elif "EXCEPT" in statement:
                await_(
                    name(
                        "INSERT INTO response_input_items (response_id, position, item_sha256) "
                        f"VALUES ('resp_kept', 1, '{0:064x}')"
                    )
                )

        event.listen(engine.sync_engine, "after_cursor_execute", after_the_scan)
        try:
            swept = await sweep_orphans(engine, page=2)
        finally:
            event.remove(engine.sync_engine, "after_cursor_execute", after_the_scan)
        # Tool set 1 and item 0 are named now; set 10 lost its response but is the highest id.
        assert swept == OrphanCounts(tool_sets=8, input_items=8)
        async with engine.connect() as conn:
            assert (await conn.execute(select(tool_sets.c.id).where(tool_sets.c.id == 1))).scalar() == 1
            kept = select(input_item_contents.c.sha256).where(input_item_contents.c.sha256 == f"{0:064x}")
            assert (await conn.execute(kept)).scalar() is not None


async def test_the_highest_tool_set_id_is_never_swept(db_url: str) -> None:
    """SQLite gives a new row the highest id plus one: were the highest deleted, the next
    set stored would take its id again, and a writer holding it would name another value."""
    async with open_database(db_url) as engine:
        await plant_orphans(engine, 9)
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE responses SET tool_set_id = 1"))
        assert (await sweep_orphans(engine, page=2)).tool_sets == 8
        assert (await unreferenced(engine))[:2] == ([10], 10)


async def test_without_the_temporary_privilege_the_sweep_fails_in_one_line(
    pg_url: str, pg_cluster: PgCluster
) -> None:
    """The candidates live in a temporary table: a user without PostgreSQL's TEMPORARY
    privilege (everyone has it unless revoked, as README says) gets the one-line fault,
    not a retry loop or a traceback, and nothing is deleted."""
    if pg_cluster.external_url:
        pytest.skip("needs a server where the tests may create roles")
    role = f"sweeper_{uuid.uuid4().hex[:8]}"
    database = make_url(pg_url).database
    async with open_database(pg_url) as engine:
        await plant_orphans(engine, 3)
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            for statement in (
                f"CREATE ROLE {role} LOGIN",
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
                f"REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC",
            ):
                await conn.execute(text(statement))
        try:
            async with open_database(make_url(pg_url).set(username=role).render_as_string(False)) as limited:
                with pytest.raises(DBAPIError) as caught:
                    await sweep_orphans(limited)
            message = str(database_error(caught.value, "the archive"))
            assert message.startswith("the database user lacks a privilege: the archive"), message
            assert "temporary" in message and "\n" not in message
            assert await unreferenced(engine) == ([1, 2, 3], 4, 3)  # nothing deleted
        finally:
            async with engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text(f"DROP OWNED BY {role}"))
                await conn.execute(text(f"DROP ROLE {role}"))
