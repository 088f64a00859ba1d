"""IDs through every path at once (enqueue, --follow, push, webhooks) while the daemon is killed.

Soak-like (a daemon killed and started again, about 20 s): marked slow.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from archiver.webhooks import decode_secret, sign

from .conftest import Cli

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

TOKEN = "tok-canary-allpaths-41c7e0"  # noqa: S105 - a canary
SECRET = "whsec_" + base64.b64encode(b"canary-allpaths-webhook-secret!!").decode()
API_KEY = "sk-canary-allpaths-90d1f3"
STATES = {"pending", "in_flight", "archived", "not_found", "failed"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: bytes, headers: dict[str, str]) -> int | str:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback only
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError as err:  # the daemon is down: nothing was acknowledged
        return type(err).__name__


def test_every_path_at_once_through_a_sigkill_loses_no_acknowledged_id(
    cli: Cli, mock_process: str, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "secret").write_text(SECRET + "\n")
    port = _free_port()
    env = {
        **cli.env,
        "ARCHIVER_BASE_URL": mock_process,
        "ARCHIVER_API_KEY": API_KEY,
        "ARCHIVER_METRICS_PORT": str(port),
        "ARCHIVER_INGEST_TOKEN_FILE": str(tmp_path / "token"),
        "ARCHIVER_WEBHOOK_SECRET_FILE": str(tmp_path / "secret"),
        "ARCHIVER_POLL_INTERVAL": "0.1",
        "ARCHIVER_LEASE_SECONDS": "5",
    }
    logs: list[Path] = []

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        log = tmp_path / f"{name}.log"
        logs.append(log)
        with log.open("wb") as out:  # the child keeps its own descriptor
            return subprocess.Popen(
                [sys.executable, "-m", "archiver", *args],
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_up() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the daemon did not come up")

    assert cli("enqueue", input=b"resp_ok_file_0\nresp_ok_file_1\n", **env).returncode == 0
    followed_file = tmp_path / "app.log"
    followed_file.write_text("")
    daemon = start("daemon1", "run")
    follower = start("follow", "enqueue", "--follow", str(followed_file))
    wait_up()
    key = decode_secret(SECRET)
    acknowledged: set[str] = {"resp_ok_file_0", "resp_ok_file_1"}
    written: list[str] = []
    answers: Counter[int | str] = Counter()
    started = time.monotonic()
    n = 0
    killed = False
    try:
        while time.monotonic() - started < 8:
            n += 1
            ids = [f"resp_ok_push{n:04d}_{i}" for i in range(20)]
            status = _post(
                f"http://127.0.0.1:{port}/v1/enqueue",
                json.dumps(ids).encode(),
                {"Authorization": f"Bearer {TOKEN}"},
            )
            answers[status] += 1
            if status == 200:
                acknowledged.update(ids)
            hook_id = f"resp_ok_hook{n:04d}"
            body = json.dumps({"type": "response.completed", "data": {"id": hook_id}}).encode()
            at = int(time.time())
            headers = {"webhook-id": f"msg_{n}", "webhook-timestamp": str(at)}
            headers["webhook-signature"] = sign(key, f"msg_{n}", at, body)
            status = _post(f"http://127.0.0.1:{port}/webhooks/default", body, headers)
            answers[status] += 1
            if status == 200:
                acknowledged.add(hook_id)
            with followed_file.open("a") as out:
                lines = [f"resp_ok_follow{n:04d}_{i}" for i in range(10)]
                out.write("".join(line + "\n" for line in lines))
                written.extend(lines)
            if not killed and time.monotonic() - started > 3:
                daemon.send_signal(signal.SIGKILL)
                daemon.wait(timeout=30)
                killed = True
                daemon = start("daemon2", "run")
                wait_up()
        time.sleep(1.5)  # --follow commits within a second
    finally:
        follower.send_signal(signal.SIGTERM)
        assert follower.wait(timeout=30) == 0
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    assert killed and answers[200] > 20, answers
    assert set(answers) <= {200, 503, "ConnectionRefusedError", "RemoteDisconnected", "ConnectionResetError"}

    done = cli("status", "--json", "--limit", "0", **env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report["states"]) <= STATES
    # Every acknowledged or followed ID is queued, each in one known state.
    assert report["total"] >= len(acknowledged | set(written))
    rows = _queue_rows(env["ARCHIVER_DATABASE_URL"])
    assert acknowledged <= set(rows), sorted(acknowledged - set(rows))[:5]
    assert set(written) <= set(rows), sorted(set(written) - set(rows))[:5]
    assert set(rows.values()) <= STATES
    for log in logs:
        text = log.read_bytes()
        assert b"Traceback" not in text, text.decode(errors="replace")[-2000:]
        for secret in (TOKEN, SECRET, API_KEY):
            assert secret.encode() not in text


def _queue_rows(url: str) -> dict[str, str]:
    """ID -> state, read with SQLAlchemy (both databases)."""
    import asyncio

    from sqlalchemy import text

    from archiver.db import open_database

    async def read() -> dict[str, str]:
        async with open_database(url, create=False) as engine, engine.connect() as conn:
            result = await conn.execute(text("SELECT id, state FROM archive_queue"))
            return {row[0]: row[1] for row in result.fetchall()}

    return asyncio.run(read())
