"""Operators make mistakes (issue 16): the database faults made real, through the real CLI.

- Commands that only read never create a database; those that create one say so once.
- A SQLite file deleted or replaced while ``archiver run`` works stops the run before its
  next batch commits, and nothing is written into (or left beside) the wrong file.
- A full disk (a small tmpfs) and a read-only file (a read-only bind mount; tests run as
  root, for whom ``chmod 0444`` means nothing) stop every command within seconds with one
  line and no SQL, in both writer modes; a rerun after the fix archives everything.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import base_env
from tests.mounts import MountRefused, fill, read_only, tmpfs
from tests.pgserver import PgCluster

FAULT_DEADLINE_S = 10.0
"""The contract: a permanent database fault is one clear line within this long."""

WRITERS = ["process", "inline"]


@dataclass
class Cli:
    """``python -m archiver`` in a subprocess, timed, with an optional pre-exec hook."""

    env: dict[str, str]
    cwd: Path
    preexec: Callable[[], None] | None = None
    last_duration_s: float = field(default=0.0, init=False)

    def __call__(self, *args: str, input: bytes | None = None, timeout: float = 60) -> Any:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "archiver", *args],
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            env=self.env,
            cwd=self.cwd,
            timeout=timeout,
            check=False,
            preexec_fn=self.preexec,
        )
        self.last_duration_s = time.monotonic() - started
        return done


def cli_for(tmp_path: Path, database_url: str, **env: str) -> Cli:
    return Cli({**base_env(), "ARCHIVER_DATABASE_URL": database_url, **env}, tmp_path)


def one_line_error(done: Any, *needles: str) -> str:
    """The one stderr line of an expected fault: no traceback, no SQL, no parameters."""
    err = done.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    assert "[SQL" not in err and "[parameters" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("archiver: error:")]
    assert len(errors) == 1, err
    assert len(lines) <= 4, err  # the error, and at most a few log lines before it
    for needle in needles:
        assert needle in errors[0], err
    return errors[0]


def states(cli: Cli) -> dict[str, int]:
    done = cli("status", "--json")
    assert done.returncode == 0, done.stderr
    counts: dict[str, int] = json.loads(done.stdout)["states"]
    return counts


def enqueue(cli: Cli, ids: list[str]) -> None:
    done = cli("enqueue", input="\n".join(ids).encode() + b"\n")
    assert done.returncode == 0, done.stderr


# --- creating a database, or not -------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["status", "--json"],
        ["show", "resp_ok1_x"],
        ["retry"],
        ["export", "OUT"],
        ["check"],
        ["renormalize", "--all"],
        ["compact"],
    ],
)
def test_commands_that_only_read_never_create_a_database(tmp_path: Path, command: list[str]) -> None:
    db = tmp_path / "typo.db"
    cli = cli_for(tmp_path, f"sqlite:///{db}")
    done = cli(*[str(tmp_path / "out") if part == "OUT" else part for part in command])
    assert done.returncode == 1, done.stderr
    assert str(db) in done.stderr.decode()
    assert len(done.stderr.decode().strip().splitlines()) == 1, done.stderr
    assert not db.exists() and not any(tmp_path.glob("typo.db*"))


def test_commands_that_create_a_database_say_so_once(tmp_path: Path, mock_process: str) -> None:
    for command in (["enqueue"], ["migrate"], ["run", "--once", "--base-url", mock_process]):
        db = tmp_path / f"{command[0]}.db"
        cli = cli_for(tmp_path, f"sqlite:///{db}")
        first = cli(*command, input=b"resp_ok1_x\n")
        assert first.returncode == 0, first.stderr
        assert first.stderr.decode().count(f"created a new archive at {db}") == 1, first.stderr
        again = cli(*command, input=b"resp_ok1_x\n")
        assert again.returncode == 0 and b"created" not in again.stderr, again.stderr
    demo_db = tmp_path / "demo-new.db"
    demo = cli_for(tmp_path, "sqlite:///ignored.db")(
        "demo", "--count", "1", "--database-url", f"sqlite:///{demo_db}"
    )
    assert demo.returncode == 0, demo.stderr
    assert demo.stderr.decode().count(f"created a new archive at {demo_db}") == 1, demo.stderr


@pytest.mark.parametrize(
    ("url", "suggestion"),
    [
        ("sqlite:///", "sqlite:///archive.db"),  # what sqlite:///$DB gives when DB is unset
        ("sqlite://", "sqlite:///archive.db"),
        ("archive.db", "sqlite:///archive.db"),
        ("sqlite://x.db", "sqlite:///x.db"),
        # An in-memory database under another name, and a driver option SQLAlchemy ignores.
        ("sqlite:///file:x.db?mode=memory&uri=true", "write the path alone, sqlite:///x.db"),
        ("sqlite:///a.db?mode=ro", "write the path alone, sqlite:///a.db"),
    ],
)
def test_a_url_naming_no_file_is_refused_with_a_suggestion(tmp_path: Path, url: str, suggestion: str) -> None:
    cli = cli_for(tmp_path, url)
    for command in (["enqueue"], ["status"]):
        done = cli(*command, input=b"resp_ok1_x\n")
        assert done.returncode == 2, done.stderr
        assert suggestion in one_line_error(done)
        assert b"queued" not in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_an_in_memory_database_only_when_asked_for_by_name(tmp_path: Path) -> None:
    done = cli_for(tmp_path, "sqlite:///:memory:")("enqueue", input=b"resp_ok1_x\n")
    assert done.returncode == 0 and done.stdout.startswith(b"queued 1"), done.stderr
    # run and demo share their database between tasks and a writer: a file, or one line.
    for command in (["run", "--once"], ["demo", "--count", "3", "--database-url", "sqlite:///:memory:"]):
        refused = cli_for(tmp_path, "sqlite:///:memory:")(*command)
        assert refused.returncode == 2 and b"needs a database file" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and b"Traceback" not in refused.stderr


def test_a_sqlite_file_of_another_application_is_never_made_an_archive(tmp_path: Path) -> None:
    db = tmp_path / "foreign.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id integer)")
    before = db.read_bytes()
    cli = cli_for(tmp_path, f"sqlite:///{db}")
    for command in (
        ["status"],
        ["show", "resp_ok1_x"],
        ["retry"],
        ["export", "OUT"],
        ["enqueue"],
        ["migrate"],
    ):
        done = cli(
            *[str(tmp_path / "out") if part == "OUT" else part for part in command], input=b"resp_ok1_x\n"
        )
        assert done.returncode == 1, (command, done.stderr)
        one_line_error(done, f"{db} is not an archiver archive (it has tables of its own: users)")
        assert b"queued" not in done.stdout
    check = cli("check")
    assert check.returncode == 1 and b"is not an archiver archive" in check.stdout + check.stderr, check
    assert db.read_bytes() == before


# --- a file deleted or replaced during a run ---------------------------------------------------


def start_run(cli: Cli, mock: str, writer: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "archiver", "run", "--once", "--writer", writer, "--base-url", mock],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**cli.env, "ARCHIVER_LOG_LEVEL": "info"},
        cwd=cli.cwd,
    )


def wait_for_first_batch(run: subprocess.Popen[bytes]) -> list[bytes]:
    """Read the run's log lines until its first batch is written (it runs on meanwhile)."""
    assert run.stderr is not None
    seen = []
    for line in run.stderr:
        seen.append(line)
        if b"archiver.batch_written" in line:
            return seen
    raise AssertionError(b"".join(seen).decode(errors="replace")[-3000:])


