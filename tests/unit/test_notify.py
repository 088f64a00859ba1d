"""sd_notify against real AF_UNIX datagram sockets: what systemd would receive, byte for byte."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import LogCapture

from archiver.notify import SystemdNotifier, watchdog_loop


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd's notification socket."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        yield sock, path
    finally:
        sock.close()


@pytest.fixture
def debug_logs() -> Iterator[list[dict[str, Any]]]:
    """Every log entry, debug included; restores the previous structlog set-up."""
    saved = structlog.get_config()
    capture = LogCapture()
    structlog.configure(
        processors=[capture], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)
    )
    try:
        yield capture.entries
    finally:
        structlog.configure(**saved)


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on ``sock``, without blocking."""
    got = []
    sock.setblocking(False)
    try:
        while True:
            got.append(sock.recv(4096))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2)
    return got


def test_datagrams_are_exactly_the_protocol_fields(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready() is True
    assert sock.recv(4096) == b"READY=1"
    assert notifier.ready("archiving: 3 pending")
    assert sock.recv(4096) == b"READY=1\nSTATUS=archiving: 3 pending"
    assert notifier.status("idle")
    assert sock.recv(4096) == b"STATUS=idle"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    assert notifier.stopping("finishing 4 in-flight requests")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=finishing 4 in-flight requests"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.notify("RELOADING=1", "STATUS=x")
    assert sock.recv(4096) == b"RELOADING=1\nSTATUS=x"
    assert drain(sock) == []


def test_status_stays_one_field(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.status("line one\nWATCHDOG=1")
    assert sock.recv(4096) == b"STATUS=line one WATCHDOG=1"
    assert notifier.status("queue: \u5f85\u529e 5")
    assert sock.recv(4096) == "STATUS=queue: \u5f85\u529e 5".encode()


def test_abstract_namespace_socket() -> None:
    name = f"archiver-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.enabled
        assert notifier.ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"


@pytest.mark.parametrize("value", [None, "", "relative/path", "vsock:2:1234", "@"])
def test_disabled_without_a_usable_socket(value: str | None) -> None:
    env = {"WATCHDOG_USEC": "30000000"}
    if value is not None:
        env["NOTIFY_SOCKET"] = value
    notifier = SystemdNotifier.from_env(env)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.status("x") is False


def test_from_env_defaults_to_the_process_environment(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = SystemdNotifier.from_env()
    assert notifier.watchdog_interval == 2.0
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"


@pytest.mark.parametrize(
    ("watchdog_env", "interval"),
    [
        ({"WATCHDOG_USEC": "60000000"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "500000"}, 0.25),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "sixty"}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    receiver: tuple[socket.socket, str], watchdog_env: dict[str, str], interval: float | None
) -> None:
    _, path = receiver
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": path, **watchdog_env})
    assert notifier.enabled
    assert notifier.watchdog_interval == interval


def test_failed_send_returns_false_and_logs_once_at_debug(
    tmp_path: Path, debug_logs: list[dict[str, Any]]
) -> None:
    path = str(tmp_path / "gone.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
    os.unlink(path)  # systemd went away: the socket path is gone
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    assert notifier.ready("up") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    failures = [e for e in debug_logs if e["event"] == "archiver.notify_failed"]
    assert len(failures) == 1
    assert failures[0]["log_level"] == "debug"
    assert failures[0]["socket"] == path


def test_socket_nobody_listens_on_returns_false(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
    assert path.exists()  # the file stays, nobody reads: ECONNREFUSED
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": str(path)})
    assert notifier.watchdog() is False


async def test_watchdog_loop_pings_while_healthy_and_withholds_when_not(
    receiver: tuple[socket.socket, str], debug_logs: list[dict[str, Any]]
) -> None:
    sock, path = receiver
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    assert notifier.watchdog_interval == 0.05
    healthy = True
    stop = asyncio.Event()
    task = asyncio.create_task(watchdog_loop(notifier, lambda: healthy, stop), name="watchdog")

    await asyncio.sleep(0.4)
    pings = drain(sock)
    assert set(pings) == {b"WATCHDOG=1"}
    assert 3 <= len(pings) <= 12

    healthy = False
    await asyncio.sleep(0.1)  # a ping already decided may still arrive
    drain(sock)
    await asyncio.sleep(0.4)
    assert drain(sock) == []  # wedged: systemd's watchdog would now fire
    assert [e["event"] for e in debug_logs].count("archiver.watchdog_withheld") == 1

    healthy = True
    await asyncio.sleep(0.3)
    assert b"WATCHDOG=1" in drain(sock)
    assert "archiver.watchdog_resumed" in [e["event"] for e in debug_logs]

    stop.set()
    await asyncio.wait_for(task, timeout=1)


async def test_watchdog_loop_treats_a_raising_check_as_unhealthy(
    receiver: tuple[socket.socket, str], debug_logs: list[dict[str, Any]]
) -> None:
    sock, path = receiver
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})

    def broken() -> bool:
        raise RuntimeError("claimer task died")

    stop = asyncio.Event()
    task = asyncio.create_task(watchdog_loop(notifier, broken, stop))
    await asyncio.sleep(0.3)
    assert drain(sock) == []
    withheld = [e for e in debug_logs if e["event"] == "archiver.watchdog_withheld"]
    assert len(withheld) == 1 and "claimer task died" in withheld[0]["error"]
    stop.set()
    await asyncio.wait_for(task, timeout=1)


async def test_watchdog_loop_returns_at_once_when_stopped_mid_wait(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "600000000"})
    stop = asyncio.Event()
    task = asyncio.create_task(watchdog_loop(notifier, lambda: True, stop))
    await asyncio.sleep(0.05)
    assert drain(sock) == [b"WATCHDOG=1"]  # the first ping goes out at once
    stop.set()
    await asyncio.wait_for(task, timeout=1)  # not after the 300 s interval


@pytest.mark.parametrize(
    "env",
    [
        {},  # not under systemd
        {"NOTIFY_SOCKET": "/run/systemd/notify"},  # no WatchdogSec=
        {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"},
    ],
)
async def test_watchdog_loop_returns_immediately_when_the_watchdog_is_off(env: dict[str, str]) -> None:
    notifier = SystemdNotifier.from_env(env)
    calls = []
    await asyncio.wait_for(watchdog_loop(notifier, lambda: calls.append(1) or True, asyncio.Event()), 1)
    assert calls == []
