"""A key the server echoed stays masked in the derived rows through every rebuild.

Found (hostile tester): the daemon masks a key a server echoes into a body (only ``raw``
keeps it), but ``archiver renormalize --all`` or ``archiver compact`` run from a shell
without the daemon's key variables re-derived the rows from ``raw`` and wrote the key
back, unmasked, into ``content_parts.text`` and so into every export. A rebuild can only
mask the secrets its own process knows. The writer now records ``secret_masked``, and a
rebuild that cannot find a secret in such a body leaves its rows alone and says so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import select

from archiver.db import open_database
from archiver.queue import QueueStore
from archiver.redaction import register_secret
from archiver.schema import content_parts, responses
from archiver.store import ArchiveStore
from archiver.worker import Worker
from tests.acceptance.conftest import base_env
from tests.loopback import serving

pytestmark = pytest.mark.timeout(180)

KEY = "Wd4-canary/8Rt1+Zk6pLq3Yv9"
"""No known key shape (no ``sk-``): only its registration can mask it."""
ECHO, CLEAN = "resp_echo_rebuild", "resp_clean_rebuild"


@pytest.fixture
async def echo_origin() -> AsyncIterator[str]:
    """A provider that puts the Bearer key it received into ``ECHO``'s output text."""

    async def answer(request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        said = f"you sent {key}" if rid == ECHO else "hello"
        part = {"type": "output_text", "text": said, "annotations": []}
        item = {"type": "message", "id": "m1", "role": "assistant", "status": "completed", "content": [part]}
        return web.json_response(
            {"id": rid, "object": "response", "status": "completed", "model": "m", "output": [item]}
        )

    app = web.Application()
    app.router.add_get("/v1/responses/{rid}", answer)
    async with serving(app) as origin:
        yield f"{origin}/v1"


def rebuild(command: str, db_url: str, cwd: Path, *, key: str | None) -> subprocess.CompletedProcess[str]:
    """``archiver renormalize --all`` or ``archiver compact`` as an operator's shell runs it."""
    env = base_env()  # no ARCHIVER_API_KEY, no key file
    if key is not None:
        env["ARCHIVER_API_KEY"] = key
    args = ["renormalize", "--all"] if command == "renormalize" else ["compact"]
    return subprocess.run(
        [sys.executable, "-m", "archiver", *args, "--json", "--database-url", db_url],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def derived(db_url: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``secret_masked`` and the output text of each response, as stored."""
    async with open_database(db_url) as engine, engine.connect() as conn:
        flags = dict((await conn.execute(select(responses.c.id, responses.c.secret_masked))).all())
        texts = dict((await conn.execute(select(content_parts.c.response_id, content_parts.c.text))).all())
    return flags, texts


MASKED = {ECHO: "you sent ***", CLEAN: "hello"}


@pytest.mark.parametrize("command", ["renormalize", "compact"])
async def test_a_rebuild_without_the_daemons_key_leaves_masked_rows_alone(
    command: str, echo_origin: str, db_url: str, make_settings: Any, tmp_path: Path
) -> None:
    register_secret(KEY)  # the daemon's process knows its key, as the CLI registers it
    async with open_database(db_url) as engine:
        await QueueStore(engine).enqueue([ECHO, CLEAN])
        await Worker(make_settings(db_url, echo_origin, api_key=KEY), engine, once=True).run()
        if command == "compact":  # bodies stored as received (before 0008): compact converts them
            bodies = {rid: await ArchiveStore(engine).raw_body(rid) for rid in (ECHO, CLEAN)}
            async with engine.begin() as conn:
                for rid, body in bodies.items():
                    stored = responses.update().where(responses.c.id == rid)
                    await conn.execute(stored.values(raw=body, raw_codec=None, raw_dict_id=None))
    assert await derived(db_url) == ({ECHO: True, CLEAN: None}, MASKED)

    careless = rebuild(command, db_url, tmp_path, key=None)
    assert careless.returncode == 1, careless.stderr
    report = json.loads(careless.stdout)
    assert report["failed"] == 1 and report["rewritten"] == 1, report
    [failure] = report["failures"]
    assert failure["response_id"] == ECHO and "does not know" in failure["error"]
    assert KEY not in careless.stdout + careless.stderr
    assert await derived(db_url) == ({ECHO: True, CLEAN: None}, MASKED)  # nothing unmasked

    informed = rebuild(command, db_url, tmp_path, key=KEY)
    assert informed.returncode == 0, informed.stderr
    assert json.loads(informed.stdout)["failed"] == 0
    assert KEY not in informed.stdout + informed.stderr
    assert await derived(db_url) == ({ECHO: True, CLEAN: None}, MASKED)


async def test_a_rebuild_that_knows_a_key_flags_rows_written_before_the_flag(
    echo_origin: str, db_url: str, make_settings: Any, tmp_path: Path
) -> None:
    """Rows written before migration 0017 carry no flag: one renormalize with the key sets it."""
    register_secret(KEY)
    async with open_database(db_url) as engine:
        await QueueStore(engine).enqueue([ECHO, CLEAN])
        await Worker(make_settings(db_url, echo_origin, api_key=KEY), engine, once=True).run()
        async with engine.begin() as conn:  # as an archive upgraded to 0017 holds them
            await conn.execute(responses.update().values(secret_masked=None))
    informed = rebuild("renormalize", db_url, tmp_path, key=KEY)
    assert informed.returncode == 0, informed.stderr
    assert await derived(db_url) == ({ECHO: True, CLEAN: None}, MASKED)