@pytest.fixture
def big_queue(tmp_path: Path) -> tuple[Cli, Path]:
    """An archive with 20,000 IDs queued: a run takes many seconds to work through it."""
    db = tmp_path / "archive.db"
    cli = cli_for(tmp_path, f"sqlite:///{db}")
    enqueue(cli, [f"resp_ok{i}_big" for i in range(20_000)])
    return cli, db


@pytest.mark.parametrize("writer", WRITERS)
def test_an_archive_deleted_during_a_run_stops_it_and_is_not_recreated(
    big_queue: tuple[Cli, Path], mock_process: str, writer: str
) -> None:
    cli, db = big_queue
    run = start_run(cli, mock_process, writer)
    try:
        logs = wait_for_first_batch(run)
        db.unlink()
        deleted_at = time.monotonic()
        out, err = run.communicate(timeout=60)
    finally:
        run.kill()
    stopped_after = time.monotonic() - deleted_at
    assert run.returncode == 1, err
    text = (b"".join(logs) + err).decode(errors="replace")
    assert "Traceback" not in text and "[SQL" not in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("archiver: error: the archive file") and f"{db} was deleted" in last, last
    assert out == b"", "a stopped run prints no summary counting rows that went with the old file"
    assert stopped_after < FAULT_DEADLINE_S
    # Nothing came back at the path: no new empty archive, no old WAL to replay into one.
    assert not any(db.parent.glob("archive.db*")), list(db.parent.iterdir())
    status = cli("status")
    assert status.returncode == 1 and f"no archive at {db}" in one_line_error(status)
    assert not db.exists()


