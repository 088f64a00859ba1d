"""A throwaway PostgreSQL server, for the test fixtures and ``bench/run.py --postgres throwaway``.

Debian's ``postgresql`` package: ``initdb`` and ``pg_ctl`` (as the ``postgres`` user via
``runuser -u postgres --`` when running as root: the server refuses to run as root),
listening on 127.0.0.1 only, trust auth, ``fsync=off``/``synchronous_commit=off`` (the
server is thrown away). No pytest here, so the benchmarks can use it too.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def pg_bindir() -> Path | None:
    """The newest installed server binaries (``initdb`` beside ``pg_ctl``), or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        bindir = Path(candidates[-1]).parent
    elif found := shutil.which("initdb"):
        bindir = Path(found).resolve().parent
    else:
        return None
    return bindir if (bindir / "pg_ctl").exists() else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    """A throwaway PostgreSQL server (:meth:`create`), or one given by URL (``external_url``)."""

    host: str
    port: int
    user: str
    bindir: Path | None = None
    datadir: Path | None = None
    as_user: list[str] | None = None
    external_url: str | None = None
    max_connections: int = 300

    @classmethod
    def create(cls, bindir: Path, *, max_connections: int = 300) -> PgCluster:
        """``initdb`` a new data folder in a temporary folder and start the server on it.

        :meth:`destroy` stops the server and deletes the folder.
        """
        root = Path(tempfile.mkdtemp(prefix="archiver-pg-"))
        datadir = root / "data"
        as_user: list[str] = []
        try:
            if os.geteuid() == 0:
                pw = pwd.getpwnam("postgres")
                os.chmod(root, 0o755)
                datadir.mkdir()
                os.chown(datadir, pw.pw_uid, pw.pw_gid)
                as_user = ["runuser", "-u", "postgres", "--"]
            subprocess.run(
                [*as_user, str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust",
                 "--encoding=UTF8", "--locale=C.UTF-8"],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
            cluster = cls(
                "127.0.0.1", free_port(), "postgres", bindir, datadir, as_user, None, max_connections
            )
            cluster.start()
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return cluster

    def admin_url(self, database: str = "postgres") -> str:
        """The URL of ``database`` on this server, as the admin role."""
        if self.external_url:
            base = self.external_url.rsplit("/", 1)[0]
            return f"{base}/{database}"
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.bindir is not None and self.datadir is not None
        cmd = [*(self.as_user or []), str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        assert self.datadir is not None
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.datadir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            f"-c max_connections={self.max_connections}"
        )
        self._ctl("-o", opts, "-l", str(self.datadir / "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: pg_ctl's smart, fast or immediate)."""
        self._ctl("-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        """Stop and start the server (for database-fault tests)."""
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        """Stop the server at once and delete what :meth:`create` made."""
        self.stop("immediate")
        if self.datadir is not None:
            shutil.rmtree(self.datadir.parent, ignore_errors=True)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one SQL command with psql; its output, trimmed."""
        psql = str(self.bindir / "psql") if self.bindir else "psql"
        out = subprocess.run(
            [psql, self.admin_url(database), "-v", "ON_ERROR_STOP=1", "-tAc", sql],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()


@contextmanager
def throwaway_server(max_connections: int = 100) -> Iterator[str]:
    """A server of its own for a benchmark run: its admin URL, destroyed afterwards.

    Raises:
        RuntimeError: no PostgreSQL server binaries on this machine.
    """
    bindir = pg_bindir()
    if bindir is None:
        raise RuntimeError("no PostgreSQL server binaries (apt-get install postgresql)")
    cluster = PgCluster.create(bindir, max_connections=max_connections)
    try:
        yield cluster.admin_url()
    finally:
        cluster.destroy()
