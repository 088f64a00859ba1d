"""PostgreSQL URLs written for libpq (``?sslmode=require`` ...) work or get one clear line.

Against the real PostgreSQL server of the fixtures (which has no TLS): libpq parameters
reach the connection, a Unix socket directory in ``?host=`` connects, ``sslmode=require``
is a one-line connection error, and unknown parameters are refused before connecting.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from archiver.db import open_database
from archiver.dburl import normalize_database_url
from archiver.errors import ConfigError
from archiver.pgurl import split_postgresql_url
from tests.pgserver import PgCluster

pytestmark = pytest.mark.postgres


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}
    return subprocess.run(
        [sys.executable, "-m", "archiver", *args],
        capture_output=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


async def test_libpq_parameters_reach_the_connection(pg_url: str) -> None:
    url = (
        f"{pg_url}?sslmode=prefer&application_name=nightly-archiver&connect_timeout=5"
        "&options=-c%20statement_timeout%3D12345%20-c%20lock_timeout%3D2s"
    )
    async with open_database(url) as engine, engine.connect() as conn:
        got = (
            await conn.execute(
                text(
                    "SELECT current_setting('application_name'), current_setting('statement_timeout'), "
                    "current_setting('lock_timeout')"
                )
            )
        ).one()
    assert tuple(got) == ("nightly-archiver", "12345ms", "2s")


async def test_a_unix_socket_directory_in_the_host_parameter(pg_cluster: PgCluster, pg_url: str) -> None:
    if pg_cluster.datadir is None:
        pytest.skip("an external server: its socket directory is unknown")
    database = pg_url.rsplit("/", 1)[1]
    url = f"postgresql://{pg_cluster.user}@/{database}?host={pg_cluster.datadir}&port={pg_cluster.port}"
    async with open_database(url) as engine, engine.connect() as conn:
        # A Unix socket connection has no client address.
        assert (await conn.execute(text("SELECT inet_client_addr()"))).scalar() is None


def test_sslmode_require_without_tls_on_the_server_is_one_line(pg_url: str, tmp_path: Path) -> None:
    done = _cli(
        "status", "--database-url", f"{pg_url}?sslmode=require&sslpassword=hunter2-canary", cwd=tmp_path
    )
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("archiver: error:"), stderr
    assert "hunter2-canary" not in stderr


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("sslmode=bogus", "use one of disable, allow, prefer, require, verify-ca, verify-full"),
        ("sslfactory=org.postgresql.ssl.NonValidatingFactory", "'sslfactory'"),
        ("connect_timeout=soon", "connect_timeout='soon'"),
        ("options=statement_timeout", "-c name=value"),
        ("sslmode=require&sslmode=disable", "more than once"),
    ],
)
def test_parameters_archiver_cannot_use_are_refused_with_exit_2(
    query: str, needle: str, pg_url: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace("?", r"\?")):
        normalize_database_url(f"{pg_url}?{query}")
    done = _cli("status", "--database-url", f"{pg_url}?{query}", cwd=tmp_path)
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert needle in stderr and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_only_libpq_parameters_go_to_asyncpg_as_a_dsn() -> None:
    url, args = split_postgresql_url(
        normalize_database_url(
            "postgresql://u@db.example/a?sslmode=verify-full&sslrootcert=/etc/ca.pem&port=6432"
        )
    )
    assert url.query == {"port": "6432"}
    assert args["dsn"] == "postgresql://?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem"
    assert args["server_settings"] == {"application_name": "archiver"} and args["timeout"] == 15.0


def test_user_password_and_dbname_parameters_as_libpq_takes_them() -> None:
    url, args = split_postgresql_url(normalize_database_url("postgresql:///?dbname=arch&user=u&password=pw"))
    assert url.database == "arch" and url.query == {"user": "u", "password": "pw"}
    assert "dsn" not in args
