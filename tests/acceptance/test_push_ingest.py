"""The daemon's push ingestion as an operator uses it: curl-like POSTs to a running `archiver run`."""

from __future__ import annotations

import base64
import json
import signal
import socket
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import standardwebhooks

from .conftest import Cli, start_daemon

pytestmark = pytest.mark.timeout(150)

TOKEN = "tok-canary-daemon-8c2b7e41f0"  # noqa: S105 - a canary
SECRET_KEY = base64.b64encode(b"canary-daemon-webhook-secret-077").decode()
SECRET = "whsec_" + SECRET_KEY


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback only
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _states(cli: Cli) -> dict[str, str]:
    """ID -> state, from the database."""
    done = cli("status", "--json", "--limit", "0")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["states"]


def _wait(check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


def test_push_ingestion_into_a_running_daemon(cli: Cli, mock_process: str, tmp_path: Path) -> None:
    (tmp_path / "ingest_token").write_text(TOKEN + "\n")
    (tmp_path / "webhook_secret").write_text(SECRET + "\n")
    port = _free_port()
    env = {
        **cli.env,
        "ARCHIVER_BASE_URL": mock_process,
        "ARCHIVER_METRICS_PORT": str(port),
        "ARCHIVER_INGEST_TOKEN_FILE": str(tmp_path / "ingest_token"),
        "ARCHIVER_WEBHOOK_SECRET_FILE": str(tmp_path / "webhook_secret"),
        "ARCHIVER_POLL_INTERVAL": "0.1",
        "ARCHIVER_REPOLL": "0.05",
        "ARCHIVER_MAX_POLLS": "2",
        "ARCHIVER_LOG_LEVEL": "debug",
    }
    proc = start_daemon(env, tmp_path)
    base = f"http://127.0.0.1:{port}"
    bodies: list[str] = []

    def post(path: str, body: bytes, **headers: str) -> tuple[int, dict]:
        status, text = _post(base + path, body, headers)
        bodies.append(text)
        return status, json.loads(text) if text.startswith("{") else {}

    def up() -> bool:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2):  # noqa: S310
                return True
        except OSError:
            return proc.poll() is not None

    try:
        _wait(up)
        assert proc.poll() is None
        bearer = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        array = [f"resp_ok_push{i:03d}" for i in range(20)]
        status, answer = post("/v1/enqueue", json.dumps(array).encode(), **bearer)
        assert (status, answer["queued"], answer["rejected"]) == (200, 20, 0)
        ndjson = "".join(json.dumps({"id": f"resp_ok_nd{i:03d}"}) + "\n" for i in range(10))
        status, answer = post("/v1/enqueue", (ndjson + "resp_pending2_push\nbad id\n").encode(), **bearer)
        assert (status, answer["queued"], answer["rejected"]) == (200, 11, 1)
        assert answer["rejected_lines"][0]["line"] == 12

        for wrong in ({}, {"Authorization": "Bearer nope"}):
            status, answer = post("/v1/enqueue", b'["resp_ok_never"]', **wrong)
            assert status == 401
        status, _ = post("/v1/enqueue", b"x" * (9 * 1024 * 1024), **bearer)
        assert status == 413

        # All 30 archived; resp_pending2_push failed after 2 polls, its in_progress snapshot kept.
        _wait(lambda: _states(cli)["archived"] == 30 and _states(cli)["failed"] == 1)
        assert cli("show", "resp_ok_never").returncode != 0
        snapshot = cli("show", "resp_pending2_push")
        assert snapshot.returncode == 0 and json.loads(snapshot.stdout)["status"] == "in_progress"

        payload = json.dumps({"type": "response.completed", "data": {"id": "resp_pending2_push"}})
        msg_id = f"msg_{uuid.uuid4().hex}"
        now = datetime.now(UTC)
        signed = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": standardwebhooks.Webhook(SECRET).sign(msg_id, now, payload),
            "Content-Type": "application/json",
        }
        status, answer = post(
            "/webhooks/default", payload.encode(), **{**signed, "webhook-signature": "v1,AAAA"}
        )
        assert status == 401
        status, answer = post("/webhooks/default", payload.encode(), **signed)
        assert (status, answer["requeued"]) == (200, 1)
        _wait(lambda: _states(cli)["archived"] == 31)
        assert json.loads(cli("show", "resp_pending2_push").stdout)["status"] == "completed"
        status, answer = post("/webhooks/default", payload.encode(), **signed)  # the same delivery again
        assert (status, answer.get("duplicate")) == (200, True)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"archiver.ingest_enqueued" in out + err and b"archiver.webhook_enqueued" in out + err
    for secret in (TOKEN, SECRET, SECRET_KEY):
        assert secret.encode() not in out + err
        assert not any(secret in body for body in bodies)


@pytest.mark.parametrize("variable", ["ARCHIVER_INGEST_TOKEN_FILE", "ARCHIVER_WEBHOOK_SECRET_FILE"])
def test_a_missing_or_unreadable_secret_file_is_one_line_and_exit_2(
    sqlite_cli: Cli, tmp_path: Path, variable: str
) -> None:
    common = {"ARCHIVER_BASE_URL": "http://127.0.0.1:9/v1", "ARCHIVER_METRICS_PORT": str(_free_port())}
    for path, message in ((tmp_path / "missing", "not found"), (tmp_path, "cannot read")):
        done = sqlite_cli("run", **common, **{variable: str(path)})
        assert done.returncode == 2, done.stderr
        lines = done.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and str(path) in lines[0], lines
    flag = "--ingest-token-file" if "TOKEN" in variable else "--webhook-secret-file"
    done = sqlite_cli("run", flag, str(tmp_path / "missing"), **common)
    assert done.returncode == 2 and "not found" in done.stderr.decode()


def test_a_backfill_sharing_the_daemons_config_serves_no_webhook(
    sqlite_cli: Cli, mock_process: str, tmp_path: Path
) -> None:
    """The sources config is shared by every unit (ARCHIVER_CONFIG in archiver.env), and the
    daemon serves a source's webhooks (``webhook_secret_file``) on its listener. A backfill
    (``run --once``, no listener: README's units unset the port) must still run: it serves
    no webhook, so it neither needs the listener nor reads the secret."""
    config = tmp_path / "sources.toml"
    config.write_text(
        f'[sources.default]\nbase_url = "{mock_process}"\nwebhook_secret_file = "{tmp_path / "whsec"}"\n'
    )
    assert sqlite_cli("enqueue", input=b"resp_ok_backfill1\nresp_ok_backfill2\n").returncode == 0
    done = sqlite_cli("run", "--once", ARCHIVER_CONFIG=str(config))
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["archived"] == 2
    # With the listener (the daemon), the secret is still required and checked.
    port = str(_free_port())
    daemon = sqlite_cli("run", "--once", ARCHIVER_CONFIG=str(config), ARCHIVER_METRICS_PORT=port)
    assert daemon.returncode == 2 and "not found" in daemon.stderr.decode(), daemon.stderr