@pytest.mark.parametrize("writer", WRITERS)
def test_an_archive_replaced_during_a_run_stops_it_and_the_new_file_is_left_intact(
    big_queue: tuple[Cli, Path], mock_process: str, writer: str, tmp_path: Path
) -> None:
    cli, db = big_queue
    other_db = tmp_path / "other.db"
    other = cli_for(tmp_path, f"sqlite:///{other_db}")
    enqueue(other, [f"resp_ok{i}_other" for i in range(7)])
    staged = tmp_path / "staged.db"
    shutil.copyfile(other_db, staged)
    run = start_run(cli, mock_process, writer)
    try:
        wait_for_first_batch(run)
        os.replace(staged, db)  # `mv other.db archive.db` while the run works
        out, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 1, err
    last = err.decode(errors="replace").strip().splitlines()[-1]
    assert f"{db} was replaced by another file" in last, last
    assert out == b""
    # The file now at the path is the other archive, whole: nothing of the run's was
    # written into it, and no WAL of the old file is replayed into it.
    assert states(cli) == {"pending": 7, "in_flight": 0, "archived": 0, "not_found": 0, "failed": 0}
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM archive_queue WHERE id LIKE '%_big'").fetchone() == (0,)


# --- a full disk --------------------------------------------------------------------------------


@dataclass
class SmallDisk:
    """A file system that can be filled: a real tmpfs, or (where mounting is refused) the
    file size limit RLIMIT_FSIZE, which SQLite reports the same way ("database or disk is
    full"). ``how`` says which."""

    root: Path
    how: str
    filler: Path | None = None
    limit: int | None = None

    @property
    def full_message(self) -> str:
        # Past RLIMIT_FSIZE a write fails with EFBIG, which SQLite calls a disk I/O error.
        return "the disk holding the database " + ("is full" if self.how == "tmpfs" else "fails")

    def fill(self, leave_bytes: int) -> None:
        if self.how == "tmpfs":
            self.filler = fill(self.root, leave_bytes)
        else:
            biggest = max(p.stat().st_size for p in self.root.iterdir())
            self.limit = biggest + leave_bytes

    def free(self) -> None:
        if self.filler is not None:
            self.filler.unlink()
            self.filler = None
        self.limit = None

    def preexec(self) -> None:
        if self.limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.limit))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    root = tmp_path / "disk"
    try:
        with tmpfs(root, "24m"):
            yield SmallDisk(root, "tmpfs")
    except MountRefused as refused:
        # No loop device either way: the fallback is a per-process file size limit.
        sys.stderr.write(f"small_disk: no tmpfs ({refused}); using RLIMIT_FSIZE instead\n")
        root.mkdir(exist_ok=True)
        yield SmallDisk(root, "RLIMIT_FSIZE")


