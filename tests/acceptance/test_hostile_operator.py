"""A careless operator, through the real CLI: each fault made to happen, never mocked.

Found by a hostile tester (helper 8): output streams on a full device (``>/dev/full``,
``2>/dev/full``: a log file on a full disk), an API key given through a pipe
(``--api-key-file <(pass show key)``) or a FIFO nobody writes to. Each must end in one
line (or no complaint at all when only the logs are lost), never a traceback or a hang,
and lose no ID and no secret.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import base_env, spawn_archiver, start_mock_process
from tests.generated_bodies import serve_generated
from tests.mounts import MountRefused, read_only

TIMEOUT_S = 60
KEY = "sk-hostile8-canary-4c1e"


def archiver(*args: str, cwd: Path, env: dict[str, str] | None = None, **kwargs: Any) -> Any:
    if "stdout" not in kwargs and "stderr" not in kwargs:
        kwargs["capture_output"] = True
    return subprocess.run(
        [sys.executable, "-m", "archiver", *args],
        env={**base_env(), **(env or {})},
        cwd=cwd,
        timeout=kwargs.pop("timeout", TIMEOUT_S),
        check=False,
        **kwargs,
    )


def start_archiver(*args: str, cwd: Path) -> subprocess.Popen[bytes]:
    """``archiver ARGS`` started in a child process, its output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "archiver", *args],
        env=base_env(),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def states(db: Path) -> dict[str, str]:
    with closing(sqlite3.connect(db)) as conn:
        return dict(conn.execute("SELECT id, state FROM archive_queue").fetchall())


def one_error_line(stderr: bytes, *needles: str) -> str:
    text = stderr.decode(errors="replace")
    assert "Traceback" not in text, text
    lines = [
        line for line in text.strip().splitlines() if not line.startswith("archiver: created a new archive")
    ]
    assert len(lines) == 1, text
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def mock_url(tmp_path: Path) -> Iterator[str]:
    yield from start_mock_process(tmp_path)


@pytest.fixture
def keyed_mock_url(tmp_path: Path) -> Iterator[str]:
    """The mock API answering only requests that carry :data:`KEY`."""
    yield from start_mock_process(tmp_path, "--require-key", env={"ARCHIVER_MOCK_API_KEY": KEY})


IDS = [f"resp_ok_{i:05d}" for i in range(30)]


# --- output streams on a full device ------------------------------------------------------------


def test_stdout_on_a_full_device_is_one_line_not_a_traceback(tmp_path: Path, mock_url: str) -> None:
    """``archiver status > /mnt/full/report.txt``: the write fails; say so in one line, exit 1.

    Before: every command that prints ended in ``OSError: [Errno 28] No space left on device``
    and its traceback. The work itself is done (enqueue queued, retry moved).
    """
    db = tmp_path / "a.db"
    env = {"ARCHIVER_DATABASE_URL": f"sqlite:///{db}", "ARCHIVER_BASE_URL": mock_url}
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(IDS) + "\n")
    with open("/dev/full", "wb") as full:
        done = archiver("enqueue", str(ids), cwd=tmp_path, env=env, stdout=full, stderr=subprocess.PIPE)
        assert done.returncode == 1, done.stderr
        one_error_line(done.stderr, "archiver: error:", "stdout", "No space left on device")
        assert set(states(db)) == set(IDS), "enqueue's work must be done even when its summary is lost"
        ran = archiver("run", "--once", cwd=tmp_path, env=env)
        assert ran.returncode == 0, ran.stderr
        for command in (
            ["status"],
            ["status", "--json"],
            ["show", IDS[0]],
            ["retry"],
            ["check"],
            ["migrate"],
        ):
            done = archiver(*command, cwd=tmp_path, env=env, stdout=full, stderr=subprocess.PIPE)
            assert done.returncode == 1, (command, done.stderr)
            one_error_line(done.stderr, "archiver: error:", "stdout", "No space left on device")
    assert set(states(db).values()) == {"archived"}


