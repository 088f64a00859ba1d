"""Hostile tests of ``archiver export`` as the loader a warehouse is fed from.

The contract a warehouse relies on: running the export again and again beside the daemon
delivers every archived response with its child rows at least once, a published batch is
the batch (a loader that has read a manifest never has to read it again), nothing is
skipped, and a failed run can simply be run again. The faults are made to happen: an
export process is killed with SIGKILL while another connection holds the lock its cursor
commit needs, two exports race for one cursor, writers hold their ``change_seq`` open.

Every test runs on SQLite and PostgreSQL (``db_url``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from archiver.db import open_database
from archiver.export import export, export_tables
from archiver.mockapi import MockConfig, start_mock_server
from archiver.queue import QueueStore
from archiver.schema import export_cursors, responses
from archiver.worker import Worker
from tests.mounts import MountRefused, read_only

pytestmark = pytest.mark.timeout(120)

ROUND_1 = [f"resp_ok_h{i}" for i in range(5)] + ["resp_kitchensink_h"]
ROUND_2 = [f"resp_ok_j{i}" for i in range(3)]


async def archive(engine: Any, settings: Any, ids: list[str]) -> None:
    """Queue the IDs and run the real pipeline once against the mock API."""
    await QueueStore(engine).enqueue(ids)
    summary = await Worker(settings, engine, once=True).run()
    assert summary.stop_reason is None


def export_process(db_url: str, out: Path, *args: str) -> subprocess.Popen[bytes]:
    """``archiver export OUT ...`` in a child process, as cron runs it."""
    env = {**os.environ, "ARCHIVER_DATABASE_URL": db_url}
    return subprocess.Popen(
        [sys.executable, "-m", "archiver", "export", str(out), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def run_export(db_url: str, out: Path, *args: str) -> dict[str, Any]:
    process = export_process(db_url, out, *args)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr.decode()
    report: dict[str, Any] = json.loads(stdout)
    return report


def wait_until(done: Callable[[], object], process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Poll ``done`` every 5 ms while ``process`` runs."""
    deadline = time.monotonic() + timeout
    while not done():
        assert process.poll() is None, process.communicate()[1].decode()
        assert time.monotonic() < deadline, "it never happened"
        time.sleep(0.005)


def wait_for(path: Path, process: subprocess.Popen[bytes]) -> None:
    wait_until(path.exists, process)


@asynccontextmanager
async def cursor_commit_blocked(engine: Any, db_url: str) -> AsyncIterator[None]:
    """Hold what an export's cursor commit needs: the export writes its files, then waits.

    PostgreSQL: an EXCLUSIVE lock on ``export_cursors`` (reads go on, writes wait).
    SQLite: another connection's write transaction (``BEGIN IMMEDIATE``): the export's
    snapshot reads go on in WAL mode, its commit waits in the busy handler.
    """
    if db_url.startswith("sqlite"):
        holder = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    async with engine.connect() as conn, conn.begin():
        await conn.execute(text("LOCK TABLE export_cursors IN EXCLUSIVE MODE"))
        yield


