"""Hostile: SQLite's temporary files on a full disk while ``compact`` sweeps orphans.

The orphan sweep (archiver/orphans.py) collects its candidates in a temporary table,
which SQLite spills into its temporary directory (``SQLITE_TMPDIR``, else ``TMPDIR``,
else ``/var/tmp``, ``/usr/tmp``, ``/tmp``), not beside the archive. When that disk is
full, SQLite says only "database or disk is full": the operator must be told which disk.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.acceptance.conftest import base_env
from tests.mounts import MountRefused, tmpfs

pytestmark = pytest.mark.timeout(120)

ORPHANS = 50_000


def _archive_with_orphans(path: Path) -> None:
    env = {**base_env(), "ARCHIVER_DATABASE_URL": f"sqlite:///{path}"}
    subprocess.run([sys.executable, "-m", "archiver", "migrate"], env=env, check=True, capture_output=True)
    with sqlite3.connect(path) as conn:
        rows = ((hashlib.sha256(b"%d" % i).hexdigest(), '{"type":"message"}') for i in range(ORPHANS))
        conn.executemany("INSERT INTO input_item_contents (sha256, item) VALUES (?, ?)", rows)


def _compact(path: Path, temp: Path) -> subprocess.CompletedProcess[bytes]:
    env = {**base_env(), "ARCHIVER_DATABASE_URL": f"sqlite:///{path}", "SQLITE_TMPDIR": str(temp)}
    return subprocess.run(
        [sys.executable, "-m", "archiver", "compact"], env=env, capture_output=True, timeout=100, check=False
    )


def test_a_full_temporary_directory_is_named_not_the_archive_disk(tmp_path: Path) -> None:
    """Found: ``the disk holding the database is full: /path/archive.db``, though the
    archive's disk had gigabytes free: the operator freed space on the wrong disk."""
    db = tmp_path / "archive.db"
    _archive_with_orphans(db)
    try:
        with tmpfs(tmp_path / "temp", "64k") as temp:
            done = _compact(db, temp)
    except MountRefused as exc:
        pytest.skip(f"needs a tmpfs: {exc}")
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 1, err
    assert "Traceback" not in err and "[SQL" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("archiver: error:")]
    assert len(errors) == 1, err
    assert str(tmp_path / "temp") in errors[0] and "SQLITE_TMPDIR" in errors[0], errors[0]
    with sqlite3.connect(db) as conn:  # nothing deleted, and compact works with room again
        assert conn.execute("SELECT count(*) FROM input_item_contents").fetchone() == (ORPHANS,)
    os.makedirs(tmp_path / "roomy")
    done = _compact(db, tmp_path / "roomy")
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM input_item_contents").fetchone() == (0,)
