"""The writer process itself: how it starts, fails and is chosen (see also test_writer_process.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from archiver.childproc import discard, start_writer_process
from archiver.db import create_engine, open_database
from archiver.errors import WriterFailed
from archiver.mockapi import body_for, start_mock_server
from archiver.outcomes import Archived
from archiver.queue import QueueStore
from archiver.store import ArchiveStore, WriteReport
from archiver.worker import Worker
from archiver.writer import InlineWriter, ProcessWriter, make_writer
from tests.recording import record_writes

pytestmark = pytest.mark.timeout(60)


async def test_a_writer_process_that_cannot_open_the_database_fails_the_first_write(
    make_settings: Any, tmp_path: Path
) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'missing-dir' / 'archive.db'}")
    writer = ProcessWriter(settings, ("warning", True))
    await writer.start()
    try:
        with pytest.raises(WriterFailed, match=r"did not start: DatabaseUnavailable: .*missing-dir"):
            await writer.write([])
    finally:
        await writer.close()


async def test_auto_writes_in_a_process_only_where_a_child_can_open_the_database(
    make_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file_url = f"sqlite:///{tmp_path / 'archive.db'}"
    for url, cores, expected in [
        (file_url, 2, ProcessWriter),
        (file_url, 1, InlineWriter),
        ("sqlite:///:memory:", 2, InlineWriter),
    ]:
        monkeypatch.setattr("archiver.writer.cores", lambda cores=cores: cores)
        engine = create_engine(url)
        try:
            assert type(make_writer(make_settings(url), engine, "auto")) is expected, (url, cores)
            assert type(make_writer(make_settings(url), engine, "inline")) is InlineWriter
        finally:
            await engine.dispose()


async def test_a_cancelled_write_leaves_the_pipe_usable(make_settings: Any, sqlite_url: str) -> None:
    """The reply to a write whose caller was cancelled is skipped; later writes still work."""
    async with open_database(sqlite_url):
        pass  # the schema, as the parent makes it before starting a writer
    writer = ProcessWriter(make_settings(sqlite_url), ("warning", True))
    await writer.start()
    try:
        assert await writer.write([]) == WriteReport()  # the child is ready
        cancelled = asyncio.create_task(writer.write([]))
        for _ in range(1000):  # until it is sent and waits for its reply
            if writer._waiting:
                break
            await asyncio.sleep(0)
        assert writer._waiting
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert await asyncio.wait_for(writer.write([]), 10) == WriteReport()
        assert not writer._waiting
    finally:
        await writer.close()


async def test_a_write_whose_send_fails_after_the_reader_saw_the_exit_raises_writer_failed(
    make_settings: Any, sqlite_url: str
) -> None:
    """The writer process dies while a batch is being sent, and the reply reader notices
    first: the write raises WriterFailed (the run then stops with a one-line error), not
    ValueError from the waiter list (once seen in test_writer_process.py's kill test)."""
    async with open_database(sqlite_url):
        pass
    writer = ProcessWriter(make_settings(sqlite_url), ("warning", True))
    await writer.start()
    try:
        assert await writer.write([]) == WriteReport()  # the child is ready
        child = writer._proc
        real_send = writer._send
        assert child is not None and writer._replies is not None
        replies = writer._replies

        async def send_to_a_child_that_just_died(message: Any) -> None:
            child.kill()
            await replies  # the reader sees the exit and fails every waiting write
            await real_send(message)  # the pipe is broken now

        writer._send = send_to_a_child_that_just_died  # type: ignore[method-assign]
        with pytest.raises(WriterFailed, match="the writer process exited"):
            await writer.write([])
        assert not writer._waiting
    finally:
        await writer.close()


@pytest.mark.parametrize("mode", ["process", "inline"])
async def test_results_reach_either_writer_without_their_parse(
    make_settings: Any, sqlite_url: str, mode: str
) -> None:
    """The fetch drops its parse before the result waits for the writer, which parses the
    bytes again: a parse waiting is not counted by ``--max-held-mb`` (the inline writer
    kept it, see tests/acceptance/test_waiting_parses.py)."""
    rid = "resp_ok_parsed1"
    async with await start_mock_server() as mock, open_database(sqlite_url) as engine:
        await QueueStore(engine).enqueue([rid])
        worker = Worker(make_settings(sqlite_url, mock.base_url, writer=mode), engine, once=True)
        handed = record_writes(worker)
        summary = await worker.run()
        assert summary.archived == 1
        assert await ArchiveStore(engine).raw_body(rid) == body_for(rid)
    (result,) = handed
    assert isinstance(result.outcome, Archived) and result.outcome.raw == body_for(rid)
    assert result.outcome.body is None


async def test_a_writer_process_started_early_is_the_one_that_writes(
    make_settings: Any, sqlite_url: str
) -> None:
    async with open_database(sqlite_url) as engine:
        early = start_writer_process()
        try:
            writer = make_writer(make_settings(sqlite_url), engine, "process", early)
            assert isinstance(writer, ProcessWriter)
            await writer.start()
            try:
                assert await writer.write([]) == WriteReport()
                assert writer._proc is not None and writer._proc.process is early
            finally:
                await writer.close()
            assert early.returncode == 0
        finally:
            discard(early)


async def test_a_writer_process_started_early_is_killed_when_the_writer_is_inline(
    make_settings: Any,
) -> None:
    url = "sqlite:///:memory:"
    early = start_writer_process()
    try:
        engine = create_engine(url)
        try:
            writer = make_writer(make_settings(url), engine, "auto", early)
            assert isinstance(writer, InlineWriter)
        finally:
            await engine.dispose()
        assert await asyncio.to_thread(early.wait, 10) == -9
    finally:
        discard(early)
    assert early.stdin is not None and early.stdin.closed