class ManifestLoader:
    """A warehouse loader: it loads each batch once, when its manifest appears.

    A manifest is written after every file of its batch is in place, so it is the natural
    signal that a batch is complete; the loader keeps the names of the manifests it has
    loaded and the rows it has read, per table.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.loaded: dict[str, bytes] = {}
        self.rows: dict[str, list[dict[str, Any]]] = {}

    def poll(self) -> list[str]:
        new: list[str] = []
        for manifest_path in sorted((self.out / "_batches").glob("*.json")):
            if manifest_path.name in self.loaded:
                continue
            manifest = json.loads(manifest_path.read_bytes())
            for name in manifest["files"]:
                table = name.split("/")[0]
                lines = (self.out / name).read_bytes().splitlines()
                self.rows.setdefault(table, []).extend(json.loads(line) for line in lines)
            self.loaded[manifest_path.name] = manifest_path.read_bytes()
            new.append(manifest_path.name)
        return new

    def latest(self) -> dict[str, dict[str, Any]]:
        """Per response ID the ``responses`` row with the highest ``change_seq``."""
        latest: dict[str, dict[str, Any]] = {}
        for row in self.rows.get("responses", []):
            if row["id"] not in latest or row["change_seq"] > latest[row["id"]]["change_seq"]:
                latest[row["id"]] = row
        return latest


async def cursor_row(engine: Any, name: str = "default") -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(select(export_cursors).where(export_cursors.c.name == name))).first()


# --- a published batch is final ----------------------------------------------------------------


async def test_an_export_killed_after_its_manifest_does_not_rewrite_the_published_batch(
    db_url: str, make_settings: Any, tmp_path: Path
) -> None:
    """SIGKILL between the manifest and the cursor commit, then more archived, then cron again.

    The manifest of batch 1 was published, and a loader read it. Re-writing batch 1 under
    the same names with more rows hid those rows from every loader that loads a batch once:
    they were in no batch it would ever read again.
    """
    out = tmp_path / "feed"
    loader = ManifestLoader(out)
    async with await start_mock_server() as mock, open_database(db_url) as engine:
        settings = make_settings(db_url, mock.base_url)
        await archive(engine, settings, ROUND_1)

        async with cursor_commit_blocked(engine, db_url):
            process = export_process(db_url, out)
            try:
                wait_for(out / "_batches" / "default-00000001.json", process)
                await asyncio.sleep(0.2)  # it is waiting for the lock now
                assert process.poll() is None
            finally:
                process.send_signal(signal.SIGKILL)
                process.communicate()
        assert await cursor_row(engine) is None  # the cursor never moved
        assert loader.poll() == ["default-00000001.json"]
        published = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix == ".jsonl"}

        await archive(engine, settings, ROUND_2)
        report = run_export(db_url, out)
        loader.poll()
        assert sorted(loader.latest()) == sorted(ROUND_1 + ROUND_2), "rows a loader never saw"
        # Batch 1 stays what the loader read; what came after is batch 2.
        assert {p: p.read_bytes() for p in published} == published
        assert report["batch"] == 2 and report["responses"] == len(ROUND_2)
        row = await cursor_row(engine)
        assert row.batch == 2


async def test_the_export_that_loses_a_race_for_its_cursor_leaves_no_batch(
    db_url: str, make_settings: Any, tmp_path: Path
) -> None:
    """Two exports of one cursor into two directories at once: the later commit fails.

    The docs say the loser "fails at the commit and changes nothing", but its batch was
    already published in its directory: a loader of that directory loaded a batch whose
    rows the cursor then counted as delivered by the other export.
    """
    async with await start_mock_server() as mock, open_database(db_url) as engine:
        await archive(engine, make_settings(db_url, mock.base_url), ROUND_1)
        outs = [tmp_path / "feed-a", tmp_path / "feed-b"]
        async with cursor_commit_blocked(engine, db_url):
            processes = [export_process(db_url, out) for out in outs]
            for out, process in zip(outs, processes, strict=True):
                wait_for(out / "_batches" / "default-00000001.json", process)
        results = [process.communicate(timeout=60) for process in processes]
        codes = sorted(process.returncode for process in processes)
        assert codes == [0, 1], results
        loser = outs[[p.returncode for p in processes].index(1)]
        stderr = results[[p.returncode for p in processes].index(1)][1].decode()
        assert "moved while exporting" in stderr and "Traceback" not in stderr
        left = sorted(p.relative_to(loser).as_posix() for p in loser.rglob("*") if p.is_file())
        assert [name for name in left if name != "_schema.json"] == []
        row = await cursor_row(engine)
        assert row.batch == 1


# --- memory ------------------------------------------------------------------------------------

BIG_BODIES = 16
"""4 MB each (the mock's ``big``): 64 MiB of bodies, one chunk before the fix."""
EXPORT_PEAK_BOUND = 320 * 1024 * 1024


PEAK_PROBE = """
import sys
from archiver.cli import main
code = main(sys.argv[1:])
with open("/proc/self/status") as status:
    kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
sys.stderr.write(f"VmHWM {kib}\\n")
sys.exit(code)
"""
"""Runs the CLI's main and prints its peak RSS: VmHWM, of this program's memory only
(``ru_maxrss`` of a child also counts the pytest process it was forked from)."""


def export_peak_rss(db_url: str, out: Path, fmt: str) -> int:
    """Run ``archiver export --full`` in a child process; its peak RSS in bytes."""
    env = {**os.environ, "ARCHIVER_DATABASE_URL": db_url}
    done = subprocess.run(
        [sys.executable, "-c", PEAK_PROBE, "export", str(out), "--full", "--format", fmt],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["responses"] == BIG_BODIES
    return int(done.stderr.decode().rsplit("VmHWM ", 1)[1]) * 1024


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
async def test_export_memory_is_bounded_with_large_bodies(
    sqlite_url: str, make_settings: Any, tmp_path: Path, fmt: str
) -> None:
    """Sixteen 4 MB bodies: the export held several copies of a 64 MiB chunk's bodies.

    Measured before the fix on 40 such bodies: 735 MB peak RSS to JSONL, 922 MB to CSV,
    873 MB to Parquet; the same with 80 bodies (bounded, but by 64 MiB chunks, each body
    held as bytes, as decoded text, as its content_parts text, as a JSON line and once
    more in the joined chunk). With chunks of 8 MiB, JSONL and CSV written row by row:
    152 MiB to JSONL, 252 MiB to Parquet.
    """
    async with await start_mock_server() as mock, open_database(sqlite_url) as engine:
        settings = make_settings(sqlite_url, mock.base_url, writer="inline", max_held_mb=64)
        await archive(engine, settings, [f"resp_big_m{i}" for i in range(BIG_BODIES)])
    peak = export_peak_rss(sqlite_url, tmp_path / "feed", fmt)
    print(f"export of {BIG_BODIES} bodies of 4 MB to {fmt}: peak RSS {peak / 2**20:.0f} MiB")
    assert peak < EXPORT_PEAK_BOUND, f"peak RSS {peak / 2**20:.0f} MiB"


# --- interruption --------------------------------------------------------------------------------


def temp_files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob(".*.tmp"))


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
async def test_an_export_stopped_while_writing_leaves_no_temporary_files_behind(
    sqlite_url: str, make_settings: Any, tmp_path: Path, stop: signal.Signals
) -> None:
    """Stopped mid-batch (systemd's timeout, the OOM killer), then run again in another format.

    The half-written batch stayed as hidden ``.tmp`` files for good (8 bodies of 4 MB:
    tens of MB per table file): only a run of the same cursor *and format* overwrote them.
    """
    out = tmp_path / "feed"
    async with await start_mock_server() as mock, open_database(sqlite_url) as engine:
        settings = make_settings(sqlite_url, mock.base_url, writer="inline", max_held_mb=64)
        await archive(engine, settings, [f"resp_big_t{i}" for i in range(8)])
    process = export_process(sqlite_url, out, "--format", "parquet")
    wait_until(lambda: temp_files(out), process)
    process.send_signal(stop)
    process.communicate()
    assert temp_files(out), "it stopped too late to leave anything"
    assert not (out / "_batches").exists()

    report = run_export(sqlite_url, out, "--format", "jsonl")
    assert (report["batch"], report["responses"]) == (1, 8)
    assert temp_files(out) == []


# --- fidelity ------------------------------------------------------------------------------------

NUMBERS_BODY = (
    b'{"id":"resp_numbers","object":"response","created_at":1764633600.25,"status":"completed",'
    b'"model":"qwen-plus","output":[],"usage":{"input_tokens":1,"output_tokens":1,"total_tokens":2},'
    b'"metadata":{"f":1.5e20,"e":1E16,"j":1e300,"g":1e-7,"h":12.0,"k":0.1,'
    b'"big":123456789012345678901234567890,"i":9007199254740993}}'
)


async def test_exported_numbers_are_the_same_from_both_databases(
    db_url: str, make_settings: Any, tmp_path: Path
) -> None:
    """A float of 1e16 or more is written by orjson with an exponent (``1.5e+20``);
    PostgreSQL's ``jsonb`` made it the integer 150000000000000000000, and 1e300 a 301-digit
    integer, so the export from PostgreSQL gave a warehouse integers where the one from
    SQLite (and the body) gave floats.
    """
    bodies = tmp_path / "bodies"
    bodies.mkdir()
    (bodies / "numbers.json").write_bytes(NUMBERS_BODY)
    async with (
        await start_mock_server(MockConfig(bodies_dir=bodies)) as mock,
        open_database(db_url) as engine,
    ):
        await archive(engine, make_settings(db_url, mock.base_url), ["resp_numbers"])
    report = run_export(db_url, tmp_path / "feed")
    line = (tmp_path / "feed" / report["files"][0]).read_bytes()
    metadata = json.loads(json.loads(line)["metadata"])
    expected = {
        "f": 1.5e20,
        "e": 1e16,
        "j": 1e300,
        "g": 1e-7,
        "h": 12.0,
        "k": 0.1,
        "big": 123456789012345678901234567890,
        "i": 9007199254740993,
    }
    assert metadata == expected
    assert {k: type(v) for k, v in metadata.items()} == {k: type(v) for k, v in expected.items()}


# --- beside writers ------------------------------------------------------------------------------


def assert_one_version_per_response(loader: ManifestLoader) -> None:
    """In every batch, each response's child rows carry that response row's change_seq."""
    for manifest_name in loader.loaded:
        manifest = json.loads(loader.loaded[manifest_name])
        seqs: dict[str, int] = {}
        children: list[dict[str, Any]] = []
        for name in manifest["files"]:
            rows = [json.loads(line) for line in (loader.out / name).read_bytes().splitlines()]
            if name.startswith("responses/"):
                seqs = {row["id"]: row["change_seq"] for row in rows}
            else:
                children.extend(rows)
        mixed = [c for c in children if c["change_seq"] != seqs[c["response_id"]]]
        assert not mixed, f"{manifest_name}: child rows of another version: {mixed[:3]}"


async def child_counts(engine: Any) -> dict[tuple[str, str], int]:
    """Child rows per (table, response_id) in the database."""
    counts: dict[tuple[str, str], int] = {}
    async with engine.connect() as conn:
        for table in export_tables()[1:]:
            stmt = select(table.c.response_id, func.count()).group_by(table.c.response_id)
            for rid, count in (await conn.execute(stmt)).all():
                counts[(str(table.name), rid)] = int(count)
    return counts


async def test_exports_beside_re_polls_and_a_renormalize_deliver_every_version_whole(
    db_url: str, make_settings: Any, tmp_path: Path
) -> None:
    """Exports every few milliseconds while the pipeline archives and re-polls responses
    (``pendingN``: a snapshot, then newer ones) and ``renormalize --all`` rewrites them all.

    At the end the loader holds, per response, the latest version with exactly the child
    rows the database has, and no batch mixes child rows of two versions.
    """
    out = tmp_path / "feed"
    loader = ManifestLoader(out)
    first = [f"resp_ok_r{i}" for i in range(20)] + ["resp_kitchensink_r"]
    later = [f"resp_pending3_r{i}" for i in range(6)] + [f"resp_ok_s{i}" for i in range(10)]
    async with await start_mock_server() as mock, open_database(db_url) as engine:
        settings = make_settings(db_url, mock.base_url, repoll=0.05)
        await archive(engine, settings, first)
        await QueueStore(engine).enqueue(later)
        daemon = asyncio.create_task(Worker(settings, engine, once=True).run())
        env = {**os.environ, "ARCHIVER_DATABASE_URL": db_url}
        rebuild = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "archiver", "renormalize", "--all", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        batches = 0
        while not daemon.done() or rebuild.returncode is None:
            report = await export(engine, out, chunk_size=4)
            batches += bool(report.files)
            loader.poll()
            await asyncio.sleep(0.01)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(rebuild.wait(), 0.001)
        assert (await daemon).stop_reason is None
        assert rebuild.returncode == 0, (await rebuild.stderr.read()).decode()  # type: ignore[union-attr]
        await export(engine, out, chunk_size=4)
        loader.poll()
        assert batches >= 2, "the exports did not run beside the writers"

        assert_one_version_per_response(loader)
        latest = loader.latest()
        async with engine.connect() as conn:
            db_seqs = dict((await conn.execute(select(responses.c.id, responses.c.change_seq))).all())
        assert {rid: row["change_seq"] for rid, row in latest.items()} == db_seqs
        assert all(row["status"] == "completed" for row in latest.values())
        delivered: dict[tuple[str, str], int] = {}
        for table, rows in loader.rows.items():
            for row in rows:
                if table != "responses" and row["change_seq"] == db_seqs[row["response_id"]]:
                    key = (table, row["response_id"])
                    delivered[key] = delivered.get(key, 0) + 1
        assert delivered == await child_counts(engine)


@pytest.mark.postgres
async def test_a_writer_that_commits_its_change_seq_late_is_not_skipped(
    pg_url: str, make_settings: Any, tmp_path: Path
) -> None:
    """A writer takes a change_seq and holds its transaction open; the pipeline archives
    more meanwhile (it waits for the counter), and an export runs: the late response must
    be delivered by a later export, never skipped because higher numbers went first.
    """
    out = tmp_path / "feed"
    loader = ManifestLoader(out)
    names = [c.name for c in responses.columns]
    copy = ", ".join(f'"{n}"' for n in names)
    values = ", ".join({"id": "'resp_late'", "change_seq": ":seq"}.get(n, f'"{n}"') for n in names)
    async with await start_mock_server() as mock, open_database(pg_url) as engine:
        settings = make_settings(pg_url, mock.base_url)
        await archive(engine, settings, ROUND_1)
        async with engine.connect() as late, late.begin():
            seq = (
                await late.execute(
                    text("UPDATE archive_changes SET seq = seq + 1 WHERE name = 'archive' RETURNING seq")
                )
            ).scalar_one()
            await late.execute(
                text(f"INSERT INTO responses ({copy}) SELECT {values} FROM responses WHERE id = :rid"),
                {"seq": seq, "rid": ROUND_1[0]},
            )
            await QueueStore(engine).enqueue(ROUND_2)
            daemon = asyncio.create_task(Worker(settings, engine, once=True).run())
            report = await export(engine, out)  # never waits for the open writer
            assert report.to_seq == seq - 1
            loader.poll()
            await asyncio.sleep(0.3)
            assert not daemon.done()  # its writer waits for the counter's row lock
        assert (await daemon).stop_reason is None
        await export(engine, out)
        loader.poll()
    assert sorted(loader.latest()) == sorted([*ROUND_1, *ROUND_2, "resp_late"])
    assert loader.latest()["resp_late"]["change_seq"] == seq


async def test_an_export_that_cannot_write_its_manifest_leaves_no_data_files(
    sqlite_url: str, make_settings: Any, tmp_path: Path
) -> None:
    """The manifest directory is read-only (a bind mount), so the manifest cannot be written.

    The data files were already renamed into place and stayed there, without a manifest,
    after an error that said nothing was exported: a loader reading the files by name (the
    README's DuckDB one-liner reads them all) took a batch the next run writes again with
    other rows.
    """
    out = tmp_path / "feed"
    (out / "_batches").mkdir(parents=True)
    async with await start_mock_server() as mock, open_database(sqlite_url) as engine:
        await archive(engine, make_settings(sqlite_url, mock.base_url), ROUND_1)
    try:
        with read_only(out / "_batches"):
            process = export_process(sqlite_url, out)
            _, stderr = process.communicate(timeout=60)
    except MountRefused as refused:
        pytest.skip(f"needs a read-only bind mount: {refused}")
    assert process.returncode == 1
    assert "cannot export into" in stderr.decode() and "Traceback" not in stderr.decode()
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert [name for name in left if name != "_schema.json"] == []
    report = run_export(sqlite_url, out)
    assert (report["batch"], report["responses"]) == (1, len(ROUND_1))


def restore(database: Path, backup: bytes) -> None:
    """Put a SQLite archive back as ``backup`` held it (no engine has it open)."""
    database.write_bytes(backup)
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)


