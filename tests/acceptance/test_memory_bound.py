"""Issue 15, point 1: memory stays bounded against hostile bodies (the real CLI, end to end).

One ``archiver run --once --with-input-items`` per scenario against the hostile server of
``tests/hostile_server.py`` (its own process, so its memory is not counted): a gzip bomb
and a deflate bomb (10 GiB of zeros each), an endless chunked body, endless input-item
pages, a body 1 MiB under and one 1 MiB over the body limit, and 100 ordinary IDs.

While the run goes, a thread samples every 20 ms the RSS of the run process and of all
its descendants (the writer process, ``python -m archiver.childproc``) and keeps the peak
of their sum, and the last ``VmHWM`` of each. Both must stay under :data:`PEAK_BOUND`;
past :data:`GUARD` the process group is killed (a broken build must not eat the
machine). Then every ordinary ID and ``resp_under`` must be archived byte-exact, and
each hostile ID must end ``failed`` with an error naming ``--max-body-mb``.

Run with ``-s`` to see the table of figures per scenario (for the README).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from archiver.settings import Settings
from tests import hostile_server as hostile

from .conftest import Cli, base_env, children_of

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

MiB = 1024 * 1024
PEAK_BOUND = 512 * MiB
GUARD = 3 * 1024 * MiB
SAMPLE_EVERY_S = 0.02
RUN_TIMEOUT_S = 120.0
OK_COUNT = 100
FAILING_IDS = ("resp_gzipbomb", "resp_deflatebomb", "resp_endless", "resp_over", "resp_items")
LIMIT_TEXT = "--max-body-mb"
SERVER_SCRIPT = Path(hostile.__file__)

RUN_FLAGS = (
    "run",
    "--once",
    "--with-input-items",
    "--max-attempts",
    "2",
    "--backoff-base",
    "0.01",
    "--backoff-cap",
    "0.05",
    "--not-found-recheck",
    "0.05",
    "--request-timeout",
    "20",
)


# --------------------------------------------------------------------------- memory sampling


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (``/proc/PID/task/*/children``, else a walk of ``/proc``)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            found.extend(int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
        except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN
            return children_of(pid)
        except OSError:
            continue
    return found


def _tree(root: int) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(_children(pid))
    return pids


def _memory_kib(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in KiB, or None once the process is gone (zombies have neither)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in status.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            values[key] = int(value.split()[0])
    if "VmRSS" not in values:
        return None
    return values["VmRSS"], values.get("VmHWM", values["VmRSS"])


def _label(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return "writer" if b"archiver.childproc" in cmdline else "run" if b"archiver" in cmdline else "other"


class PeakRss(threading.Thread):
    """Samples the summed RSS of a process tree; kills its group past ``guard`` bytes."""

    def __init__(self, root: int, *, guard: int) -> None:
        super().__init__(name="peak-rss", daemon=True)
        self.root = root
        self.guard = guard
        self.peak_sum = 0
        self.peak_by_pid: dict[int, int] = {}
        self.hwm_by_pid: dict[int, int] = {}
        self.label_by_pid: dict[int, str] = {}
        self.samples = 0
        self.tripped_at: int | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            if self.tripped_at is not None:
                return
            self._stop_event.wait(SAMPLE_EVERY_S)

    def sample(self) -> None:
        total = 0
        for pid in _tree(self.root):
            memory = _memory_kib(pid)
            if memory is None:
                continue
            rss, hwm = memory[0] * 1024, memory[1] * 1024
            total += rss
            self.peak_by_pid[pid] = max(self.peak_by_pid.get(pid, 0), rss)
            self.hwm_by_pid[pid] = hwm
            if self.label_by_pid.get(pid) != "writer":  # a fork shows its parent's cmdline until exec
                self.label_by_pid[pid] = _label(pid)
        self.samples += 1
        self.peak_sum = max(self.peak_sum, total)
        if total > self.guard:
            self.tripped_at = total
            with suppress(ProcessLookupError):
                os.killpg(self.root, signal.SIGKILL)  # the run leads its own session

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    @property
    def hwm_sum(self) -> int:
        return sum(self.hwm_by_pid.values())

    def hwm_of(self, label: str) -> int:
        return sum(hwm for pid, hwm in self.hwm_by_pid.items() if self.label_by_pid.get(pid) == label)


# --------------------------------------------------------------------------- the hostile server


@dataclass
class HostileServer:
    base_url: str
    limit_mb: float

    def stats(self) -> dict[str, dict[str, int]]:
        url = self.base_url.removesuffix("/v1") + "/_stats"
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 (loopback, http)
            stats: dict[str, dict[str, int]] = json.loads(answer.read())
        return stats


@contextmanager
def hostile_server(limit_mb: float) -> Iterator[HostileServer]:
    """``tests/hostile_server.py`` in its own process (its memory is not counted)."""
    proc = subprocess.Popen(
        [sys.executable, str(SERVER_SCRIPT), "--limit-mb", str(limit_mb), "--ok", str(OK_COUNT)],
        stdout=subprocess.PIPE,
        env=base_env(),
    )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline().decode().strip()
        if not line.startswith("http://127.0.0.1:"):
            raise AssertionError(f"hostile server did not start: {line!r}")
        yield HostileServer(line, limit_mb)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    limit_mb: float
    flags: tuple[str, ...]  # --max-body-mb / --concurrency, when not the defaults
    hostile_ids: tuple[str, ...] = hostile.HOSTILE_IDS  # enqueued with the ordinary IDs

    @property
    def failing(self) -> list[str]:
        return [rid for rid in self.hostile_ids if rid in FAILING_IDS]

    @property
    def archived(self) -> list[str]:
        return [*hostile.ok_ids(OK_COUNT), *(rid for rid in self.hostile_ids if rid not in FAILING_IDS)]


@dataclass
class Figures:
    scenario: str
    seconds: float
    peak_sum: int
    hwm_sum: int
    hwm_run: int
    hwm_writer: int
    samples: int
    states: dict[str, int] = field(default_factory=dict)
    wire_kib: dict[str, int] = field(default_factory=dict)


RESULTS: list[Figures] = []

DEFAULT_MB = Settings().max_body_mb
assert Settings().concurrency == 16, "the default scenario below is the --concurrency 16 one"

SCENARIOS = [
    # Every hostile body at once: in flight together, the worst case for the peak.
    pytest.param(
        Scenario("all, 8MiB, c16", 8, ("--max-body-mb", "8", "--concurrency", "16")), id="all-8MiB-c16"
    ),
    pytest.param(
        Scenario("all, 8MiB, c4", 8, ("--max-body-mb", "8", "--concurrency", "4")), id="all-8MiB-c4"
    ),
    pytest.param(Scenario(f"all, defaults ({DEFAULT_MB:g}MiB, c16)", DEFAULT_MB, ()), id="all-defaults"),
    pytest.param(
        Scenario(f"all, {DEFAULT_MB:g}MiB, c4", DEFAULT_MB, ("--concurrency", "4")), id="all-default-MiB-c4"
    ),
    # Many valid bodies just under the limit, more than --concurrency: each fetcher must
    # let go of its last body, and the byte budget hold the rest back.
    pytest.param(
        Scenario(
            f"18 x just under, defaults ({DEFAULT_MB:g}MiB, c16)",
            DEFAULT_MB,
            (),
            tuple(f"{hostile.UNDER_PREFIX}{i:02d}" for i in range(18)),
        ),
        id="many-under-defaults",
    ),
    # One hostile body each, at the defaults: which one costs what (README's "each of those
    # alone" row). Only with MEMORY_FIGURES=1: the runs above hold every one of them at
    # once, and six more 16 MiB runs cost the suite ~70 s of CPU (past its 12-minute budget).
    *(
        pytest.param(Scenario(f"{rid}, defaults", DEFAULT_MB, (), (rid,)), id=f"{rid}-defaults")
        for rid in (hostile.HOSTILE_IDS if os.environ.get("MEMORY_FIGURES") == "1" else ())
    ),
]


@pytest.fixture(scope="module", autouse=True)
def figures_table() -> Iterator[None]:
    """Print every scenario's figures once the module is done (visible with ``-s``)."""
    yield
    if not RESULTS:
        return
    mib = MiB
    print("\n\nPeak memory of `archiver run` (run process + writer process), per scenario:")
    print(
        f"{'scenario':<28} {'time s':>7} {'peak RSS sum MiB':>17} {'HWM sum MiB':>12} "
        f"{'HWM run MiB':>12} {'HWM writer MiB':>15} {'samples':>8}  states"
    )
    for r in RESULTS:
        states = ", ".join(f"{k}={v}" for k, v in sorted(r.states.items()) if v)
        print(
            f"{r.scenario:<28} {r.seconds:>7.1f} {r.peak_sum / mib:>17.0f} {r.hwm_sum / mib:>12.0f} "
            f"{r.hwm_run / mib:>12.0f} {r.hwm_writer / mib:>15.0f} {r.samples:>8}  {states}"
        )
    for r in RESULTS:
        if r.wire_kib:
            wire = ", ".join(f"{k}={v}" for k, v in sorted(r.wire_kib.items()))
            print(f"  {r.scenario}: KiB the server wrote (socket buffers included): {wire}")