@pytest.mark.parametrize("writer", WRITERS)
def test_a_full_disk_is_one_line_in_seconds_and_a_rerun_loses_nothing(
    small_disk: SmallDisk, mock_process: str, writer: str, tmp_path: Path
) -> None:
    db = small_disk.root / "archive.db"
    cli = cli_for(tmp_path, f"sqlite:///{db}", ARCHIVER_BASE_URL=mock_process)
    ids = [f"resp_ok{i}_full" for i in range(500)]  # ~6 KB each once archived: ~3 MB in all
    enqueue(cli, ids)
    small_disk.fill(leave_bytes=700_000)
    cli.preexec = small_disk.preexec

    run = cli("run", "--once", "--writer", writer, "--lease-seconds", "2")
    assert run.returncode == 1, run.stderr
    one_line_error(run, small_disk.full_message, str(db))
    assert cli.last_duration_s < FAULT_DEADLINE_S, cli.last_duration_s
    print(f"disk full, --writer {writer}: one line after {cli.last_duration_s:.2f}s ({small_disk.how})")
    counts = states(cli)
    assert counts["failed"] == counts["not_found"] == 0, counts  # no attempt spent into failure
    assert sum(counts.values()) == len(ids), counts
    assert counts["pending"] + counts["in_flight"] > 0, counts  # the disk did fill mid-run
    print(f"left in flight (the release could not be written): {counts['in_flight']}")

    # enqueue on the full disk: one line, without the IDs it was given
    more = [f"resp_ok{i}_{'x' * 200}" for i in range(20_000)]
    refused = cli("enqueue", input="\n".join(more).encode())
    assert refused.returncode == 1
    one_line_error(refused, small_disk.full_message)
    assert b"resp_ok" not in refused.stderr
    assert cli.last_duration_s < FAULT_DEADLINE_S

    small_disk.free()
    cli.preexec = None
    rerun = cli("run", "--once", "--writer", writer, "--lease-seconds", "2")
    assert rerun.returncode == 0, rerun.stderr
    assert states(cli) == {"pending": 0, "in_flight": 0, "archived": len(ids), "not_found": 0, "failed": 0}
    # Rows the full disk stranded in flight came back when their lease expired, with the
    # attempt given back: each ID spent exactly the one attempt that archived it.
    with sqlite3.connect(db) as conn:
        by_attempts = "SELECT attempts, count(*) FROM archive_queue GROUP BY attempts"
        spent = dict(conn.execute(by_attempts).fetchall())
    assert spent == {1: len(ids)}, spent


def test_a_disk_full_before_the_first_write_says_full(small_disk: SmallDisk, tmp_path: Path) -> None:
    """SQLite cannot make the -shm/-wal on a full disk and says "disk I/O error"."""
    if small_disk.how != "tmpfs":
        pytest.skip("needs a real full file system (a tmpfs)")
    db = small_disk.root / "archive.db"
    cli = cli_for(
        tmp_path, f"sqlite:///{db}", ARCHIVER_API_KEY="sk-unused", ARCHIVER_BASE_URL="http://127.0.0.1:9"
    )
    enqueue(cli, ["resp_ok1_early"])  # closed cleanly: no -wal, no -shm left
    small_disk.fill(leave_bytes=0)
    for command in (["enqueue"], *(["run", "--once", "--writer", w] for w in WRITERS)):
        done = cli(*command, input=b"resp_ok2_early\n")
        assert done.returncode == 1, (command, done.stderr)
        one_line_error(done, "the disk holding the database is full", str(db), "free some space")
    small_disk.free()
    assert states(cli)["pending"] == 1


def test_an_export_into_a_full_disk_is_one_line(small_disk: SmallDisk, tmp_path: Path) -> None:
    if small_disk.how != "tmpfs":
        pytest.skip("needs a full file system for the export only (RLIMIT_FSIZE limits the database too)")
    db = tmp_path / "archive.db"
    cli = cli_for(tmp_path, f"sqlite:///{db}")
    demo = cli("demo", "--count", "20", "--database-url", f"sqlite:///{db}", timeout=120)
    assert demo.returncode == 0, demo.stderr
    (small_disk.root / "placeholder").write_bytes(b"x")
    small_disk.fill(leave_bytes=0)
    cli.preexec = small_disk.preexec
    done = cli("export", str(small_disk.root / "out"), "--full")
    assert done.returncode == 1, done.stderr
    one_line_error(done, "cannot export into")


# --- a read-only database -------------------------------------------------------------------------


def read_only_or_skip(path: Path) -> Any:
    """``read_only(path)``, entered (the caller exits it), or skip the test saying why."""
    mounted = read_only(path)
    try:
        mounted.__enter__()
    except MountRefused as refused:
        pytest.skip(f"a read-only bind mount is needed (root ignores file modes): {refused}")
    return mounted


