"""The idle-in-transaction bound archiver's writing commands set on PostgreSQL (hostile12):
``--lease-seconds``, unless the DBA's setting is stricter or the URL's ``options`` set one."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import text

from archiver.db import create_engine
from tests.pgserver import PgCluster

pytestmark = pytest.mark.postgres


async def _shown(url: str) -> str:
    engine = create_engine(url, idle_in_transaction_s=60.0)
    try:
        async with engine.connect() as conn:
            return str((await conn.execute(text("SHOW idle_in_transaction_session_timeout"))).scalar())
    finally:
        await engine.dispose()


async def test_the_lease_bounds_a_session_idle_in_a_transaction_unless_told_otherwise(
    pg_url: str, pg_cluster: PgCluster
) -> None:
    database = re.sub(r"\?.*", "", pg_url).rsplit("/", 1)[1]
    assert await _shown(pg_url) == "1min"
    separator = "&" if "?" in pg_url else "?"
    assert await _shown(f"{pg_url}{separator}options=-c%20idle_in_transaction_session_timeout%3D0") == "0"
    pg_cluster.psql(f"ALTER DATABASE {database} SET idle_in_transaction_session_timeout = '100ms'")
    assert await _shown(pg_url) == "100ms"  # a DBA's stricter bound stays
    pg_cluster.psql(f"ALTER DATABASE {database} SET idle_in_transaction_session_timeout = '1h'")
    assert await _shown(pg_url) == "1min"