def queue_rows(db_path: Path) -> dict[str, tuple[str, str | None]]:
    with closing(sqlite3.connect(db_path)) as db:
        rows = db.execute("SELECT id, state, last_error FROM archive_queue").fetchall()
    return {rid: (state, error) for rid, state, error in rows}


def run_measured(cli: Cli, tmp_path: Path, extra: tuple[str, ...]) -> tuple[PeakRss, float, int | None]:
    """``archiver run`` in its own session, sampled until it exits; (sampler, seconds, exit code)."""
    started = time.monotonic()
    with open(tmp_path / "run.out", "wb") as out, open(tmp_path / "run.err", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "archiver", *RUN_FLAGS, *extra],
            stdout=out,
            stderr=err,
            env=cli.env,
            cwd=tmp_path,
            start_new_session=True,
        )
        sampler = PeakRss(proc.pid, guard=GUARD)
        sampler.start()
        try:
            code: int | None = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            code = None
        finally:
            sampler.stop()
            with suppress(ProcessLookupError):  # a writer process the run died without reaping
                os.killpg(proc.pid, signal.SIGKILL)
    return sampler, time.monotonic() - started, code


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_memory_stays_bounded_against_hostile_bodies(tmp_path: Path, scenario: Scenario) -> None:
    with hostile_server(scenario.limit_mb) as server:
        db_path = tmp_path / "archive.db"
        env = {
            **base_env(),
            "ARCHIVER_DATABASE_URL": f"sqlite:///{db_path}",
            "ARCHIVER_BASE_URL": server.base_url,
        }
        cli = Cli(env, tmp_path)
        ok = hostile.ok_ids(OK_COUNT)
        ids_file = tmp_path / "ids.txt"
        ids_file.write_text("\n".join([*scenario.hostile_ids, *ok]) + "\n")
        enqueued = cli("enqueue", str(ids_file))
        assert enqueued.returncode == 0, enqueued.stderr.decode()
        # Hostile IDs due first, so they are claimed first and in flight together (one
        # file's IDs are due at the same moment, and the queue breaks such ties by ID).
        with sqlite3.connect(db_path) as conn:
            marks = ",".join("?" * len(scenario.hostile_ids))
            conn.execute(
                f"UPDATE archive_queue SET next_attempt_at = next_attempt_at - 1 WHERE id IN ({marks})",
                scenario.hostile_ids,
            )
        conn.close()

        sampler, seconds, code = run_measured(cli, tmp_path, scenario.flags)
        wire = {
            rid: s["bytes_sent"] // 1024 for rid, s in server.stats().items() if not rid.startswith("resp_ok")
        }

    rows = queue_rows(db_path)
    states: dict[str, int] = {}
    for state, _ in rows.values():
        states[state] = states.get(state, 0) + 1
    figures = Figures(
        scenario.name,
        seconds,
        sampler.peak_sum,
        sampler.hwm_sum,
        sampler.hwm_of("run"),
        sampler.hwm_of("writer"),
        sampler.samples,
        states,
        wire,
    )
    RESULTS.append(figures)
    print(
        f"\n{scenario.name}: {seconds:.1f} s, peak RSS sum {sampler.peak_sum / MiB:.0f} MiB, "
        f"HWM sum {sampler.hwm_sum / MiB:.0f} MiB (run {figures.hwm_run / MiB:.0f}, "
        f"writer {figures.hwm_writer / MiB:.0f}), {sampler.samples} samples, exit {code}"
    )

    stderr_tail = (tmp_path / "run.err").read_bytes()[-2000:].decode(errors="replace")
    if sampler.tripped_at is not None:
        pytest.fail(
            f"{scenario.name}: killed by the guard at {sampler.tripped_at / MiB:.0f} MiB "
            f"after {seconds:.1f} s (run + writer RSS); queue states: {states}"
        )
    assert code is not None, f"{scenario.name}: run did not finish in {RUN_TIMEOUT_S:.0f} s"
    assert sampler.samples >= 3, "too few memory samples to trust the peak"
    if len(os.sched_getaffinity(0)) >= 2:  # else `run` writes in its own process
        assert "writer" in sampler.label_by_pid.values(), "no writer process seen: the test measures both"

    problems = [] if code == 0 else [f"run exited {code}: {stderr_tail}"]
    if sampler.peak_sum >= PEAK_BOUND:
        problems.append(f"peak RSS sum {sampler.peak_sum / MiB:.0f} MiB >= {PEAK_BOUND / MiB:.0f} MiB")
    if sampler.hwm_sum >= PEAK_BOUND:
        problems.append(f"VmHWM sum {sampler.hwm_sum / MiB:.0f} MiB >= {PEAK_BOUND / MiB:.0f} MiB")
    not_archived = [rid for rid in scenario.archived if rows.get(rid, ("missing", None))[0] != "archived"]
    if not_archived:
        problems.append(
            f"not archived: {[(rid, *rows.get(rid, ('missing', None))) for rid in not_archived[:10]]}"
        )
    for rid in scenario.failing:
        state, error = rows.get(rid, ("missing", None))
        if state != "failed" or LIMIT_TEXT not in (error or ""):
            problems.append(f"{rid}: {state}, error {error!r} (want failed, naming {LIMIT_TEXT})")
    assert not problems, f"{scenario.name}:\n  " + "\n  ".join(problems)

    status = cli("status", "--json")
    assert status.returncode == 0, status.stderr.decode()
    counted = json.loads(status.stdout)["states"]
    assert counted["archived"] == len(scenario.archived), counted
    assert counted["failed"] == len(scenario.failing), counted

    shown = cli("show", "resp_ok_007")
    assert shown.returncode == 0, shown.stderr.decode()
    assert shown.stdout == hostile.ok_body("resp_ok_007")
    if "resp_under" not in scenario.hostile_ids:
        return
    shown = cli("show", "resp_under")
    assert shown.returncode == 0, shown.stderr.decode()
    expected = hostile.sized_body("resp_under", hostile.under_size(scenario.limit_mb))
    assert len(shown.stdout) == len(expected)
    assert sha(shown.stdout) == sha(expected), "resp_under is not byte-exact"