def test_stderr_on_a_full_device_does_not_stop_the_run(tmp_path: Path, mock_url: str) -> None:
    """``archiver run >> /var/log/archiver.log 2>&1`` with /var full: the logs are lost, not the work.

    Before: the first log line raised ``OSError`` inside the worker, the run exited 1 at
    once without a word (its stderr was the full device) and archived nothing.
    """
    db = tmp_path / "a.db"
    env = {
        "ARCHIVER_DATABASE_URL": f"sqlite:///{db}",
        "ARCHIVER_BASE_URL": mock_url,
        "ARCHIVER_LOG_LEVEL": "info",
    }
    done = archiver("enqueue", cwd=tmp_path, env=env, input="\n".join(IDS).encode())
    assert done.returncode == 0, done.stderr
    with open("/dev/full", "wb") as full:
        ran = archiver("run", "--once", cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=full)
    assert ran.returncode == 0, ran.stdout[-2000:]
    assert set(states(db).values()) == {"archived"}, states(db)


# --- an API key through a pipe or a FIFO ------------------------------------------------------------


def test_a_key_through_process_substitution_is_sent(tmp_path: Path, keyed_mock_url: str) -> None:
    """``--api-key-file <(pass show archiver)``: the pipe can be read only once.

    Before: the key file was read three times (to register the secret, to build the
    settings, to tell the one-source form), the later reads found the pipe at its end, so
    no key was sent: every ID answered 401 and the run stopped with exit 3, telling the
    operator to check ARCHIVER_API_KEY.
    """
    db = tmp_path / "a.db"
    env = {"ARCHIVER_DATABASE_URL": f"sqlite:///{db}", "ARCHIVER_BASE_URL": keyed_mock_url}
    done = archiver("enqueue", cwd=tmp_path, env=env, input="\n".join(IDS[:5]).encode())
    assert done.returncode == 0, done.stderr
    shell = 'exec "$@" --api-key-file <(sleep 0.3; printf "%s\\n" "$KEY")'
    ran = subprocess.run(
        ["bash", "-c", shell, "sh", sys.executable, "-m", "archiver", "run", "--once"],
        env={**base_env(), **env, "KEY": KEY},
        cwd=tmp_path,
        capture_output=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert set(states(db).values()) == {"archived"}, states(db)
    assert KEY.encode() not in ran.stdout + ran.stderr


def test_ctrl_c_while_waiting_for_a_key_fifo_is_one_line(tmp_path: Path) -> None:
    """A FIFO nobody writes to, and the operator presses Ctrl-C: no traceback.

    Before: ``KeyboardInterrupt`` and a traceback from ``pathlib.open`` (the wait was
    outside the command's handling); and without Ctrl-C it waited for ever.
    """
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    db = tmp_path / "a.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "status"],
        env={**base_env(), "ARCHIVER_DATABASE_URL": f"sqlite:///{db}", "ARCHIVER_API_KEY_FILE": str(fifo)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.5)  # imports done, waiting on the FIFO
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 130, err
    one_error_line(err, "archiver: interrupted")
    assert not db.exists()


# --- two rebuilds at once ---------------------------------------------------------------------------


def meta_value(request: pytest.FixtureRequest, url: str, name: str) -> str | None:
    """One ``archive_meta`` value, read beside the running commands (sqlite3 or psql)."""
    if url.startswith("sqlite:///"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)) as conn:
            row = conn.execute("SELECT value FROM archive_meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])
    cluster = request.getfixturevalue("pg_cluster")
    value = cluster.psql(f"SELECT value FROM archive_meta WHERE name = '{name}'", url.rsplit("/", 1)[1])
    return str(value) or None


def start_rebuild(url: str, cwd: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "archiver", *args, "--database-url", url, "--batch-size", "2"],
        env=base_env(),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_until_walking(request: pytest.FixtureRequest, url: str, proc: subprocess.Popen[bytes]) -> None:
    """Until the renormalize committed its first batch (its position row is there)."""
    deadline = time.monotonic() + TIMEOUT_S
    while meta_value(request, url, "renormalize") is None:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the renormalize never committed a batch"
        time.sleep(0.05)


@pytest.fixture
def demo_url(tmp_path: Path, db_url: str) -> str:
    """An archive of ~50 demo responses, on SQLite and on PostgreSQL."""
    done = archiver("demo", "--count", "60", "--database-url", db_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    return db_url


def test_a_second_rebuild_refuses_at_once_naming_the_first(
    request: pytest.FixtureRequest, tmp_path: Path, demo_url: str
) -> None:
    """``compact`` from cron while an operator's ``renormalize --all`` runs (or two of either).

    Before: the second walked the same responses, each reported the other's rewrites as
    "re-archived meanwhile", and two renormalize runs fought over one saved position.
    Now the second refuses at once with one line naming the first (pid and host), exit 1,
    and the first finishes as if alone.
    """
    first = start_rebuild(demo_url, tmp_path, "renormalize", "--all")
    try:
        wait_until_walking(request, demo_url, first)
        os.kill(first.pid, signal.SIGSTOP)  # mid-walk, for as long as the test needs
        try:
            for second in (["compact"], ["renormalize", "--all"], ["renormalize", IDS[0]]):
                started = time.monotonic()
                done = archiver(*second, "--database-url", demo_url, cwd=tmp_path, timeout=30)
                assert done.returncode == 1, (second, done.stderr)
                one_error_line(done.stderr, "another renormalize is running", f"pid {first.pid}")
                assert time.monotonic() - started < 20, "refused at once, not after a wait"
        finally:
            os.kill(first.pid, signal.SIGCONT)
        out, err = first.communicate(timeout=TIMEOUT_S)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    assert b"re-archived meanwhile 0," in out, out
    assert meta_value(request, demo_url, "renormalize") is None


def test_a_killed_rebuild_does_not_block_the_next(
    request: pytest.FixtureRequest, tmp_path: Path, demo_url: str
) -> None:
    """``kill -9`` of the first (OOM, a reboot): the lock goes with the process, never held for ever."""
    first = start_rebuild(demo_url, tmp_path, "renormalize", "--all")
    wait_until_walking(request, demo_url, first)
    first.kill()
    first.communicate()
    again = archiver("renormalize", "--all", "--database-url", demo_url, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert b"resuming the unfinished renormalize" in again.stderr, again.stderr
    assert meta_value(request, demo_url, "renormalize") is None
    compacted = archiver("compact", "--database-url", demo_url, cwd=tmp_path)
    assert compacted.returncode == 0, compacted.stderr


# --- an export whose cursor could not move -----------------------------------------------------------


def exported_ids(path: Path) -> set[str]:
    """The ``id`` of every row of a JSONL export file (each line must be whole JSON)."""
    return {json.loads(line)["id"] for line in path.read_bytes().split(b"\n") if line}


def test_a_batch_redone_after_its_cursor_failed_is_the_batch_its_manifest_announced(tmp_path: Path) -> None:
    """An export whose files and manifest are in place but whose cursor did not move
    (``kill -9`` in that moment, or, made certain here, a read-only database) is redone
    by the next run under the same names, as promised. A loader that loads a batch when
    its manifest appears has loaded the first version by then.

    Before: the redo read a new ``to_seq``, so batch 1 was written again with the
    responses archived in between, and the next batch began after them: the loader, which
    had batch 1 already, never got them. Now the redo keeps the ``to_seq`` its manifest
    announced, so what came in between goes to the next batch.
    """
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    url = f"sqlite:///{db_dir / 'demo.db'}"
    out = tmp_path / "feed"
    first = archiver("demo", "--count", "10", "--database-url", url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    try:
        with read_only(db_dir):
            failed = archiver("export", str(out), "--database-url", url, cwd=tmp_path)
    except MountRefused as exc:
        pytest.skip(f"needs a read-only bind mount (tests run as root): {exc}")
    assert failed.returncode == 1, failed.stderr
    one_error_line(failed.stderr, "read-only")
    manifest = out / "_batches" / "default-00000001.json"
    assert manifest.exists(), "the files and manifest are in place before the cursor moves"
    loaded = exported_ids(out / "responses" / "default-00000001.jsonl")  # the loader, now
    assert len(loaded) == 10

    more = archiver("demo", "--count", "25", "--database-url", url, cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    for _ in range(2):
        done = archiver("export", str(out), "--database-url", url, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    redone = exported_ids(out / "responses" / "default-00000001.jsonl")
    assert redone <= loaded, f"batch 1 redone with responses its manifest did not announce: {redone - loaded}"
    later = set()
    for path in sorted((out / "responses").glob("default-*.jsonl")):
        if path.name != "default-00000001.jsonl":
            later |= exported_ids(path)
    with closing(sqlite3.connect(db_dir / "demo.db")) as conn:
        archived = {row[0] for row in conn.execute("SELECT id FROM responses")}
    assert len(archived) >= 20
    assert archived <= loaded | later, f"never reached the loader: {sorted(archived - loaded - later)[:5]}"
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], "temporary files left behind"


# --- a body of millions of short strings, at the largest body the settings allow -------------------

STRINGS_BODIES = r"""
import json, sys

limit = int(sys.argv[1])
kind = sys.argv[2]

def body(rid: str) -> bytes:
    head = json.dumps({"id": rid, "object": "response", "status": "completed", "created_at": 1787041707,
                       "model": "m", "output": [], "usage": None})[:-1].encode() + b', "x": '
    if kind in ("values", "members", "names"):  # distinct short strings, as many as fit
        form = {"values": b'"%x",', "members": b'"%x":"%x",', "names": b'"%x":0,'}[kind]
        pieces, size, i = [], len(head) + 16, 0
        while True:
            piece = form % ((i,) * form.count(b"%x"))
            size += len(piece)
            if size > limit:
                break
            pieces.append(piece)
            i += 1
        if kind == "values":
            return head + b"[" + b"".join(pieces) + b'"z"]}'
        return head + b"{" + b"".join(pieces) + b'"z":0}}'
    piece = {"one": b'"a",', "two": b'"ab",', "utf8": b'"\xc3\xa9",'}[kind]
    count = (limit - len(head) - 16) // len(piece)
    return head + b"[" + piece * count + b'"z"]}'
"""

MiB = 1 << 20


STRINGS = {
    # 4 million one-character strings: refused before the parse
    "one": "failed",
    "utf8": "failed",
    # 2 million distinct values ("1e8a3",), one per 8.4 bytes: read, at ~12 times its size
    "values": "archived",
    # 1 million distinct names with distinct values ("1a2b3":"1a2b3",): 539-545 MiB
    # while names were not counted, though values were under their limit
    "members": "failed",
    # 1.6 million distinct names of small integers ("1a2b3":0,): 17 times its size
    # parsed in each process, 533 MiB, with no value string at all
    "names": "failed",
}


@pytest.mark.parametrize("kind", list(STRINGS))
def test_a_body_of_millions_of_short_strings_stays_within_the_memory_bound(tmp_path: Path, kind: str) -> None:
    """The largest body the default settings let through (1 KiB under ``--max-body-mb``,
    16 MiB), made of one-character strings (``"a",``: 4 million of them; ``"é",`` in 5
    bytes): strings are not counted by the pre-parse limits, and each one parsed is a
    ~50-byte Python object. The run (its process and its writer process, sampled as
    ``tests/acceptance/test_memory_bound.py`` does) must stay under README's 512 MB.
    ``values``, ``members``, ``names``: distinct short strings as values, as member
    names and values, and as names of small integers (which Python keeps once): each
    parsed string is its own object, and each member its dict entry.
    """
    from archiver.settings import Settings
    from tests.acceptance.test_memory_bound import PEAK_BOUND, Cli, run_measured

    limit = int(Settings().max_body_mb * MiB) - 1024
    with serve_generated(STRINGS_BODIES, str(limit), kind) as base_url:
        db = tmp_path / "archive.db"
        env = {**base_env(), "ARCHIVER_DATABASE_URL": f"sqlite:///{db}", "ARCHIVER_BASE_URL": base_url}
        cli = Cli(env, tmp_path)
        ids = [f"resp_strings_{i}" for i in range(3)]
        assert cli("enqueue", input="\n".join(ids).encode()).returncode == 0
        sampler, seconds, code = run_measured(cli, tmp_path, ())
    print(f"\n{kind}: {seconds:.1f} s, peak RSS sum {sampler.peak_sum / MiB:.0f} MiB, exit {code}")
    assert code == 0, (tmp_path / "run.err").read_bytes()[-2000:]
    assert sampler.samples >= 3
    assert sampler.peak_sum < PEAK_BOUND, f"peak RSS sum {sampler.peak_sum / MiB:.0f} MiB"
    rows = states(db)
    assert rows == dict.fromkeys(ids, STRINGS[kind]), rows
    if STRINGS[kind] == "failed":
        with closing(sqlite3.connect(db)) as conn:
            errors = [row[0] for row in conn.execute("SELECT last_error FROM archive_queue")]
        assert all("string values" in error and "(one per 8 bytes)" in error for error in errors), errors


# --- Ctrl-C while a command starts ------------------------------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["show", "resp_ok_00000"], ["run", "--once"]])
def test_ctrl_c_while_a_command_starts_is_no_traceback(tmp_path: Path, command: list[str]) -> None:
    """Ctrl-C in the first half second (the imports: SQLAlchemy, aiohttp, structlog).

    Before: ``KeyboardInterrupt`` and a traceback, exit -2, on every command but the three
    that hold stop signals while they start (enqueue, renormalize, compact). Now
    ``archiver: interrupted``, exit 130, whenever it comes (or the command's own result,
    if it was done already).
    """
    db = tmp_path / "a.db"
    made = archiver(
        "enqueue", cwd=tmp_path, env={"ARCHIVER_DATABASE_URL": f"sqlite:///{db}"}, input=b"resp_x\n"
    )
    assert made.returncode == 0, made.stderr
    env = {
        **base_env(),
        "ARCHIVER_DATABASE_URL": f"sqlite:///{db}",
        "ARCHIVER_BASE_URL": "http://127.0.0.1:9/v1",
    }
    for delay in (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5):
        proc = spawn_archiver(env, tmp_path, *command)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=TIMEOUT_S)
        text = err.decode(errors="replace")
        before_archiver = "archiver/launch.py" not in text and (
            proc.returncode == -signal.SIGINT or "Traceback" in text or "Fatal Python error" in text
        )
        if before_archiver:
            continue  # still in the interpreter's own start (site, ``import archiver``): README's known gap
        assert "Traceback" not in text, (delay, text[-1500:])
        assert proc.returncode in (0, 1, 4, 130), (delay, proc.returncode, text[-1500:])


# --- a base URL that cannot be right ------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["https://exa mple.com/v1", "https://example.com\t/v1", "https://exa<mple>.com/v1"]
)
def test_a_host_that_cannot_be_a_host_is_refused_at_start(tmp_path: Path, url: str) -> None:
    """A space or a stray character pasted into the host. Before: accepted, then every
    request failed its DNS lookup and the breaker stopped the run with exit 4 (the IDs
    stayed pending, but only after requests were tried). Now exit 2 before anything runs."""
    db = tmp_path / "a.db"
    env = {"ARCHIVER_DATABASE_URL": f"sqlite:///{db}", "ARCHIVER_API_KEY": KEY}
    assert archiver("enqueue", cwd=tmp_path, env=env, input=b"resp_x\n").returncode == 0
    done = archiver("run", "--once", "--base-url", url, cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr, "base URL")
    assert "at character" in line or "is not a host name" in line, line
    assert KEY.encode() not in done.stderr
    assert states(db) == {"resp_x": "pending"}


# --- the mock server pointed at bodies that are not there ---------------------------------------


@pytest.mark.parametrize("where", ["missing", "a-file", "no-bodies"])
def test_mock_server_bodies_dir_that_holds_no_bodies_is_refused(tmp_path: Path, where: str) -> None:
    """``archiver mock-server --bodies-dir ./bodeis`` (a typo). Before: it served anyway,
    and since a bodies directory makes unknown IDs answer 404, every ID a run fetched from
    it ended ``not_found``. Now one line naming the directory, exit 2."""
    path = tmp_path / where
    if where == "a-file":
        path.write_text("{}")
    elif where == "no-bodies":
        path.mkdir()
        (path / "notes.txt").write_text("not a body")
    done = archiver("mock-server", "--port", "0", "--bodies-dir", str(path), cwd=tmp_path, timeout=20)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    one_error_line(done.stderr, "archiver: error:", str(path))


def test_kill_9_mid_export_leaves_no_partial_file_under_a_final_name(tmp_path: Path) -> None:
    """``kill -9`` while an export writes (checked: holds). A loader watching the directory
    sees only whole files under final names (``*.jsonl``; the ones being written are
    ``.NAME.tmp``), a manifest only once every file it names is complete, and the next run
    writes the same batch names and leaves no temporary file behind."""
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    made = archiver("demo", "--count", "150", "--database-url", url, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    out = tmp_path / "feed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "export", str(out), "--database-url", url, "--chunk-size", "5"],
        env=base_env(),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not list(out.glob("*/.*.tmp")) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL, "the export ended before it could be killed mid-write"
    for path in out.glob("*/*.jsonl"):  # whatever a watcher could pick up now
        exported_ids(path)  # every line whole JSON
    for manifest in out.glob("_batches/*.json"):
        assert all((out / name).exists() for name in json.loads(manifest.read_text())["files"])
    again = archiver("export", str(out), "--database-url", url, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert (out / "_batches" / "default-00000001.json").exists()
    assert len(exported_ids(out / "responses" / "default-00000001.jsonl")) >= 100


def test_ctrl_c_while_another_process_holds_the_sqlite_lock_acts_within_seconds(tmp_path: Path) -> None:
    """``archiver retry`` waiting on SQLite's write lock (another process holds it): Ctrl-C
    took 58 s to act, the busy timeout, while the clean-up waited on the database. Now the
    process exits 130 within INTERRUPT_EXIT_S (2 s), and the row it would have moved is as
    it was, so the same command run again does it."""
    db = tmp_path / "archive.db"
    url = f"sqlite:///{db}"
    assert archiver("enqueue", "--database-url", url, cwd=tmp_path, input=b"resp_locked_1\n").returncode == 0
    with closing(sqlite3.connect(db, isolation_level=None)) as holder:
        holder.execute("UPDATE archive_queue SET state = 'failed' WHERE id = 'resp_locked_1'")
        holder.execute("BEGIN IMMEDIATE")  # the write lock, held until the end of the block
        proc = start_archiver("retry", "--database-url", url, cwd=tmp_path)
        deadline = time.monotonic() + 30
        while not any(
            os.path.realpath(f"/proc/{proc.pid}/fd/{fd}") == str(db)
            for fd in os.listdir(f"/proc/{proc.pid}/fd")
        ):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        time.sleep(0.5)  # its UPDATE now waits in SQLite's busy handler
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=TIMEOUT_S)
        took = time.monotonic() - sent
        assert proc.returncode == 130, err
        assert err.decode().strip() == "archiver: interrupted"
        assert took < 15, took  # 2 s, with room for a loaded host; 58 s before
        holder.execute("ROLLBACK")
    assert states(db) == {"resp_locked_1": "failed"}
    again = archiver("retry", "--database-url", url, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert states(db) == {"resp_locked_1": "pending"}