@pytest.mark.parametrize("writer", WRITERS)
def test_a_read_only_archive_file_is_one_line_on_every_command_and_a_rerun_loses_nothing(
    tmp_path: Path, mock_process: str, writer: str
) -> None:
    db = tmp_path / "archive.db"
    cli = cli_for(tmp_path, f"sqlite:///{db}", ARCHIVER_BASE_URL=mock_process)
    enqueue(cli, ["resp_badrequest_ro"])
    assert cli("run", "--once").returncode == 0  # one failed row, for `retry` to move
    ids = [f"resp_ok{i}_ro" for i in range(300)]
    enqueue(cli, ids)
    mounted = read_only_or_skip(db)
    try:
        run = cli("run", "--once", "--writer", writer)
        assert run.returncode == 1, run.stderr
        one_line_error(run, "the database is read-only", str(db))
        assert cli.last_duration_s < FAULT_DEADLINE_S
        print(f"read-only file, --writer {writer}: one line after {cli.last_duration_s:.2f}s")
        refused = cli("enqueue", input=b"resp_ok1_secret_list\nresp_ok2_secret_list\n")
        assert refused.returncode == 1
        assert b"secret_list" not in one_line_error(refused, "the database is read-only").encode()
        assert cli.last_duration_s < FAULT_DEADLINE_S
        retry = cli("retry")
        assert retry.returncode == 1
        one_line_error(retry, "the database is read-only")
        for reader in (["status"], ["show", "resp_ok1_ro"], ["check"]):
            done = cli(*reader)
            assert done.returncode in (0, 1) and b"Traceback" not in done.stderr, done.stderr
        assert states(cli)["pending"] == len(ids)
    finally:
        mounted.__exit__(None, None, None)
    rerun = cli("run", "--once", "--writer", writer)
    assert rerun.returncode == 0, rerun.stderr
    assert states(cli) == {"pending": 0, "in_flight": 0, "archived": len(ids), "not_found": 0, "failed": 1}


def test_an_archive_on_a_read_only_mount_can_still_be_read(tmp_path: Path) -> None:
    """A backup on read-only media: the directory cannot take a -wal or -shm file."""
    media = tmp_path / "media"
    media.mkdir()
    db = media / "archive.db"
    cli = cli_for(tmp_path, f"sqlite:///{db}")
    enqueue(cli, ["resp_ok1_media", "resp_ok2_media"])
    assert sorted(p.name for p in media.iterdir()) == ["archive.db"]  # closed cleanly
    mounted = read_only_or_skip(media)
    try:
        assert states(cli)["pending"] == 2
        show = cli("show", "resp_ok1_media")
        assert show.returncode == 1 and "pending" in one_line_error(show), show.stderr
        check = cli("check")
        assert check.returncode == 0, (check.stdout, check.stderr)
        refused = cli("enqueue", input=b"resp_ok3_media\n")
        assert refused.returncode == 1
        one_line_error(refused, "the database is read-only", str(db))
    finally:
        mounted.__exit__(None, None, None)
    assert states(cli)["pending"] == 2
    assert sorted(p.name for p in media.iterdir() if p.name.endswith(".db")) == ["archive.db"]


