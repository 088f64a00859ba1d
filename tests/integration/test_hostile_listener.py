"""The daemon's HTTP listener attacked as a hostile client would: raw bytes over loopback.

Each test talks to the real aiohttp listener (``start_metrics_server`` with the ingest
routes, as ``archiver run`` builds it) through a raw socket, so the client can send what
no well-behaved library would: header bytes that are not UTF-8, numbers too large for a
float, trickled headers and bodies, more connections than anyone should open.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from archiver.ingest_http import IngestSecrets, load_ingest_secrets
from archiver.webhooks import decode_secret, sign
from tests.integration.test_push_ingest import SECRET, TOKEN, secret_files, served

pytestmark = pytest.mark.timeout(60)

KEY = decode_secret(SECRET)


@pytest.fixture
def secrets(tmp_path: Path) -> IngestSecrets:
    return load_ingest_secrets(secret_files(tmp_path))


async def raw_exchange(url: str, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` as is on a new connection and read the answer until the server closes
    or ``timeout`` passes."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(_read_answer(reader), timeout)
    finally:
        writer.close()


async def _read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def post(path: str, body: bytes, headers: list[bytes]) -> bytes:
    lines = [b"POST " + path.encode() + b" HTTP/1.1", b"Host: 127.0.0.1", *headers]
    lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def signed(body: bytes, webhook_id: bytes = b"msg_1") -> list[bytes]:
    """Standard Webhooks headers signing ``body`` now, over the id's bytes as sent."""
    at = int(time.time())
    signature = sign(KEY, webhook_id.decode(errors="surrogateescape"), at, body).encode()
    return [b"webhook-id: " + webhook_id, b"webhook-timestamp: %d" % at, b"webhook-signature: " + signature]


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """No record with a traceback reached the root logger (whose last resort prints it on
    stderr in the daemon). pytest also captures loggers that do not propagate: those are the
    listener's own, which print one line."""
    errors = [
        r
        for r in caplog.records
        if (r.exc_info or r.levelno >= logging.ERROR) and logging.getLogger(r.name).propagate
    ]
    assert not errors, [r.getMessage() for r in errors]


# --- header values no client library would send ------------------------------------------------