async def test_a_batch_published_before_a_restore_is_never_rewritten(
    sqlite_url: str, make_settings: Any, tmp_path: Path
) -> None:
    """The archive is restored from a backup taken before batch 2, and the daemon goes on
    (its change_seq numbers are those batch 2 had). Batch 2 in the feed describes rows the
    restored archive never had, so it cannot be adopted; writing batch 2 again under the
    same names with the restored archive's rows changed a batch a loader had loaded (it
    never reads a manifest twice, so it never saw the new rows). The export refuses, one
    line naming the batch and the way out, and touches nothing; a --full export into a new
    directory is the restored archive's feed.
    """
    out = tmp_path / "feed"
    loader = ManifestLoader(out)
    database = Path(sqlite_url.removeprefix("sqlite:///"))
    async with await start_mock_server() as mock:
        settings = make_settings(sqlite_url, mock.base_url)
        async with open_database(sqlite_url) as engine:
            await archive(engine, settings, ROUND_1)
            await export(engine, out)
        backup = database.read_bytes()  # noqa: ASYNC240 - a test's backup, nothing runs meanwhile
        async with open_database(sqlite_url) as engine:
            await archive(engine, settings, ROUND_2)
            assert (await export(engine, out)).batch == 2
        assert loader.poll() == ["default-00000001.json", "default-00000002.json"]
        published = {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}
        restore(database, backup)  # the cursor is at batch 1 again
        after_restore = [f"resp_ok_k{i}" for i in range(5)]
        async with open_database(sqlite_url) as engine:
            await archive(engine, settings, after_restore)

        process = export_process(sqlite_url, out)
        _, stderr = process.communicate(timeout=60)
        err = stderr.decode()
        assert process.returncode == 1, err
        lines = [line for line in err.splitlines() if line.startswith("archiver: error: ")]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert "batch 2 of cursor 'default' is already published" in lines[0], lines[0]
        assert "--full" in lines[0] and "new directory" in lines[0], lines[0]
        assert {f: f.read_bytes() for f in out.rglob("*") if f.is_file()} == published
        async with open_database(sqlite_url) as engine:
            assert (await cursor_row(engine)).batch == 1

        fresh = tmp_path / "feed-after-restore"
        report = run_export(sqlite_url, fresh, "--full")
    exported = [json.loads(line)["id"] for line in (fresh / report["files"][0]).read_bytes().splitlines()]
    assert sorted(exported) == sorted(ROUND_1 + after_restore)