@pytest.mark.postgres
def test_a_read_only_postgresql_database_is_one_line(
    pg_url: str, pg_cluster: PgCluster, mock_process: str, tmp_path: Path
) -> None:
    cli = cli_for(tmp_path, pg_url, ARCHIVER_BASE_URL=mock_process)
    ids = [f"resp_ok{i}_pg" for i in range(50)]
    enqueue(cli, ids)
    name = re.sub(r"\?.*", "", pg_url).rsplit("/", 1)[1]
    pg_cluster.psql(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    try:
        for command in (["run", "--once"], ["enqueue"], ["retry"]):
            done = cli(*command, input=b"resp_ok1_pg_more\n")
            assert done.returncode == 1, done.stderr
            one_line_error(done, "the database is read-only")
            assert cli.last_duration_s < FAULT_DEADLINE_S
    finally:
        pg_cluster.psql(f"ALTER DATABASE {name} SET default_transaction_read_only = off")
    rerun = cli("run", "--once")
    assert rerun.returncode == 0, rerun.stderr
    assert states(cli)["archived"] == len(ids)


# --- a file deleted during enqueue ---------------------------------------------------------------


def _queued_ids(db: Path) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM archive_queue")}


def _wait_until_queued(db: Path, rid: str) -> None:
    deadline = time.monotonic() + 10
    while rid not in _queued_ids(db):
        assert time.monotonic() < deadline, f"{rid} was not committed"
        time.sleep(0.05)


@pytest.mark.parametrize("mode", ["pipe", "follow"])
def test_an_archive_deleted_during_enqueue_stops_it_and_reports_nothing_queued(
    tmp_path: Path, mode: str
) -> None:
    db = tmp_path / "archive.db"
    cli = cli_for(tmp_path, f"sqlite:///{db}")
    assert cli("migrate").returncode == 0
    log = tmp_path / "ids.log"
    log.write_bytes(b"")
    args = ["enqueue", "--follow", str(log)] if mode == "follow" else ["enqueue"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", *args],
        stdin=subprocess.PIPE if mode == "pipe" else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli.env,
        cwd=cli.cwd,
    )

    def send(line: bytes) -> None:
        if mode == "pipe":
            assert proc.stdin is not None
            proc.stdin.write(line)
            proc.stdin.flush()
        else:
            with log.open("ab") as f:
                f.write(line)

    try:
        send(b"resp_ok1_del\n")
        _wait_until_queued(db, "resp_ok1_del")  # committed within a second of arriving
        db.unlink()
        send(b"resp_ok2_del\n")
        out, err = proc.communicate(timeout=30)  # stops at its next commit, without end of input
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    done = subprocess.CompletedProcess(args, proc.returncode, out, err)
    one_line_error(done, "the archive file", f"{db} was deleted")
    assert b"queued" not in out, "IDs written into the deleted file are not reported as queued"
    # Nothing came back at the path: no new empty archive, no old WAL to replay into one.
    assert not any(tmp_path.glob("archive.db*")), list(tmp_path.iterdir())


def test_a_push_ingest_into_a_deleted_archive_is_503_and_the_daemon_stops(
    tmp_path: Path, mock_process: str
) -> None:
    from tests.acceptance.conftest import start_daemon
    from tests.acceptance.test_push_ingest import _free_port, _post

    db = tmp_path / "archive.db"
    cli = cli_for(tmp_path, f"sqlite:///{db}")
    (tmp_path / "ingest_token").write_text("tok-7f3c1d9e2b5a\n")
    port = _free_port()
    env = {
        **cli.env,
        "ARCHIVER_BASE_URL": mock_process,
        "ARCHIVER_METRICS_PORT": str(port),
        "ARCHIVER_INGEST_TOKEN_FILE": str(tmp_path / "ingest_token"),
        "ARCHIVER_POLL_INTERVAL": "0.1",
    }
    daemon = start_daemon(env, tmp_path)
    url = f"http://127.0.0.1:{port}/v1/enqueue"
    headers = {"Authorization": "Bearer tok-7f3c1d9e2b5a"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _post(url, b"", headers)  # any answer: listening (and nothing queued)
                break
            except OSError:  # not listening yet
                assert time.monotonic() < deadline and daemon.poll() is None
                time.sleep(0.1)
        db.unlink()  # the daemon is idle: nothing of its own would write for a minute
        try:
            status, body = _post(url, b"resp_ok2_push\n", headers)
        except OSError:  # the daemon already noticed and stopped
            status, body = 503, ""
        assert status == 503, body
        deleted_at = time.monotonic()
        _, err = daemon.communicate(timeout=30)
    finally:
        daemon.kill()
    assert daemon.returncode == 1, err
    stopped_after = time.monotonic() - deleted_at
    print(f"push into a deleted archive: 503, daemon stopped after {stopped_after:.2f}s")
    assert stopped_after < FAULT_DEADLINE_S
    text = err.decode(errors="replace")
    assert "Traceback" not in text
    assert f"{db} was deleted" in text.strip().splitlines()[-1], text
    assert not any(tmp_path.glob("archive.db*")), list(tmp_path.iterdir())