async def test_header_bytes_that_are_not_utf8_are_refused_without_a_traceback(
    sqlite_url: str, secrets: IngestSecrets, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp keeps such bytes as lone surrogates; encoding them again raised (500 and a traceback)."""
    caplog.set_level(logging.DEBUG)
    event = orjson.dumps({"type": "response.completed", "data": {"id": "resp_x"}})
    async with served(sqlite_url, secrets) as s:
        answer = await raw_exchange(
            s.url, post("/v1/enqueue", b'["resp_x"]', [b"Authorization: Bearer \xff\xfe"])
        )
        assert status_of(answer) == 401
        forged = [
            b"webhook-id: msg_\xff",
            b"webhook-timestamp: %d" % time.time(),
            b"webhook-signature: v1,AAAA",
        ]
        assert status_of(await raw_exchange(s.url, post("/webhooks/default", event, forged))) == 401
        # Signed over the very bytes sent, such an id is as good as any other.
        good = signed(event, webhook_id=b"msg_\xff\xfe")
        assert status_of(await raw_exchange(s.url, post("/webhooks/default", event, good))) == 200
        assert set(await s.rows()) == {"resp_x"}
    no_traceback(caplog)


@pytest.mark.parametrize("timestamp", [b"9" * 400, b"-" + b"9" * 400, b"1e9", b"nan"])
async def test_a_timestamp_no_float_can_hold_is_400(
    sqlite_url: str, secrets: IngestSecrets, caplog: pytest.LogCaptureFixture, timestamp: bytes
) -> None:
    """A 400-digit timestamp parsed as an int and then overflowed the float clock (500)."""
    event = orjson.dumps({"type": "response.completed", "data": {"id": "resp_x"}})
    async with served(sqlite_url, secrets) as s:
        headers = [b"webhook-id: msg_1", b"webhook-timestamp: " + timestamp, b"webhook-signature: v1,AAAA"]
        answer = await raw_exchange(s.url, post("/webhooks/default", event, headers))
        assert status_of(answer) in (400, 401), answer
        assert await s.rows() == {}
    no_traceback(caplog)


@pytest.mark.parametrize("event_type", [["response.completed"], {"a": 1}, 7, None])
async def test_a_signed_event_whose_type_is_not_a_string_is_acknowledged_and_ignored(
    sqlite_url: str, secrets: IngestSecrets, caplog: pytest.LogCaptureFixture, event_type: object
) -> None:
    """An unhashable ``type`` (a list, an object) raised in the frozenset lookup (500, and the
    provider retried the delivery for days)."""
    event = orjson.dumps({"type": event_type, "data": {"id": "resp_x"}})
    async with served(sqlite_url, secrets) as s:
        answer = await raw_exchange(s.url, post("/webhooks/default", event, signed(event)))
        assert status_of(answer) == 200, answer
        assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["ignored"] is True
        assert await s.rows() == {}
    no_traceback(caplog)


async def test_a_handler_that_raises_is_one_log_line_and_a_500(caplog: pytest.LogCaptureFixture) -> None:
    """Whatever a future handler misses, the listener answers 500 without printing a traceback."""
    from aiohttp import web

    from archiver.metrics import Metrics, start_metrics_server

    async def broken(_request: web.Request) -> web.Response:
        raise RuntimeError("unforeseen\nsecond line")

    async with await start_metrics_server(Metrics(), port=0, routes=[web.post("/broken", broken)]) as server:
        answer = await raw_exchange(server.url, post("/broken", b"", []))
        assert status_of(answer) == 500 and b"unforeseen" not in answer
        assert status_of(await raw_exchange(server.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")) == 200
    assert not [r for r in caplog.records if r.exc_info]


# --- slow and many clients -------------------------------------------------------------------


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """What the server sent before closing, or None when it kept the connection open."""
    try:
        return await asyncio.wait_for(reader.read(), seconds)
    except TimeoutError:
        return None


async def _answered_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """The answer the server sent (it may linger a while reading the rest of the body before
    it closes), or None when there was none in time."""
    try:
        return await asyncio.wait_for(_read_answer(reader), seconds)
    except TimeoutError:
        return None


async def test_a_client_trickling_its_headers_is_cut_off() -> None:
    """Slowloris: half a request head, a byte now and then. aiohttp's own idle timer was an
    hour, so every such connection held a descriptor that long."""
    from archiver.metrics import Metrics, start_metrics_server

    async with await start_metrics_server(Metrics(), port=0, idle_timeout_s=0.5) as server:
        pending = [await _connect(server.url) for _ in range(5)]
        for _, writer in pending:
            writer.write(b"POST /webhooks/default HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        for reader, writer in pending:
            writer.write(b"X-Slow: 1\r\n")
            assert await _closed_within(reader, 5.0) is not None
            writer.close()
        assert time.monotonic() - started < 3.0
        # A prompt client is served as before.
        assert status_of(await raw_exchange(server.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")) == 200


async def test_connections_beyond_the_cap_are_closed_at_once_and_the_cap_frees_up() -> None:
    """Every open connection is a descriptor: without a cap, a client opening thousands took
    the descriptors the database and the provider's connections need."""
    from archiver.metrics import Metrics, start_metrics_server

    async with await start_metrics_server(Metrics(), port=0, max_connections=20) as server:
        opened = [await _connect(server.url) for _ in range(60)]
        await asyncio.sleep(0.2)
        closed = [r for r, _ in opened if await _closed_within(r, 0.05) is not None]
        assert len(closed) >= 40, len(closed)
        for _, writer in opened:
            writer.close()
        await asyncio.sleep(0.2)
        assert status_of(await raw_exchange(server.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")) == 200


async def test_a_body_trickled_past_the_deadline_is_408_and_enqueues_nothing(
    sqlite_url: str, secrets: IngestSecrets
) -> None:
    """A handler read a slow body forever, holding what it had read and the connection."""
    async with served(sqlite_url, secrets, body_timeout_s=0.5) as s:
        reader, writer = await _connect(s.url)
        writer.write(
            b"POST /v1/enqueue HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
            b'Content-Length: 1000\r\n\r\n["resp_slow"'
        )
        started = time.monotonic()
        answer = await _answered_within(reader, 5.0)
        writer.close()
        assert answer is not None and status_of(answer) == 408, answer
        assert time.monotonic() - started < 3.0
        assert await s.rows() == {}


async def test_bodies_held_at_once_are_bounded_and_the_rest_are_503_at_once(
    sqlite_url: str, secrets: IngestSecrets, capfd: pytest.CaptureFixture[str]
) -> None:
    """Webhook bodies are read before the signature can be checked: 300 unauthenticated
    clients each sending most of 1 MiB made the daemon hold 330 MB (no bound but the number
    of connections). Bodies being read together now stay under a budget."""
    cap = 64 * 1024
    async with served(sqlite_url, secrets, webhook_max_bytes=cap, held_max_bytes=4 * cap) as s:
        slow = []
        for _ in range(10):
            reader, writer = await _connect(s.url)
            writer.write(b"POST /webhooks/default HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % cap)
            writer.write(b"x" * (cap // 2))
            slow.append((reader, writer))
        assert await _refused_for_the_budget(slow) == 6
        for _, writer in slow:
            writer.close()
        await asyncio.sleep(0.2)
        event = orjson.dumps({"type": "response.completed", "data": {"id": "resp_after"}})
        answer = await raw_exchange(s.url, post("/webhooks/default", event, signed(event)))
        assert status_of(answer) == 200  # the budget is back once those clients are gone
    out, err = capfd.readouterr()  # a client gone in the middle of its body is no error of ours
    assert "listener_failed" not in out + err and "Traceback" not in out + err


async def _refused_for_the_budget(slow: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> int:
    """How many of the clients still sending their bodies were answered at once: each with
    the budget's 503 and its Retry-After."""
    refused = 0
    for reader, _ in slow:
        answer = await _answered_within(reader, 0.5)
        if answer is not None:
            assert status_of(answer) == 503, answer
            assert b"retry-after" in answer.lower()
            refused += 1
    return refused


# --- compressed bodies (aiohttp inflates them before the handler reads) -------------------------


def _enqueue_request(body: bytes, encoding: bytes) -> bytes:
    headers = [b"Authorization: Bearer " + TOKEN.encode(), b"Content-Encoding: " + encoding]
    return post("/v1/enqueue", body, headers)


async def test_a_gzip_bomb_is_413_and_a_body_that_does_not_inflate_is_400_without_a_traceback(
    sqlite_url: str, secrets: IngestSecrets, caplog: pytest.LogCaptureFixture
) -> None:
    """The cap counts inflated bytes (a bomb is refused early); broken gzip/deflate raised in
    the handler (500, and aiohttp printed its traceback twice), and an encoding aiohttp cannot
    decode (br, zstd without their packages) printed one for a 400."""
    bomb = gzip.compress(b"\n" * (64 * 1024 * 1024), 9)
    async with served(sqlite_url, secrets, enqueue_max_bytes=1024 * 1024) as s:
        started = time.monotonic()
        assert status_of(await raw_exchange(s.url, _enqueue_request(bomb, b"gzip"))) == 413
        assert time.monotonic() - started < 2.0
        for body, encoding in [
            (b"\x1f\x8b not gzip at all", b"gzip"),
            (b"xx", b"deflate"),
            (b"xx", b"br"),
            (b"xx", b"zstd"),
        ]:
            answer = await raw_exchange(s.url, _enqueue_request(body, encoding))
            assert status_of(answer) == 400, (encoding, answer)
        ok = gzip.compress(b'["resp_gz"]')
        assert status_of(await raw_exchange(s.url, _enqueue_request(ok, b"gzip"))) == 200
        assert set(await s.rows()) == {"resp_gz"}
    no_traceback(caplog)


async def test_a_compressed_body_counts_as_its_cap_in_the_budget(
    sqlite_url: str, secrets: IngestSecrets, capfd: pytest.CaptureFixture[str]
) -> None:
    """A gzip body of a few hundred bytes on the wire inflates to up to the route's cap, so
    reserving its Content-Length let 300 such webhooks hold 300 MiB under a 32 MiB budget."""
    cap = 64 * 1024
    inflates = gzip.compress(b"x" * (cap - 10))
    async with served(sqlite_url, secrets, webhook_max_bytes=cap, held_max_bytes=4 * cap) as s:
        slow = []
        for _ in range(10):
            reader, writer = await _connect(s.url)
            writer.write(
                b"POST /webhooks/default HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
                b"Content-Length: %d\r\n\r\n" % len(inflates) + inflates[: len(inflates) // 2]
            )
            slow.append((reader, writer))
        refused = await _refused_for_the_budget(slow)
        for _, writer in slow:
            writer.close()
        assert refused == 6
        await asyncio.sleep(0.2)
    # A client gone in the middle of its body is no error of the daemon's.
    out, err = capfd.readouterr()
    assert "listener_failed" not in out + err and "Traceback" not in out + err


# --- the database restarts under a stream of pushes ------------------------------------------


@pytest.mark.postgres
async def test_pushes_through_a_postgresql_restart_lose_no_acknowledged_id(
    pg_cluster: Any, pg_url: str, secrets: IngestSecrets, caplog: pytest.LogCaptureFixture
) -> None:
    """Pushes and webhooks keep coming while the server restarts: each is 200 (its IDs
    committed) or 503 (the sender retries), never a 500 or a dropped answer, and the
    endpoints take pushes again once the server is back."""
    if pg_cluster.external_url:
        pytest.skip("cannot restart an external PostgreSQL server")
    acknowledged: set[str] = set()
    answers: dict[int, int] = {}
    stop = asyncio.Event()

    async def push(s: Any, n: int) -> None:
        while not stop.is_set():
            ids = [f"resp_push_{n}_{len(answers)}_{i}" for i in range(50)]
            status, answer = await s.enqueue(orjson.dumps(ids))
            answers[status] = answers.get(status, 0) + 1
            if status == 200:
                assert answer["queued"] + answer["already_known"] == 50
                acknowledged.update(ids)
            event = {"type": "response.completed", "data": {"id": f"resp_hook_{n}_{len(answers)}"}}
            status, _ = await s.webhook(event)
            answers[status] = answers.get(status, 0) + 1
            if status == 200:
                acknowledged.add(event["data"]["id"])
            await asyncio.sleep(0.01)

    async with served(pg_url, secrets) as s:
        pushers = [asyncio.create_task(push(s, n)) for n in range(3)]
        await asyncio.sleep(0.5)
        await asyncio.get_running_loop().run_in_executor(None, pg_cluster.restart)
        ok_before = answers.get(200, 0)
        deadline = time.monotonic() + 20
        while answers.get(200, 0) < ok_before + 10 and time.monotonic() < deadline:  # noqa: ASYNC110 - counts, no event
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*pushers)
        assert answers.get(200, 0) >= ok_before + 10, answers  # pushes work again
        assert set(answers) <= {200, 503}, answers
        rows = await s.rows()
    assert acknowledged <= set(rows), len(acknowledged - set(rows))
    no_traceback(caplog)


# --- many and odd IDs in one request -----------------------------------------------------------


async def test_ten_thousand_odd_ids_in_one_push_are_counted_and_stored_exactly(
    db_url: str, secrets: IngestSecrets
) -> None:
    """Every character class an ID may hold, the longest ID, and lookalikes that must be
    refused, 10,000 items in one array: the counts add up, the rows are the accepted IDs
    byte for byte, and the answer lists the first 1,000 rejected items only."""
    good = [f"resp_{i:05d}" for i in range(6000)]
    good += [f"{i:04d}-ab.cd:ef_{i}" for i in range(1000)]  # every allowed punctuation
    good += ["x" * 256, "A", "gen-1767225600-abcdefgh", "0f7a1c2e-1b7c-4b1e-9a3e-000000000001"]
    bad = ["x" * 257, "", "resp_\u0430", "resp_a/../b", "resp_%2F", "resp_a\u0000", "resp a", " resp_b"]
    bad += ["resp_\u200b", "resp_\ufeff", "resp_\N{FULLWIDTH DIGIT ONE}", "resp_a\nresp_b"]
    bad += [f"bad id {i}" for i in range(10000 - len(good) - len(bad))]
    items = good + bad
    assert len(items) == 10000
    async with served(db_url, secrets) as s:
        started = time.monotonic()
        status, answer = await s.enqueue(orjson.dumps(items))
        assert status == 200
        assert (answer["queued"], answer["already_known"], answer["rejected"]) == (len(good), 0, len(bad))
        assert len(answer["rejected_lines"]) == 1000
        assert answer["rejected_lines"][0]["line"] == len(good) + 1
        assert set(await s.rows()) == set(good)
        status, again = await s.enqueue(orjson.dumps(items))
        assert (again["queued"], again["already_known"]) == (0, len(good))
        assert time.monotonic() - started < 20


# --- the archive file fails under pushes -------------------------------------------------------


async def test_pushes_into_a_full_disk_are_503_and_none_acknowledged_is_lost(
    tmp_path: Path, secrets: IngestSecrets, caplog: pytest.LogCaptureFixture
) -> None:
    """The disk fills while pushes keep coming: 200 (committed) until it is full, then 503,
    never a 500; the acknowledged IDs are all there, and pushes work once space is back."""
    from tests.mounts import MountRefused, fill, tmpfs

    root = tmp_path / "disk"
    try:
        mounted = tmpfs(root, "8m")
        mounted.__enter__()
    except MountRefused as refused:
        pytest.skip(f"a tmpfs is needed: {refused}")
    try:
        acknowledged: set[str] = set()
        answers: dict[int, int] = {}
        async with served(f"sqlite:///{root / 'archive.db'}", secrets) as s:
            assert (await s.enqueue(b'["resp_first"]'))[0] == 200
            filler = fill(root, leave_bytes=200_000)
            for n in range(60):
                ids = [f"resp_full_{n:03d}_{i:03d}_{'x' * 200}" for i in range(100)]
                status, _ = await s.enqueue(orjson.dumps(ids))
                answers[status] = answers.get(status, 0) + 1
                if status == 200:
                    acknowledged.update(ids)
            assert answers.get(503, 0) > 0 and set(answers) <= {200, 503}, answers
            filler.unlink()
            assert (await s.enqueue(b'["resp_after_full"]'))[0] == 200
            rows = await s.rows()
        assert acknowledged <= set(rows)
        assert {"resp_first", "resp_after_full"} <= set(rows)
    finally:
        mounted.__exit__(None, None, None)
    no_traceback(caplog)


async def test_pushes_into_a_file_made_read_only_are_answered_truthfully(
    tmp_path: Path, secrets: IngestSecrets, caplog: pytest.LogCaptureFixture
) -> None:
    """The archive file is made read-only (a read-only bind mount: root ignores file modes)
    while the listener runs. The open connection still writes the WAL beside it, so a push
    may be 200 (committed to the WAL, there after the mount goes) or 503 (nothing
    enqueued); never a 500, and never a 200 for an ID that is then missing."""
    from tests.mounts import MountRefused, read_only

    db = tmp_path / "archive.db"
    answers: dict[str, int] = {}
    async with served(f"sqlite:///{db}", secrets) as s:
        assert (await s.enqueue(b'["resp_before_ro"]'))[0] == 200
        try:
            mounted = read_only(db)
            mounted.__enter__()
        except MountRefused as refused:
            pytest.skip(f"a read-only bind mount is needed: {refused}")
        try:
            for n in range(20):
                answers[f"resp_during_ro_{n}"] = (await s.enqueue(orjson.dumps([f"resp_during_ro_{n}"])))[0]
                event = {"type": "response.completed", "data": {"id": f"resp_hook_ro_{n}"}}
                answers[f"resp_hook_ro_{n}"] = (await s.webhook(event))[0]
            assert status_of(await raw_exchange(s.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")) == 200
        finally:
            mounted.__exit__(None, None, None)
        assert (await s.enqueue(b'["resp_after_ro"]'))[0] == 200
        rows = set(await s.rows())
    assert set(answers.values()) <= {200, 503}, answers
    assert {i for i, status in answers.items() if status == 200} <= rows
    assert {"resp_before_ro", "resp_after_ro"} <= rows
    no_traceback(caplog)


# --- what a body of rejected items costs ----------------------------------------------------------


@pytest.mark.parametrize("shape", ["ndjson", "array"])
async def test_a_body_of_rejected_items_is_counted_without_holding_each_rejection(
    sqlite_url: str, secrets: IngestSecrets, shape: str
) -> None:
    """Every rejected item was kept (reason and quoted text) though only 1,000 are shown: an
    8 MiB body of 2 million bad lines took the daemon to 700 MB (4 million array items: 955
    MB) and held its event loop 7 to 10 s. Half a megabyte of them is traced here."""
    import tracemalloc

    if shape == "ndjson":
        body, count = b"x y\n" * (128 * 1024), 128 * 1024
    else:
        count = 256 * 1024
        body = b"[" + b",".join([b"1"] * count) + b"]"
    async with served(sqlite_url, secrets) as s:
        tracemalloc.start()
        try:
            status, answer = await s.enqueue(io.BytesIO(body))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert status == 200
        assert (answer["queued"], answer["rejected"], len(answer["rejected_lines"])) == (0, count, 1000)
        assert answer["rejected_lines"][-1]["line"] == 1000
    assert peak < 16 * 1024 * 1024, f"{peak / 2**20:.0f} MiB traced for a body of {len(body) / 2**20:.1f} MiB"
