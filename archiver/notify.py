"""The systemd notification protocol (``sd_notify``) without a dependency.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a filesystem path, or an abstract
socket written with a leading ``@``); the service sends newline-separated ``KEY=VALUE``
fields in one datagram: ``READY=1`` when it serves, ``STOPPING=1`` when it begins to stop,
``STATUS=...`` for ``systemctl status``, and ``WATCHDOG=1`` at least every
``WATCHDOG_USEC`` microseconds when ``WatchdogSec=`` is set. Outside systemd every call
is a no-op, so the daemon code never needs to ask whether it runs under systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Mapping

from archiver.logs import get_logger

log = get_logger()


class SystemdNotifier:
    """Sends state changes and watchdog pings to systemd; does nothing outside systemd.

    Build with :meth:`from_env`. Sending never raises: a service must not fail because
    its supervisor went away. The first failed send is logged at debug level.
    """

    def __init__(self, address: str | None = None, watchdog_interval: float | None = None) -> None:
        """
        Args:
            address: the socket address as ``socket.sendto`` takes it (a path, or
                ``"\\0name"`` for the abstract namespace); None disables the notifier.
            watchdog_interval: seconds between ``WATCHDOG=1`` pings, or None when systemd
                runs no watchdog for this process.
        """
        self.address = address
        self.watchdog_interval = watchdog_interval if address is not None else None
        self._failure_logged = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> SystemdNotifier:
        """The notifier systemd's environment describes.

        Reads ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``. The watchdog is
        honoured only when ``WATCHDOG_PID`` is absent or is this process (a child that
        inherited the variables must not ping for its parent).
        """
        address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        return cls(address, _watchdog_interval(env) if address is not None else None)

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notification socket."""
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"KEY=VALUE"`` each) in one datagram.

        Returns:
            True if the datagram was sent; False when disabled or the send failed.
        """
        if self.address is None or not fields:
            return False
        payload = "\n".join(fields).encode("utf-8", errors="replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, self.address)
        except OSError as exc:
            if not self._failure_logged:
                self._failure_logged = True
                log.debug(
                    "archiver.notify_failed",
                    socket=_printable(self.address),
                    error=f"{type(exc).__name__}: {exc}",
                )
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd the service is up (``READY=1``), with an optional status line."""
        return self.notify("READY=1", *_status_field(status))

    def stopping(self, status: str | None = None) -> bool:
        """Tell systemd the service is shutting down (``STOPPING=1``)."""
        return self.notify("STOPPING=1", *_status_field(status))

    def watchdog(self) -> bool:
        """Ping the watchdog (``WATCHDOG=1``)."""
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """Set the one-line status ``systemctl status`` shows."""
        return self.notify(*_status_field(text))


async def watchdog_loop(
    notifier: SystemdNotifier, is_healthy: Callable[[], bool], stop: asyncio.Event
) -> None:
    """Ping the watchdog every ``notifier.watchdog_interval`` while ``is_healthy()`` holds.

    A pipeline that is wedged (``is_healthy()`` false, or raising) stops pinging, so
    systemd kills and restarts it after ``WatchdogSec=``; if it recovers before then, the
    pings resume. Returns when ``stop`` is set, or at once when the watchdog is off.

    Args:
        notifier: where to send the pings.
        is_healthy: called before each ping; cheap and non-blocking.
        stop: set to end the loop.
    """
    interval = notifier.watchdog_interval
    if interval is None:
        return
    withheld = False
    while not stop.is_set():
        try:
            healthy = bool(is_healthy())
        except Exception as exc:
            healthy = False
            error: str | None = f"{type(exc).__name__}: {exc}"
        else:
            error = None
        if healthy:
            notifier.watchdog()
            if withheld:
                withheld = False
                log.info("archiver.watchdog_resumed")
        elif not withheld:
            withheld = True
            log.warning("archiver.watchdog_withheld", wait_s=interval, error=error)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


def _socket_address(value: str) -> str | None:
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # Linux abstract namespace
    if value.startswith("/"):
        return value
    if value:
        # e.g. vsock:CID:PORT (systemd 253+ in VMs): not spoken here.
        log.debug("archiver.notify_unsupported_socket", socket=value)
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "").strip()
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    # Ping at half the timeout, as sd_watchdog_enabled(3) recommends.
    return usec / 2_000_000


def _status_field(status: str | None) -> tuple[str, ...]:
    if status is None:
        return ()
    # A newline would start a new field; keep the status on one line.
    return ("STATUS=" + " ".join(status.splitlines()),)


def _printable(address: str) -> str:
    return "@" + address[1:] if address.startswith("\0") else address
