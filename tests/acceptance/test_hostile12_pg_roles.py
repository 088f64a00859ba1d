"""``archiver compact`` run by a PostgreSQL role that may read and write the archive but
does not own its tables (hostile12).

A DBA often gives the daemon's role only SELECT, INSERT, UPDATE and DELETE (no CREATE, not
the owner). Everything else works for such a role; ``VACUUM`` does not: PostgreSQL skips
each table the role does not own with a warning, and the statement succeeds. compact
must not then say the space was given back.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.acceptance.conftest import Cli, base_env
from tests.pgserver import PgCluster

pytestmark = pytest.mark.postgres


def _responses_file(pg_cluster: PgCluster, database: str) -> str:
    """The file node of ``responses``: a VACUUM FULL rewrites the table into a new one. (Its
    size was compared before, and autovacuum beside the test grew it by a page once.)"""
    return pg_cluster.psql("SELECT pg_relation_filenode('responses')", database).strip()


def test_compact_vacuum_by_a_role_that_does_not_own_the_tables_says_so(
    pg_url: str, pg_cluster: PgCluster, mock_process: str, tmp_path: Path
) -> None:
    database = re.sub(r"\?.*", "", pg_url).rsplit("/", 1)[1]
    owner_env = {**base_env(), "ARCHIVER_DATABASE_URL": pg_url, "ARCHIVER_BASE_URL": mock_process}
    assert Cli(owner_env, tmp_path)("migrate").returncode == 0
    role = f"dml_{database}"
    for sql in (
        f"CREATE ROLE {role} LOGIN",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
    ):
        pg_cluster.psql(sql, database)
    env = {**owner_env, "ARCHIVER_DATABASE_URL": pg_url.replace("://postgres@", f"://{role}@", 1)}
    ids = "\n".join(f"resp_ok_role{i}" for i in range(200)).encode()
    assert Cli(env, tmp_path)("enqueue", input=ids).returncode == 0
    assert Cli(env, tmp_path)("run", "--once").returncode == 0
    for _ in range(2):  # dead rows for a VACUUM FULL to give back
        assert Cli(env, tmp_path)("renormalize", "--all").returncode == 0
    before = _responses_file(pg_cluster, database)

    full = Cli(env, tmp_path)("compact", "--vacuum")
    # Nothing was rewritten (PostgreSQL skipped every table): compact must not say it was.
    assert _responses_file(pg_cluster, database) == before
    assert b"space given back" not in full.stderr + full.stdout
    assert full.returncode == 1, full.stderr
    lines = full.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("archiver: error: "), lines
    assert "owner" in lines[0] and role in lines[0], lines[0]

    plain = Cli(env, tmp_path)("compact")
    assert plain.returncode == 0, plain.stderr
    said = plain.stderr.decode()
    assert "is free for new rows" not in said, said
    assert "owner" in said, said
    assert b"Traceback" not in full.stderr + plain.stderr