@pytest.mark.postgres
async def test_an_export_whose_connection_is_cut_at_the_commit_is_one_line_and_adopted(
    pg_url: str, make_settings: Any, tmp_path: Path
) -> None:
    """The server ends the export's connection while its cursor commit waits (a restart,
    ``pg_terminate_backend``): one line, exit 1, and the next run adopts the published batch.
    """
    out = tmp_path / "feed"
    loader = ManifestLoader(out)
    async with await start_mock_server() as mock, open_database(pg_url) as engine:
        settings = make_settings(pg_url, mock.base_url)
        await archive(engine, settings, ROUND_1)
        async with engine.connect() as killer, cursor_commit_blocked(engine, pg_url):
            process = export_process(pg_url, out)
            waiting = text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND query LIKE '%export_cursors%'"
            )
            deadline = time.monotonic() + 30
            while not (await killer.execute(waiting)).all():
                await killer.rollback()
                assert process.poll() is None and time.monotonic() < deadline
                await asyncio.sleep(0.02)
            _, stderr = process.communicate(timeout=60)
        assert process.returncode == 1, stderr.decode()
        lines = stderr.decode().strip().splitlines()
        assert lines[-1].startswith("archiver: error: ") and "Traceback" not in stderr.decode()
        assert loader.poll() == ["default-00000001.json"]
        await archive(engine, settings, ROUND_2)
        report = run_export(pg_url, out)
        loader.poll()
    assert report["batch"] == 2
    assert sorted(loader.latest()) == sorted(ROUND_1 + ROUND_2)


async def test_data_files_of_an_unfinished_batch_do_not_outlive_it(
    sqlite_url: str, make_settings: Any, tmp_path: Path
) -> None:
    """A kill between the data files' renames and the manifest leaves batch 1's data files
    in place, without a manifest, the cursor unmoved (made here by removing the manifest
    and the cursor row of a finished export). The next run, in another format, wrote batch
    1 again beside them: the stale JSON lines stayed, visible to ``*.jsonl`` globs, beside
    a manifest listing Parquet files.
    """
    out = tmp_path / "feed"
    async with await start_mock_server() as mock, open_database(sqlite_url) as engine:
        await archive(engine, make_settings(sqlite_url, mock.base_url), ROUND_1)
        await export(engine, out, fmt="jsonl")
        async with engine.begin() as conn:
            await conn.execute(export_cursors.delete())
    (out / "_batches" / "default-00000001.json").unlink()
    report = run_export(sqlite_url, out, "--format", "parquet")
    assert report["batch"] == 1
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert [name for name in left if name.endswith(".jsonl")] == []
    assert sorted(left) == sorted(report["files"])
