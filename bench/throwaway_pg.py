"""A throwaway PostgreSQL server for benchmarks, started the way ``tests/conftest.py`` does.

Debian's ``postgresql`` package: ``initdb`` and ``pg_ctl`` (as the ``postgres`` user via
``runuser -u postgres --`` when running as root), listening on 127.0.0.1 only, trust
auth, ``fsync=off``/``synchronous_commit=off`` like the test fixtures (the server is
thrown away). ``python bench/run.py --postgres throwaway`` uses it.
"""

# ruff: noqa: S603  # initdb/pg_ctl from the installed server package
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
from pathlib import Path


def pg_bindir() -> Path | None:
    """The newest installed server binaries, or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Start a server, yield its admin URL (database ``postgres``), stop and delete it."""
    bindir = pg_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        raise RuntimeError("no PostgreSQL server binaries (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="archiver-bench-pg-"))
    datadir = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        # The server refuses to run as root.
        pw = pwd.getpwnam("postgres")
        os.chmod(root, 0o755)  # noqa: S103 - the postgres user must reach its data dir
        datadir.mkdir()
        os.chown(datadir, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust",
         "--encoding=UTF8", "--locale=C.UTF-8"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    port = _free_port()
    opts = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {datadir} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
    )
    ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(datadir)]
    subprocess.run(
        [*ctl, "-o", opts, "-l", str(datadir / "server.log"), "-w", "-t", "60", "start"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*ctl, "-m", "immediate", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
