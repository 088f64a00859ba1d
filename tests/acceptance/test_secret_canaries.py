"""Canary secrets never leave the process: a hostile server echoes the key through every channel.

The server (on 127.0.0.1, in a thread of the test) reads the key from the Authorization
header and sends it back, one channel per response ID: the reason phrase, response headers,
4xx and 5xx JSON errors, a non-JSON 200 body (with the key URL-encoded, JSON-escaped and in
base64), a header over aiohttp's 8190-byte limit, a 429 with it as ``retry-after``, a 401
that stops the run. One valid body carries the key in its own content (``model``,
``metadata``, output text): ``raw`` keeps it byte-exact, every row derived from it masks it
(see tests/integration/test_secret_echo.py for every field and escape).

The real CLI runs in subprocesses (``run --once``, ``status``, ``status --json``,
``export --full``, ``check``) with debug logging; every byte it prints, every export file
(``raw`` aside), every database value but ``responses.raw``, and the SQLite file's bytes are
searched for the key in each of its forms, and for any piece of 8 characters of it (what a
cut-off copy leaves). The database password gets the same treatment on PostgreSQL.

The run's exit status is not asserted: a circuit breaker may end a run in which nearly
every ID fails with a non-zero status. What is asserted is that every channel was
exercised (the server counts its requests) and that nothing leaked.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import subprocess
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.canaries import forms, leaks
from tests.pgserver import free_port

from .conftest import Cli, base_env

pytestmark = [pytest.mark.timeout(120)]

CANARIES = [
    "Zx9canaryPLAINkey7783",
    "fw_3ZcanaryFireworks99",
    "hf_canaryHuggingFace7788",
    "nvapi-canaryNvidia-7788xyz",
    "r8_canaryReplicate7788",
    "sk-canary+with/slash+plus7788",
]
# The whole CLI run for a key of no known shape and for one whose URL-quoted and base64
# forms differ most (``+``, ``/``): every shape is masked by the same registration, and
# tests/unit/test_redaction.py checks each shape's forms and patterns (four more runs
# here cost ~50 s of the suite's 12 minutes).
THROUGH_THE_CLI = [CANARIES[0], CANARIES[5]]
FAST = (
    "--max-attempts",
    "2",
    "--backoff-base",
    "0.01",
    "--backoff-cap",
    "0.05",
    "--not-found-recheck",
    "0.05",
)
VALID = "resp_valid"
CHANNELS = [
    "resp_reason",
    "resp_header",
    "resp_json4xx",
    "resp_json5xx",
    "resp_json404",
    "resp_text200",
    "resp_bighdr",
    "resp_retryafter",
]
STOP = "resp_stop"


# --- what a leak looks like ---------------------------------------------------------------


def assert_clean(label: str, data: bytes, key: str) -> None:
    found = leaks(data, key)
    assert not found, f"{label} leaks {found[0]!r}: {data[:3000]!r}"


# --- the hostile server -----------------------------------------------------------------------


def valid_body(key: str) -> bytes:
    """A valid Response whose own content echoes the key."""
    body = {
        "id": VALID,
        "object": "response",
        "created_at": 1767225600,
        "status": "completed",
        "model": f"canary-model-{key}",
        "metadata": {"echo": key},
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": f"You pasted {key}.", "annotations": []}],
            }
        ],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _error_json(message: str, code: str, request_id: str) -> bytes:
    envelope = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return json.dumps({**envelope, "request_id": request_id}).encode()


async def _answer(server: HostileServer, request: web.Request) -> web.StreamResponse:
    rid = request.match_info["rid"]
    key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    server.hits[rid] += 1
    encoded = base64.b64encode(key.encode()).decode()
    if rid == VALID:
        return web.Response(body=valid_body(key), content_type="application/json")
    if rid == "resp_reason":
        return web.Response(status=500, reason=f"Upstream refused {key} today")
    if rid == "resp_header":
        headers = {
            "x-request-id": key,
            "x-echo": f"Bearer {key}",
            "www-authenticate": f'Basic realm="{encoded}"',
        }
        return web.Response(status=503, headers=headers)
    if rid == "resp_json4xx":
        body = _error_json(f"Incorrect API key provided: {key}. See the docs.", key, key)
        return web.Response(status=400, body=body, content_type="application/json")
    if rid == "resp_json5xx":
        body = _error_json(f"upstream rejected {key} ({encoded})", "internal_error", key)
        return web.Response(
            status=502, body=body, content_type="application/json", headers={"x-request-id": key}
        )
    if rid == "resp_json404":
        body = _error_json(f"Response with id '{rid}' not found. Key {key}", "not_found", key)
        return web.Response(status=404, body=body, content_type="application/json")
    if rid == "resp_text200":
        text = "\n".join(
            [
                f"<html>proxy error for {key}",
                urllib.parse.quote(key, safe=""),
                urllib.parse.quote_plus(key),
                json.dumps({"key": key}).replace("/", "\\/"),
                encoded,
                base64.urlsafe_b64encode(key.encode()).decode(),
                "Basic " + base64.b64encode(f"user:{key}".encode()).decode(),
                base64.b64encode(f"Bearer {key}".encode()).decode(),
                "</html>",
            ]
        )
        return web.Response(status=200, text=text, content_type="text/html")
    if rid == "resp_bighdr":
        # aiohttp quotes the first 100 bytes of a line that is too long, then "...":
        # the key starts at byte 88, so the quote cuts it after 12 characters.
        value = "a" * 88 + key + "b" * 8300 + key
        return web.Response(status=503, headers={"x-trace": value, "x-request-id": key})
    if rid == "resp_retryafter":
        return web.Response(status=429, headers={"retry-after": key, "x-request-id": key}, text=key)
    if rid == STOP:
        body = _error_json(f"Incorrect API key provided: {key}.", "invalid_api_key", key)
        return web.Response(status=401, reason=f"Bad key {key}", body=body, content_type="application/json")
    return web.Response(status=404)


class HostileServer:
    """The aiohttp app above on 127.0.0.1, served from its own thread and event loop."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.base_url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="hostile-server", daemon=True)
        self._stop: asyncio.Event | None = None

    def _serve(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._ready.set()  # also when it failed: __enter__ reports it
            self._loop.close()

    async def _main(self) -> None:
        async def answer(request: web.Request) -> web.StreamResponse:
            return await _answer(self, request)

        app = web.Application()
        app.router.add_get("/v1/responses/{rid}", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> HostileServer:
        self._thread.start()
        assert self._ready.wait(10) and self.base_url, "hostile server did not start"
        return self

    def __exit__(self, *_: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


# --- the database, searched ---------------------------------------------------------------------


def database_values(path: Path) -> tuple[list[tuple[str, str, bytes]], list[bytes]]:
    """(every value but ``responses.raw``, as (table, column, bytes); the ``raw`` values).

    ``raw`` is the body as received, byte-exact; every other value of every table, the
    rows derived from the valid body, queue and bookkeeping included, is searched.
    """
    searched: list[tuple[str, str, bytes]] = []
    allowed: list[bytes] = []
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            cursor = conn.execute(f'SELECT * FROM "{table}"')  # names from sqlite_master
            columns = [d[0] for d in cursor.description]
            for row in cursor:
                values = dict(zip(columns, row, strict=True))
                for column, value in values.items():
                    if value is None or isinstance(value, (int, float)):
                        continue
                    data = value if isinstance(value, bytes) else str(value).encode()
                    if (table, column) == ("responses", "raw"):
                        allowed.append(data)
                    else:
                        searched.append((table, column, data))
    return searched, allowed


def assert_database_clean(db_path: Path, key: str) -> None:
    searched, allowed = database_values(db_path)
    assert any(table == "archive_queue" and column == "last_error" for table, column, _ in searched)
    for table, column, data in searched:
        assert_clean(f"{table}.{column}", data, key)
    assert any(table == "content_parts" and b"***" in data for table, _, data in searched)
    # The file's bytes: everything but the raw bodies, byte for byte.
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    content = b"".join(p.read_bytes() for p in sorted(db_path.parent.glob(db_path.name + "*")))
    assert b"You pasted ***." in content, "the masked derived row is in the file: the search sees it"
    for value in sorted(allowed, key=len, reverse=True):
        if len(value) >= 8:
            content = content.replace(value, b"#")
    assert_clean("the database file", content, key)


# --- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", THROUGH_THE_CLI)
def test_a_key_echoed_through_every_channel_is_never_shown_or_stored(
    key: str, hostile: HostileServer, tmp_path: Path
) -> None:
    db_path = tmp_path / "archive.db"
    env = {**base_env(), "ARCHIVER_DATABASE_URL": f"sqlite:///{db_path}", "ARCHIVER_LOG_LEVEL": "debug"}
    cli = Cli(env, tmp_path)
    keyed = {"ARCHIVER_API_KEY": key, "ARCHIVER_BASE_URL": hostile.base_url}
    hostile.hits.clear()
    outputs: list[tuple[str, subprocess.CompletedProcess[bytes]]] = []

    queued = cli("enqueue", input="\n".join([VALID, *CHANNELS]).encode())
    assert queued.returncode == 0, queued.stderr
    for attempt in range(3):  # a circuit breaker may pause the run before every ID was asked
        outputs.append((f"run {attempt}", cli("run", "--once", *FAST, **keyed)))
        if all(hostile.hits[rid] for rid in [VALID, *CHANNELS]):
            break
    assert {rid: hostile.hits[rid] for rid in [VALID, *CHANNELS] if not hostile.hits[rid]} == {}

    # A 401 with the key in its reason phrase and body stops the run.
    assert cli("enqueue", input=STOP.encode()).returncode == 0
    outputs.append(("run (stop)", cli("run", "--once", *FAST, **keyed)))
    assert hostile.hits[STOP] >= 1

    shown = cli("show", VALID)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == valid_body(key)

    for args in (("status",), ("status", "--json"), ("check",)):
        outputs.append((" ".join(args), cli(*args, **keyed)))
    export = cli("export", "out", "--full", **keyed)
    outputs.append(("export", export))
    assert export.returncode == 0, export.stderr

    assert json.loads(dict(outputs)["status --json"].stdout)["states"]["archived"] == 1
    for label, out in outputs:
        assert_clean(f"stdout of {label}", out.stdout, key)
        assert_clean(f"stderr of {label}", out.stderr, key)
    assert b"***" in b"".join(out.stderr for _, out in outputs), "the errors were there, masked"

    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.parent.name == "content_parts" for p in files)
    for path in files:
        data = path.read_bytes()
        if path.parent.name.startswith("_") or path.parent == tmp_path / "out":
            assert_clean(f"export {path.name}", data, key)
        else:  # a table's rows: only the valid response's, masked but for its raw body
            for line in data.splitlines():
                row = json.loads(line)
                assert VALID in (row.get("id"), row.get("response_id")), (path, row)
                if "raw" in row:
                    assert row["raw"].encode() == valid_body(key)
                derived = {name: value for name, value in row.items() if name != "raw"}
                assert_clean(f"export {path.name}", json.dumps(derived).encode(), key)

    assert_database_clean(db_path, key)


def test_status_masks_errors_stored_before_the_key_was_known(tmp_path: Path) -> None:
    # Rows written by an older archiver (or by hand) may hold the key: status masks it
    # with the key from the environment, the database itself is not rewritten. A key of
    # no known shape: only its registration can mask it.
    key = CANARIES[0]
    db_path = tmp_path / "archive.db"
    cli = Cli({**base_env(), "ARCHIVER_DATABASE_URL": f"sqlite:///{db_path}"}, tmp_path)
    assert cli("enqueue", input=b"resp_old\n").returncode == 0
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "UPDATE archive_queue SET state = 'failed', last_status_code = 500, last_error = ?",
            (f"HTTP 500: key {key} rejected, {urllib.parse.quote(key, safe='')}",),
        )
    unmasked = cli("status", "--json")
    assert key.encode() in unmasked.stdout  # without the key at hand, nothing to mask
    for args in (("status",), ("status", "--json")):
        out = cli(*args, ARCHIVER_API_KEY=key)
        assert out.returncode == 0, out.stderr
        assert_clean(" ".join(args), out.stdout + out.stderr, key)
        assert b"***" in out.stdout


# --- the database password on PostgreSQL ----------------------------------------------------------

PASSWORD = "Pw9canaryDBsecret4411"  # noqa: S105 (a canary)
LEFT, RIGHT = "Left9canaryAt", "Right7canaryTail"


def _pg_urls(pg_url: str) -> dict[str, str]:
    parts = urllib.parse.urlsplit(pg_url)
    user, host, port, db = parts.username or "postgres", parts.hostname, parts.port, parts.path
    return {
        "userinfo": f"postgresql://{user}:{PASSWORD}@{host}:{port}{db}",
        "unescaped_at": f"postgresql://{user}:{LEFT}@{RIGHT}@{host}:{port}{db}",
        "query": f"postgresql://{user}@{host}:{port}{db}?password={PASSWORD}",
        "closed_port": f"postgresql://{user}:{PASSWORD}@127.0.0.1:{free_port()}{db}",
        "closed_port_query": f"postgresql://{user}@127.0.0.1:{free_port()}{db}?password={PASSWORD}",
    }


@pytest.mark.postgres
@pytest.mark.parametrize("shape", list(_pg_urls("postgresql://u@h:1/db")))
def test_the_database_password_is_never_shown(shape: str, pg_url: str, tmp_path: Path) -> None:
    url = _pg_urls(pg_url)[shape]
    env = {
        **base_env(),
        "ARCHIVER_DATABASE_URL": url,
        "ARCHIVER_LOG_LEVEL": "debug",
        "ARCHIVER_API_KEY": CANARIES[0],
        "ARCHIVER_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
    }
    cli = Cli(env, tmp_path)
    secrets = [PASSWORD, LEFT, RIGHT, f"{LEFT}@{RIGHT}"]
    printed = b""
    for args in (("run", "--once", "--writer", "process"), ("status",), ("status", "--json"), ("check",)):
        out = cli(*args, timeout=60)
        printed += out.stdout + out.stderr
        for secret in secrets:
            for form in forms(secret):
                assert form not in out.stdout + out.stderr, (args, form, out.stderr[-2000:])
    if shape.startswith("closed_port"):
        assert b"archiver: error:" in printed or b"unreachable" in printed, printed[-2000:]
    elif shape != "unescaped_at":
        assert b"run_started" in printed, printed[-2000:]
