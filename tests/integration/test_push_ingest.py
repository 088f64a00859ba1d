"""POST /v1/enqueue and POST /webhooks/default over real loopback HTTP, into real SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import standardwebhooks
from sqlalchemy import text

from archiver.db import open_database
from archiver.ingest_http import IngestSecrets, ingest_routes, load_ingest_secrets
from archiver.metrics import Metrics, start_metrics_server
from archiver.mockapi import start_mock_server
from archiver.queue import QueueStore
from archiver.settings import Settings
from archiver.worker import Worker

pytestmark = pytest.mark.timeout(90)

TOKEN = "tok-canary-ingest-5d1f0c9e7a"  # noqa: S105 - a canary
SECRET = "whsec_" + base64.b64encode(b"canary-webhook-secret-bytes-0042").decode()


@dataclass
class Served:
    url: str
    http: aiohttp.ClientSession
    queue: QueueStore
    bodies: list[str]

    async def post(self, path: str, data: Any = b"", **headers: str) -> tuple[int, dict[str, Any]]:
        async with self.http.post(self.url + path, data=data, headers=headers) as resp:
            raw = await resp.read()
        self.bodies.append(raw.decode(errors="replace"))
        return resp.status, (orjson.loads(raw) if raw[:1] == b"{" else {})

    async def enqueue(self, data: Any, token: str = TOKEN) -> tuple[int, dict[str, Any]]:
        return await self.post("/v1/enqueue", data, Authorization=f"Bearer {token}")

    async def webhook(
        self,
        payload: dict[str, Any],
        *,
        secret: str = SECRET,
        msg_id: str | None = None,
        age_s: float = 0,
        source: str = "default",
    ) -> tuple[int, dict[str, Any]]:
        body = orjson.dumps(payload).decode()
        msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
        at = datetime.now(UTC) - timedelta(seconds=age_s)
        signature = standardwebhooks.Webhook(secret).sign(msg_id, at, body)
        return await self.post(
            f"/webhooks/{source}",
            body.encode(),
            **{
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(at.timestamp())),
                "webhook-signature": signature,
            },
        )

    async def rows(self) -> dict[str, tuple[str, float]]:
        """ID -> (state, seconds until due)."""
        async with self.queue.engine.connect() as conn:
            now = (await conn.execute(text(f"SELECT {self.queue.now}"))).scalar()
            result = await conn.execute(text("SELECT id, state, next_attempt_at FROM archive_queue"))
            return {r[0]: (r[1], float(r[2]) - float(now)) for r in result.fetchall()}


def secret_files(tmp_path: Path) -> Settings:
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "secret").write_text(SECRET + "\n")
    return Settings(
        metrics_port=0,
        ingest_token_file=str(tmp_path / "token"),
        webhook_secret_file=str(tmp_path / "secret"),
    )


@asynccontextmanager
async def served(db_url: str, secrets: IngestSecrets, **limits: int) -> AsyncIterator[Served]:
    async with open_database(db_url) as engine:
        queue = QueueStore(engine)
        routes = ingest_routes(queue, secrets, **limits)
        async with (
            await start_metrics_server(Metrics(), port=0, routes=routes) as server,
            aiohttp.ClientSession() as http,
        ):
            bodies: list[str] = []
            yield Served(server.url, http, queue, bodies)
            for body in bodies:  # no answer ever carries the token or the secret
                assert TOKEN not in body and SECRET.removeprefix("whsec_") not in body


@pytest.fixture
def secrets(tmp_path: Path) -> IngestSecrets:
    return load_ingest_secrets(secret_files(tmp_path))


def completed(response_id: str, event: str = "response.completed") -> dict[str, Any]:
    return {"id": "evt_1", "type": event, "created_at": 1764590400, "data": {"id": response_id}}


# --- /v1/enqueue ------------------------------------------------------------------------------


async def test_a_json_array_and_ndjson_are_queued_and_answered_with_counts(
    db_url: str, secrets: IngestSecrets
) -> None:
    async with served(db_url, secrets) as s:
        status, answer = await s.enqueue(
            b'["resp_a", {"id": "resp_b", "created_at": 1764590400}, '
            b'{"id": "resp_c", "source": "other"}, "bad id", "resp_a"]'
        )
        assert status == 200
        assert answer["queued"] == 2 and answer["already_known"] == 1 and answer["rejected"] == 2
        assert [(r["line"], r["reason"]) for r in answer["rejected_lines"]] == [
            (3, "unknown source 'other'"),
            (4, "invalid response ID: character ' ' (space) not allowed"),
        ]
        status, answer = await s.enqueue(b'resp_a\n{"id": "resp_d"}\n\nno good!\n')
        assert status == 200
        assert (answer["queued"], answer["already_known"], answer["rejected"]) == (1, 1, 1)
        assert answer["rejected_lines"][0]["line"] == 4
        rows = await s.rows()  # committed before the answer
        assert set(rows) == {"resp_a", "resp_b", "resp_d"}
        assert all(state == "pending" for state, _ in rows.values())
        async with s.queue.engine.connect() as conn:
            created = (
                await conn.execute(text("SELECT response_created_at FROM archive_queue WHERE id = 'resp_b'"))
            ).scalar()
        assert created == 1764590400.0


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer "],
)
async def test_a_wrong_or_missing_token_is_401_and_enqueues_nothing(
    db_url: str, secrets: IngestSecrets, authorization: str | None
) -> None:
    async with served(db_url, secrets) as s:
        headers = {} if authorization is None else {"Authorization": authorization}
        status, answer = await s.post("/v1/enqueue", b'["resp_x"]', **headers)
        assert status == 401 and "token" in answer["error"]
        assert await s.rows() == {}
        assert (await s.enqueue(b'["resp_x"]'))[0] == 200  # the right token works


async def test_a_rejected_line_quoting_the_token_is_redacted(db_url: str, secrets: IngestSecrets) -> None:
    async with served(db_url, secrets) as s:
        status, answer = await s.enqueue(orjson.dumps([f"{TOKEN} /"]))
        assert status == 200 and answer["rejected"] == 1
        assert TOKEN not in answer["rejected_lines"][0]["text"]
        assert "***" in answer["rejected_lines"][0]["text"]


async def test_an_oversized_body_is_413_and_enqueues_nothing(db_url: str, secrets: IngestSecrets) -> None:
    cap = 4096
    fits = orjson.dumps([f"resp_{i:08d}" for i in range(250)])
    assert len(fits) <= cap
    too_big = orjson.dumps([f"resp_{i:08d}" for i in range(400)])
    assert len(too_big) > cap

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for i in range(0, len(too_big), 1000):
            yield too_big[i : i + 1000]

    async with served(db_url, secrets, enqueue_max_bytes=cap, webhook_max_bytes=cap) as s:
        assert (await s.enqueue(too_big))[0] == 413
        assert (await s.enqueue(chunked()))[0] == 413
        big_event = {**completed("resp_big"), "padding": "x" * cap}
        assert (await s.webhook(big_event))[0] == 413
        assert await s.rows() == {}
        status, answer = await s.enqueue(fits)
        assert status == 200 and answer["queued"] == 250


async def test_endpoints_without_a_secret_do_not_exist(db_url: str, tmp_path: Path) -> None:
    async with served(db_url, IngestSecrets()) as s:
        assert (await s.enqueue(b'["resp_x"]'))[0] == 404
        assert (await s.webhook(completed("resp_x")))[0] == 404
    token_only = load_ingest_secrets(secret_files(tmp_path).with_changes(webhook_secret_file=None))
    async with served(db_url, token_only) as s:
        assert (await s.webhook(completed("resp_x")))[0] == 404
        assert await s.rows() == {}


# --- /webhooks/default ----------------------------------------------------------------------


async def test_a_webhook_signed_by_standardwebhooks_enqueues_data_id(
    db_url: str, secrets: IngestSecrets
) -> None:
    async with served(db_url, secrets) as s:
        status, answer = await s.webhook(completed("resp_hook1"))
        assert status == 200 and answer["queued"] == 1
        for event in ("response.failed", "response.incomplete", "response.cancelled"):
            assert (await s.webhook(completed(f"resp_{event[9:]}", event)))[1]["queued"] == 1
        rows = await s.rows()
        assert set(rows) == {"resp_hook1", "resp_failed", "resp_incomplete", "resp_cancelled"}
        assert all(state == "pending" and due <= 0.5 for state, due in rows.values())


async def test_other_event_types_are_acknowledged_and_ignored(db_url: str, secrets: IngestSecrets) -> None:
    async with served(db_url, secrets) as s:
        status, answer = await s.webhook(completed("resp_batch", "batch.completed"))
        assert status == 200 and answer["ignored"] is True
        assert await s.rows() == {}


async def test_bad_signatures_and_stale_timestamps_enqueue_nothing(
    db_url: str, secrets: IngestSecrets
) -> None:
    other = "whsec_" + base64.b64encode(b"not-the-configured-webhook-key!!").decode()
    async with served(db_url, secrets) as s:
        assert (await s.webhook(completed("resp_h1"), secret=other))[0] == 401
        assert (await s.webhook(completed("resp_h2"), age_s=6 * 60))[0] == 401
        assert (await s.webhook(completed("resp_h3"), age_s=-6 * 60))[0] == 401
        assert (await s.post("/webhooks/default", orjson.dumps(completed("resp_h4"))))[0] == 400
        assert (await s.post("/webhooks/other", orjson.dumps(completed("resp_h5"))))[0] == 404
        assert await s.rows() == {}
        assert (await s.webhook(completed("resp_h6"), age_s=4 * 60))[0] == 200  # within 5 minutes


async def test_a_replayed_delivery_is_accepted_once(db_url: str, secrets: IngestSecrets) -> None:
    async with served(db_url, secrets) as s:
        status, first = await s.webhook(completed("resp_replay"), msg_id="msg_replay")
        assert status == 200 and first["queued"] == 1
        async with s.queue.engine.begin() as conn:  # as if a re-poll were scheduled for later
            await conn.execute(text("UPDATE archive_queue SET next_attempt_at = next_attempt_at + 3600"))
        status, second = await s.webhook(completed("resp_replay"), msg_id="msg_replay")
        assert status == 200 and second == {"duplicate": True, "queued": 0}
        assert (await s.rows())["resp_replay"][1] > 3000  # the replay did nothing
        status, third = await s.webhook(completed("resp_replay"), msg_id="msg_fresh")
        assert status == 200 and third["queued"] == 0
        assert (await s.rows())["resp_replay"][1] <= 0.5  # a new delivery makes it due now


async def test_a_completed_webhook_moves_an_in_progress_snapshot_back_to_pending(
    db_url: str, secrets: IngestSecrets, make_settings: Any
) -> None:
    """pending2: fetch 1 queued, fetch 2 in_progress, fetch 3 completed; max-polls 2 fails it at 2."""
    async with await start_mock_server() as mock, served(db_url, secrets) as s:
        settings = make_settings(db_url, mock.base_url, max_polls=2)
        await s.queue.enqueue(["resp_pending2_wh", "resp_ok_wh"])
        await Worker(settings, s.queue.engine, once=True).run()
        async with s.queue.engine.connect() as conn:
            status = (
                await conn.execute(text("SELECT status FROM responses WHERE id = 'resp_pending2_wh'"))
            ).scalar()
        assert status == "in_progress"
        rows = await s.rows()
        assert rows["resp_pending2_wh"][0] == "failed" and rows["resp_ok_wh"][0] == "archived"
        await s.queue.enqueue(["resp_wait_wh"])
        async with s.queue.engine.begin() as conn:
            await conn.execute(
                text("UPDATE archive_queue SET next_attempt_at = next_attempt_at + 3600 WHERE id = :i"),
                {"i": "resp_wait_wh"},
            )

        status_code, answer = await s.webhook(completed("resp_pending2_wh"))
        assert status_code == 200 and answer["requeued"] == 1 and answer["queued"] == 0
        assert (await s.webhook(completed("resp_ok_wh")))[1]["requeued"] == 0  # a completed snapshot stays
        assert (await s.webhook(completed("resp_wait_wh")))[1]["requeued"] == 0
        rows = await s.rows()
        assert rows["resp_pending2_wh"][0] == "pending" and rows["resp_pending2_wh"][1] <= 0.5
        assert rows["resp_ok_wh"][0] == "archived"
        assert rows["resp_wait_wh"][0] == "pending" and rows["resp_wait_wh"][1] <= 0.5

        await Worker(settings, s.queue.engine, once=True).run()
        async with s.queue.engine.connect() as conn:
            status = (
                await conn.execute(text("SELECT status FROM responses WHERE id = 'resp_pending2_wh'"))
            ).scalar()
        assert status == "completed"
        assert (await s.rows())["resp_pending2_wh"][0] == "archived"


# --- several sources ---------------------------------------------------------------------------

SECRET_A = "whsec_" + base64.b64encode(b"canary-webhook-secret-of-proj-a-07").decode()


async def test_each_source_has_its_webhook_and_enqueue_routes_by_source(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "secret_a").write_text(SECRET_A)
    process = secret_files(tmp_path)
    sources = {
        "default": process,
        "proj-a": process.with_changes(source="proj-a", webhook_secret_file=str(tmp_path / "secret_a")),
        "proj-b": process.with_changes(source="proj-b", webhook_secret_file=None),
    }
    secrets = load_ingest_secrets(process, sources)
    async with served(db_url, secrets) as s:
        status, answer = await s.webhook(completed("resp_hook_a"), secret=SECRET_A, source="proj-a")
        assert (status, answer["queued"]) == (200, 1)
        # Another source's secret does not sign for this one; a source without a secret,
        # or one not served, has no webhook.
        assert (await s.webhook(completed("resp_forged"), secret=SECRET, source="proj-a"))[0] == 401
        assert (await s.webhook(completed("resp_b"), source="proj-b"))[0] == 404
        assert (await s.webhook(completed("resp_z"), source="nosuch"))[0] == 404
        assert (await s.webhook(completed("resp_hook_d")))[0] == 200
        body = b'{"id": "resp_e1", "source": "proj-b"}\nresp_e2\n{"id": "resp_e3", "source": "zz"}\n'
        status, answer = await s.enqueue(body)
        assert (status, answer["queued"], answer["rejected"]) == (200, 2, 1)
        assert "unknown source" in answer["rejected_lines"][0]["reason"]
        async with s.queue.engine.connect() as conn:
            rows = dict((await conn.execute(text("SELECT id, source FROM archive_queue"))).fetchall())
    assert rows == {
        "resp_hook_a": "proj-a",
        "resp_hook_d": "default",
        "resp_e1": "proj-b",
        "resp_e2": "default",
    }
