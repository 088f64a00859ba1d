"""Benchmarks: archiver against the official-SDK baseline, an aiohttp floor and the latency bound.

    python bench/run.py [--quick] [--scenario NAME ...] [--repeat N] [--ids N]
                        [--postgres URL|throwaway] [--json OUT.json]

Every scenario starts the project's mock API as a separate process on loopback
(``python -m archiver mock-server --port 0``) and, on the same IDs, times each client as
a whole process (interpreter start to exit):

- ``archiver``: ``python -m archiver run --once --concurrency C`` on a fresh SQLite file
  (``archiver enqueue`` runs first and is not timed);
- ``baseline``: ``bench/baseline_openai.py`` (the official ``openai`` SDK, skipped with a
  note when the package is not installed);
- ``floor``: ``bench/floor_aiohttp.py`` (one aiohttp session, ``json.loads``, raw bytes
  only).

The clients run interleaved (rotating order) in every repetition, after one untimed
warm-up pass that makes the mock render and cache every body. The tables show medians;
``bound`` is concurrency / mean mock latency, the rate a perfect client reaches. See
``bench/README.md`` for the scenarios, their targets and the recorded results.
"""

# ruff: noqa: S603  # subprocesses are this interpreter running archiver and the bench scripts
from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

BENCH = Path(__file__).resolve().parent
PY = sys.executable
ID_FORMAT = "resp_ok_b{:07d}"

# name -> (full size, quick size) and settings; "ids" is overridden by --ids.
SCENARIOS: dict[str, dict[str, Any]] = {
    "latency-bound": {"ids": (5_000, 500), "concurrency": 128, "latency_ms": 100, "jitter_ms": 20},
    "cpu-bound": {"ids": (10_000, 1_000), "concurrency": 32, "latency_ms": 0, "jitter_ms": 0},
    "memory": {
        "sizes": ((1_000_000, 100_000), (100_000, 10_000)),
        "seconds": (20.0, 5.0),
        "concurrency": 128,
        "latency_ms": 100,
        "jitter_ms": 20,
    },
    "enqueue": {"ids": (1_000_000, 100_000)},
    "postgres": {"ids": (10_000, 1_000), "concurrency": 32, "latency_ms": 0, "jitter_ms": 0},
}
TARGETS = {
    "latency-bound": {"archiver/bound": 0.9, "archiver/baseline": 2.0},
    "cpu-bound": {"archiver/baseline": 3.0, "archiver/floor": 0.4},
    "postgres": {"archiver/baseline": 3.0, "archiver/floor": 0.4},
}
MEMORY_LIMIT_MB = 250.0
MEMORY_GROWTH = 1.20
ENQUEUE_LIMIT_S = 20.0


# --- processes -------------------------------------------------------------------------------


def byte_compile_archiver() -> str:
    """Write the ``.pyc`` files of the installed archiver package, as ``pip install`` does.

    An editable install (``pip install -e .``) leaves them to the first import, and with
    ``PYTHONDONTWRITEBYTECODE=1`` (set on the machines here) that import never writes them:
    every archiver process, and its writer process, would compile ~9,000 lines of source
    at start (~50-100 ms each here), which no regular install pays. The floor and the
    baseline are single scripts on installed packages, so they pay nothing of the kind.

    Returns:
        A line for the run's header.
    """
    spec = find_spec("archiver")
    if spec is None or not spec.submodule_search_locations:
        return "archiver is not installed: pip install -e ."
    folder = next(iter(spec.submodule_search_locations))
    ok = compileall.compile_dir(folder, quiet=1, workers=1)
    return f"byte-compiled {folder} (as a regular install is)" + ("" if ok else ": some files failed")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus every ARCHIVER_* setting and API key, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ARCHIVER_") and k not in {"DASHSCOPE_API_KEY", "OPENAI_API_KEY"}
    }
    env["ARCHIVER_LOG_LEVEL"] = "warning"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class ProcessRun:
    """One timed child process."""

    wall_s: float
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mb: float | None
    """The largest VmHWM seen (with ``sample_rss``; VmHWM is per process image, reset at exec)."""
    rss_samples_mb: list[tuple[float, float]] = field(default_factory=list)


def _rss_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) of a live process in MB; None once it is gone or a zombie."""
    rss = hwm = None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) / 1024
    except OSError:
        return None
    return (rss, hwm) if rss is not None and hwm is not None else None


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def run_process(
    cmd: list[str],
    env: dict[str, str],
    *,
    timeout: float = 1800.0,
    stop_after: float | None = None,
    sample_rss: bool = False,
    cwd: Path | None = None,
) -> ProcessRun:
    """Run ``cmd`` to its end, timing the process from spawn to reap.

    With ``sample_rss``, /proc/PID/status of the process and of its children (archiver's
    writer process) is polled every 50 ms: the peak RSS is the sum of the largest
    ``VmHWM`` seen per process (the kernel's high-water mark of that process image; it can
    miss growth in the last 50 ms before exit). ``ru_maxrss`` from ``wait4`` is no good
    here: Linux carries the parent's RSS at fork over into the child's figure, so a
    big harness would inflate it. ``stop_after`` sends SIGTERM after that many seconds
    (a graceful stop for archiver).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        done = threading.Event()
        samples: list[tuple[float, float]] = []
        peak: list[float] = []

        peaks: dict[int, float] = {}  # VmHWM per process of the tree (archiver's writer child too)

        def sampler() -> None:
            while not done.wait(0.05):
                got = _rss_mb(proc.pid)
                if got is None:
                    continue
                rss = got[0]
                peaks[proc.pid] = got[1]
                for child in _children(proc.pid):
                    child_got = _rss_mb(child)
                    if child_got is not None:
                        rss += child_got[0]
                        peaks[child] = max(peaks.get(child, 0.0), child_got[1])
                samples.append((time.perf_counter() - started, rss))
                # Sum of each process's own peak: an upper bound of the tree's peak.
                peak[:] = [max([sum(peaks.values()), *peak])]

        def stopper(sig: int) -> None:
            if not done.is_set():
                with _suppress():
                    proc.send_signal(sig)

        timers = [threading.Timer(timeout, stopper, (signal.SIGKILL,))]
        if stop_after is not None:
            timers.append(threading.Timer(stop_after, stopper, (signal.SIGTERM,)))
        threads = [threading.Thread(target=sampler, daemon=True)] if sample_rss else []
        for t in [*timers, *threads]:
            t.start()
        _, status = os.waitpid(proc.pid, 0)
        wall = time.perf_counter() - started
        done.set()
        for t in timers:
            t.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ProcessRun(
            wall_s=wall,
            returncode=proc.returncode,
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
            peak_rss_mb=peak[0] if peak else None,
            rss_samples_mb=samples,
        )


def _suppress() -> contextlib.suppress:
    return contextlib.suppress(ProcessLookupError, OSError)


class MockApi:
    """``python -m archiver mock-server`` as a separate process on loopback."""

    def __init__(self, latency_ms: float, jitter_ms: float) -> None:
        self.proc = subprocess.Popen(
            [PY, "-m", "archiver", "mock-server", "--port", "0",
             "--latency-ms", str(latency_ms), "--jitter-ms", str(jitter_ms)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=clean_env(), text=True,
        )  # fmt: skip
        line = self._first_line(timeout=30)
        match = re.search(r"(http://\S+)", line)
        if match is None:
            self.close()
            raise RuntimeError(f"mock server did not print its URL: {line!r}")
        self.base_url = match.group(1)
        parts = urlsplit(self.base_url)
        self.root = urlunsplit((parts.scheme, parts.netloc, "", "", ""))

    def _first_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        return box[0] if box else ""

    def reset(self) -> None:
        req = urllib.request.Request(self.root + "/_mock/reset", method="POST", data=b"")  # noqa: S310
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
            resp.read()

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.root + "/_mock/stats", timeout=30) as resp:  # noqa: S310 - loopback
            data: dict[str, Any] = json.loads(resp.read())
        data.pop("requests_by_id", None)
        return data

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> MockApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- inputs and checks --------------------------------------------------------------------------


def write_ids(path: Path, n: int) -> Path:
    if not path.exists():
        with open(path, "w", encoding="ascii") as f:
            f.writelines(ID_FORMAT.format(i) + "\n" for i in range(n))
    return path


def baseline_available() -> tuple[bool, str]:
    """Whether ``import openai`` works in this interpreter (checked in a child process)."""
    probe = subprocess.run([PY, "-c", "import openai"], capture_output=True, text=True, env=clean_env())
    if probe.returncode == 0:
        return True, ""
    last = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "import failed"
    return False, f"openai not importable ({last}); pip install openai"


def expected_rows(n: int) -> dict[str, int] | None:
    """Rows per archive table that n ``resp_ok_b`` bodies normalize into (None if unknown)."""
    try:
        from archiver.mockapi import body_for
        from archiver.normalize import item_digest, normalize_body
    except ImportError:
        return None
    counts: Counter[str] = Counter({"responses": n})
    tool_sets: set[str] = set()  # each distinct tools value is one tool_sets row
    for i in range(n):
        normalized = normalize_body(body_for(ID_FORMAT.format(i)))
        for table, rows in normalized.children.items():
            counts[table] += len(rows)
        if normalized.tools is not None:
            tool_sets.add(item_digest(normalized.tools))
    counts["tool_sets"] = len(tool_sets)
    return dict(counts)


def sqlite_counts(db: Path, tables: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """(rows per table, queue rows per state) of an archiver SQLite file."""
    con = sqlite3.connect(db)
    try:
        rows = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        states = dict(con.execute("SELECT state, count(*) FROM archive_queue GROUP BY state").fetchall())
    finally:
        con.close()
    return rows, states


def check_rows(expected: dict[str, int] | None, got: dict[str, int], states: dict[str, int], n: int) -> str:
    """One line: PASS when every table has exactly the expected rows and every ID is archived."""
    if expected is None:
        return f"rows: archived {states.get('archived', 0)}/{n} (expected child rows unknown)"
    missing = {t: (got.get(t, 0), e) for t, e in expected.items() if got.get(t, 0) != e}
    archived_ok = states.get("archived", 0) == n and sum(states.values()) == n
    verdict = "PASS" if not missing and archived_ok else "FAIL"
    total_got = sum(got.get(t, 0) for t in expected)
    total_exp = sum(expected.values())
    detail = ", ".join(f"{t} {g}/{e}" for t, (g, e) in missing.items()) or "every table exact"
    return (
        f"rows: {total_got}/{total_exp} normalized rows in {len(expected)} tables ({detail}); "
        f"queue archived {states.get('archived', 0)}/{n}: {verdict}"
    )


# --- PostgreSQL ---------------------------------------------------------------------------------


def _pg_with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def _pg_admin(url: str, sql: str) -> None:
    import asyncpg  # an archiver dependency

    async def go() -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def pg_counts(url: str, tables: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    import asyncpg

    async def go() -> tuple[dict[str, int], dict[str, int]]:
        conn = await asyncpg.connect(url)
        try:
            rows = {t: await conn.fetchval(f'SELECT count(*) FROM "{t}"') for t in tables}
            states = {
                r[0]: r[1]
                for r in await conn.fetch("SELECT state, count(*) FROM archive_queue GROUP BY state")
            }
        finally:
            await conn.close()
        return rows, states

    return asyncio.run(go())


# --- one scenario ---------------------------------------------------------------------------------


@dataclass
class Sample:
    client: str
    ids_per_s: float
    wall_s: float
    inner_ids_per_s: float | None = None
    requests: int | None = None
    max_in_flight: int | None = None


@dataclass
class ScenarioResult:
    name: str
    description: str
    samples: list[Sample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: list[tuple[str, bool | None, str]] = field(default_factory=list)  # (what, ok, line)
    figures: dict[str, Any] = field(default_factory=dict)

    def medians(self) -> dict[str, float]:
        by: dict[str, list[float]] = {}
        for s in self.samples:
            by.setdefault(s.client, []).append(s.ids_per_s)
        return {c: statistics.median(v) for c, v in by.items()}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.repeat: int = args.repeat or (1 if self.quick else 5)
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="archiver-bench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.have_baseline, self.baseline_note = (
            (False, "--no-baseline") if args.no_baseline else baseline_available()
        )
        self.results: list[ScenarioResult] = []

    def size(self, spec: tuple[Any, Any]) -> Any:
        return spec[1] if self.quick else spec[0]

    def say(self, text: str) -> None:
        print(text, flush=True)

    # -- throughput scenarios (latency-bound, cpu-bound, postgres) --

    def throughput(self, name: str, postgres_url: str | None = None) -> ScenarioResult:
        spec = SCENARIOS[name]
        n = self.args.ids or self.size(spec["ids"])
        c = spec["concurrency"]
        latency_ms, jitter_ms = spec["latency_ms"], spec["jitter_ms"]
        engine = "PostgreSQL" if postgres_url else "SQLite"
        result = ScenarioResult(
            name,
            f"{n} IDs, concurrency {c}, mock latency {latency_ms}±{jitter_ms} ms, archiver on {engine}, "
            f"{self.repeat} repetition(s)",
        )
        self.say(f"\n== {name}: {result.description} ==")
        ids_file = write_ids(self.work / f"ids_{n}.txt", n)
        expected = expected_rows(n)
        tables = sorted(expected) if expected else ["responses"]
        clients = ["archiver", "baseline", "floor"]
        if not self.have_baseline:
            clients.remove("baseline")
            result.notes.append(f"baseline skipped: {self.baseline_note}")
            self.say(f"baseline: skipped ({self.baseline_note})")
        row_lines: list[str] = []
        rows_ok = True
        with MockApi(latency_ms, jitter_ms) as mock:
            # Untimed warm-up: the mock renders and caches every body once.
            warm = self._client_run("floor", mock, ids_file, c)
            if warm.returncode != 0:
                raise RuntimeError(f"warm-up failed: {warm.stderr[-2000:]}")
            for rep in range(self.repeat):
                order = clients[rep % len(clients) :] + clients[: rep % len(clients)]
                for client in order:
                    mock.reset()
                    if client == "archiver":
                        sample, line, ok = self._archiver_once(
                            mock, ids_file, n, c, expected, tables, postgres_url
                        )
                        row_lines.append(line)
                        rows_ok = rows_ok and ok
                    else:
                        run = self._client_run(client, mock, ids_file, c)
                        if run.returncode != 0:
                            raise RuntimeError(
                                f"{client} failed (exit {run.returncode}): {run.stderr[-2000:]}"
                            )
                        inner = json.loads(run.stdout.strip().splitlines()[-1])
                        if inner["fetched"] != n:
                            raise RuntimeError(f"{client} stored {inner['fetched']} of {n}")
                        sample = Sample(client, n / run.wall_s, run.wall_s, n / inner["duration_s"])
                    stats = mock.stats()
                    sample.requests, sample.max_in_flight = stats["requests_total"], stats["max_in_flight"]
                    result.samples.append(sample)
                    self.say(
                        f"  rep {rep + 1} {client:9s} {sample.ids_per_s:9.1f} IDs/s"
                        f"  wall {sample.wall_s:7.2f} s"
                        f"  requests {sample.requests}  max in flight {sample.max_in_flight}"
                    )
        bound = c / (latency_ms / 1000) if latency_ms > 0 else None
        result.figures.update(ids=n, concurrency=c, bound=bound)
        self._report_throughput(result, bound, TARGETS.get(name, {}))
        last_rows = row_lines[-1] if row_lines else "rows: not checked"
        result.checks.append(("normalized rows complete", rows_ok, last_rows))
        self.say(last_rows if rows_ok else "\n".join(["rows check failed:", *row_lines]))
        self.results.append(result)
        return result

    def _client_run(self, client: str, mock: MockApi, ids_file: Path, c: int) -> ProcessRun:
        db = self.work / f"{client}-{uuid.uuid4().hex[:8]}.db"
        script = BENCH / ("floor_aiohttp.py" if client == "floor" else "baseline_openai.py")
        cmd = [PY, str(script), "--base-url", mock.base_url, "--ids-file", str(ids_file), "--db", str(db),
               "--concurrency", str(c)]  # fmt: skip
        try:
            return run_process(cmd, clean_env())
        finally:
            _unlink_db(db)

    def _archiver_once(
        self,
        mock: MockApi,
        ids_file: Path,
        n: int,
        c: int,
        expected: dict[str, int] | None,
        tables: list[str],
        postgres_url: str | None,
    ) -> tuple[Sample, str, bool]:
        db = self.work / f"archiver-{uuid.uuid4().hex[:8]}.db"
        pg_db = f"archiver_bench_{uuid.uuid4().hex[:10]}"
        if postgres_url:
            _pg_admin(postgres_url, f'CREATE DATABASE "{pg_db}"')
            url = _pg_with_database(postgres_url, pg_db)
        else:
            url = f"sqlite:///{db}"
        env = clean_env(ARCHIVER_DATABASE_URL=url, ARCHIVER_BASE_URL=mock.base_url)
        try:
            enq = run_process([PY, "-m", "archiver", "enqueue", str(ids_file)], env)
            if enq.returncode != 0:
                raise RuntimeError(f"archiver enqueue failed: {enq.stderr[-2000:]}")
            run = run_process([PY, "-m", "archiver", "run", "--once", "--concurrency", str(c)], env)
            if run.returncode != 0:
                raise RuntimeError(f"archiver run failed (exit {run.returncode}): {run.stderr[-2000:]}")
            summary = json.loads(run.stdout[run.stdout.index("{") :])
            if postgres_url:
                got, states = pg_counts(url, tables)
            else:
                got, states = sqlite_counts(db, tables)
            line = check_rows(expected, got, states, n)
            inner = n / summary["duration_s"] if summary.get("duration_s") else None
            return Sample("archiver", n / run.wall_s, run.wall_s, inner), line, line.endswith("PASS")
        finally:
            _unlink_db(db)
            if postgres_url:
                _pg_admin(postgres_url, f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')

    def _report_throughput(
        self, result: ScenarioResult, bound: float | None, targets: dict[str, float]
    ) -> None:
        med = result.medians()
        self.say(
            f"\n{'client':10s} {'median IDs/s':>13s} {'min':>9s} {'max':>9s} "
            f"{'median wall s':>14s} {'in-run IDs/s':>13s}"
        )
        for client in ("archiver", "baseline", "floor"):
            rows = [s for s in result.samples if s.client == client]
            if not rows:
                self.say(f"{client:10s} {'skipped':>13s}")
                continue
            rates = [s.ids_per_s for s in rows]
            inner = [s.inner_ids_per_s for s in rows if s.inner_ids_per_s]
            self.say(
                f"{client:10s} {statistics.median(rates):13.1f} {min(rates):9.1f} {max(rates):9.1f} "
                f"{statistics.median(s.wall_s for s in rows):14.2f} "
                f"{(statistics.median(inner) if inner else float('nan')):13.1f}"
            )
            result.figures[f"{client}_ids_per_s"] = statistics.median(rates)
            result.figures[f"{client}_inner_ids_per_s"] = statistics.median(inner) if inner else None
        if bound is not None:
            self.say(f"{'bound':10s} {bound:13.1f}   (concurrency / mean latency)")
        a = med.get("archiver")
        ratios = {
            "archiver/baseline": (a / med["baseline"]) if a and med.get("baseline") else None,
            "archiver/floor": (a / med["floor"]) if a and med.get("floor") else None,
            "archiver/bound": (a / bound) if a and bound else None,
        }
        why_missing = {
            "archiver/baseline": "baseline skipped" if not self.have_baseline else "no figure",
            "archiver/floor": "no figure",
            "archiver/bound": "mock latency 0: no latency bound" if bound is None else "no figure",
        }
        arch = [x for x in result.samples if x.client == "archiver" and x.inner_ids_per_s]
        if arch:
            n = result.figures.get("ids") or 0
            overhead = statistics.median(x.wall_s - n / x.inner_ids_per_s for x in arch)  # type: ignore[operator]
            result.figures["archiver_startup_s"] = overhead
            self.say(f"archiver process start-up and shutdown (wall - in-run): median {overhead:.2f} s")
            inner = result.figures.get("archiver_inner_ids_per_s")
            if bound and inner:
                result.figures["archiver/bound (in-run)"] = inner / bound
                self.say(f"info: archiver/bound in-run (excluding start-up): {inner / bound:.2f}")
        floor = med.get("floor")
        if bound and floor:
            # What the least possible client reaches against the bound on this machine,
            # in this run: the reference for the archiver/bound target.
            result.figures["floor/bound"] = floor / bound
            self.say(f"info: floor/bound (the least a client can do, same run): {floor / bound:.2f}")
        for key, value in ratios.items():
            target = targets.get(key)
            if value is None:
                line = f"ratio {key}: n/a ({why_missing[key]})"
                ok = None
            else:
                ok = None if target is None else value >= target
                verdict = "" if target is None else f"  (target >= {target:g}: {'PASS' if ok else 'FAIL'})"
                line = f"ratio {key}: {value:.2f}{verdict}"
            result.figures[key] = value
            if target is not None:
                result.checks.append((f"{key} >= {target:g}", ok, line))
            self.say(line)

    # -- memory --

    def memory(self) -> ScenarioResult:
        spec = SCENARIOS["memory"]
        big, small = (self.size(s) for s in spec["sizes"])
        seconds = self.args.memory_seconds or self.size(spec["seconds"])
        c = spec["concurrency"]
        result = ScenarioResult(
            "memory",
            f"peak RSS of `archiver run --once --concurrency {c}` over {big} vs {small} queued IDs, "
            f"mock latency {spec['latency_ms']}±{spec['jitter_ms']} ms, SIGTERM after {seconds:g} s, "
            f"{self.repeat} repetition(s)",
        )
        self.say(f"\n== memory: {result.description} ==")
        templates = {}
        for n in (small, big):
            template = self.work / f"queue-{n}.db"
            ids_file = write_ids(self.work / f"ids_{n}.txt", n)
            if not template.exists():
                env = clean_env(ARCHIVER_DATABASE_URL=f"sqlite:///{template}")
                enq = run_process([PY, "-m", "archiver", "enqueue", str(ids_file)], env)
                if enq.returncode != 0:
                    raise RuntimeError(f"enqueue failed: {enq.stderr[-2000:]}")
            templates[n] = template
        peaks: dict[int, list[float]] = {small: [], big: []}
        fetched: dict[int, list[int]] = {small: [], big: []}
        with MockApi(spec["latency_ms"], spec["jitter_ms"]) as mock:
            for rep in range(self.repeat):
                for n in (small, big) if rep % 2 == 0 else (big, small):
                    db = self.work / f"mem-{uuid.uuid4().hex[:8]}.db"
                    shutil.copyfile(templates[n], db)
                    env = clean_env(ARCHIVER_DATABASE_URL=f"sqlite:///{db}", ARCHIVER_BASE_URL=mock.base_url)
                    try:
                        run = run_process(
                            [PY, "-m", "archiver", "run", "--once", "--concurrency", str(c)],
                            env, stop_after=seconds, sample_rss=True,
                        )  # fmt: skip
                    finally:
                        _unlink_db(db)
                    if run.peak_rss_mb is None:
                        raise RuntimeError("cannot read /proc/PID/status (the memory scenario needs Linux)")
                    if run.returncode != 0:
                        raise RuntimeError(f"archiver run exited {run.returncode}: {run.stderr[-2000:]}")
                    summary = json.loads(run.stdout[run.stdout.index("{") :])
                    peaks[n].append(run.peak_rss_mb)
                    fetched[n].append(summary["archived"])
                    early = [r for t, r in run.rss_samples_mb if t <= min(3.0, seconds / 2)]
                    self.say(
                        f"  rep {rep + 1} {n:>9d} queued: peak RSS {run.peak_rss_mb:6.1f} MB "
                        f"(RSS at ~3 s {max(early) if early else float('nan'):.1f} MB), archived "
                        f"{summary['archived']} before SIGTERM, stop {summary.get('stop_reason')}"
                    )
        med_big, med_small = statistics.median(peaks[big]), statistics.median(peaks[small])
        growth = med_big / med_small
        result.figures.update(
            big=big, small=small, seconds=seconds, peak_big_mb=med_big, peak_small_mb=med_small,
            growth=growth, archived_big=statistics.median(fetched[big]),
            archived_small=statistics.median(fetched[small]),
        )  # fmt: skip
        self.say(f"\nmedian peak RSS: {big} queued {med_big:.1f} MB, {small} queued {med_small:.1f} MB")
        line1 = f"memory peak RSS ({big} queued): {med_big:.1f} MB  (target < {MEMORY_LIMIT_MB:g} MB: " + (
            "PASS)" if med_big < MEMORY_LIMIT_MB else "FAIL)"
        )
        line2 = f"memory ratio {big}/{small}: {growth:.3f}  (target <= {MEMORY_GROWTH:g}: " + (
            "PASS)" if growth <= MEMORY_GROWTH else "FAIL)"
        )
        result.checks += [
            (f"peak RSS < {MEMORY_LIMIT_MB:g} MB", med_big < MEMORY_LIMIT_MB, line1),
            (f"within {MEMORY_GROWTH - 1:.0%} of the {small} figure", growth <= MEMORY_GROWTH, line2),
        ]
        self.say(line1)
        self.say(line2)
        self.results.append(result)
        return result

    # -- enqueue --

    def enqueue(self, postgres_url: str | None = None) -> ScenarioResult:
        n = self.size(SCENARIOS["enqueue"]["ids"])
        engine = "PostgreSQL" if postgres_url else "SQLite"
        name = "enqueue" if not postgres_url else "enqueue-postgres"
        result = ScenarioResult(
            name, f"`archiver enqueue` of {n} IDs from a file into a fresh {engine} database, "
            f"{self.repeat} repetition(s)",
        )  # fmt: skip
        self.say(f"\n== {name}: {result.description} ==")
        ids_file = write_ids(self.work / f"ids_{n}.txt", n)
        walls = []
        for rep in range(self.repeat):
            db = self.work / f"enq-{uuid.uuid4().hex[:8]}.db"
            pg_db = f"archiver_bench_{uuid.uuid4().hex[:10]}"
            if postgres_url:
                _pg_admin(postgres_url, f'CREATE DATABASE "{pg_db}"')
                url = _pg_with_database(postgres_url, pg_db)
            else:
                url = f"sqlite:///{db}"
            try:
                run = run_process(
                    [PY, "-m", "archiver", "enqueue", str(ids_file)],
                    clean_env(ARCHIVER_DATABASE_URL=url),
                    sample_rss=True,
                )
            finally:
                _unlink_db(db)
                if postgres_url:
                    _pg_admin(postgres_url, f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')
            if run.returncode != 0 or f"queued {n}," not in run.stdout:
                raise RuntimeError(f"enqueue failed: {run.stdout} {run.stderr[-2000:]}")
            walls.append(run.wall_s)
            self.say(
                f"  rep {rep + 1}: {run.wall_s:.2f} s ({n / run.wall_s:,.0f} IDs/s), "
                f"peak RSS {run.peak_rss_mb or float('nan'):.0f} MB"
            )
        med = statistics.median(walls)
        result.figures.update(ids=n, median_s=med, ids_per_s=n / med)
        limit = ENQUEUE_LIMIT_S * n / 1_000_000
        line = f"enqueue {n} IDs: median {med:.2f} s ({n / med:,.0f} IDs/s)  (target < {limit:g} s: " + (
            "PASS)" if med < limit else "FAIL)"
        )
        result.checks.append((f"< {limit:g} s", med < limit, line))
        self.say(line)
        self.results.append(result)
        return result

    # -- summary --

    def summary(self) -> None:
        self.say("\n== summary (medians) ==")
        for r in self.results:
            self.say(f"{r.name}: {r.description}")
            for note in r.notes:
                self.say(f"  note: {note}")
            for what, ok, line in r.checks:
                mark = "PASS" if ok else ("n/a" if ok is None else "FAIL")
                self.say(f"  [{mark}] {what}: {line}")


def _unlink_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with _suppress():
            Path(str(path) + suffix).unlink()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = ["latency-bound", "cpu-bound", "memory", "enqueue", "postgres"]
    p = argparse.ArgumentParser(description="archiver benchmarks (see bench/README.md)")
    p.add_argument("--quick", action="store_true", help="small sizes, 1 repetition (unless --repeat)")
    p.add_argument(
        "--scenario", action="append", choices=[*names, "all"], default=None,
        help="scenario to run (repeatable; default all; postgres needs --postgres)",
    )  # fmt: skip
    p.add_argument("--repeat", type=int, default=None, help="repetitions per client (default 5; --quick 1)")
    p.add_argument(
        "--ids", type=int, default=None, help="IDs for the throughput scenarios (overrides the size)"
    )
    p.add_argument(
        "--postgres", default=None, metavar="URL",
        help="also run cpu-bound (and enqueue) on this PostgreSQL server; the role must be allowed to "
        "CREATE DATABASE (one per repetition, dropped after). 'throwaway' starts a local server "
        "the way tests/conftest.py does",
    )  # fmt: skip
    p.add_argument("--memory-seconds", type=float, default=None, help="SIGTERM the memory runs after S s")
    p.add_argument("--no-baseline", action="store_true", help="skip the openai SDK baseline")
    p.add_argument("--json", default=None, metavar="PATH", help="also write every figure as JSON")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a new temp folder, removed)")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = args.scenario or ["all"]
    if "all" in chosen:
        chosen = ["latency-bound", "cpu-bound", "memory", "enqueue"] + (["postgres"] if args.postgres else [])
    if "postgres" in chosen and not args.postgres:
        print("bench: --scenario postgres needs --postgres URL (or --postgres throwaway)", file=sys.stderr)
        return 2
    bench = Bench(args)
    print(
        f"archiver bench: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
        f"work dir {bench.work}, repeat {bench.repeat}{' (quick)' if args.quick else ''}",
        flush=True,
    )
    print(byte_compile_archiver(), flush=True)
    runners: dict[str, Callable[[], Any]] = {
        "latency-bound": lambda: bench.throughput("latency-bound"),
        "cpu-bound": lambda: bench.throughput("cpu-bound"),
        "memory": bench.memory,
        "enqueue": bench.enqueue,
    }
    try:
        with _postgres(args.postgres) as pg_url:
            if pg_url:
                runners["postgres"] = lambda: (bench.throughput("postgres", pg_url), bench.enqueue(pg_url))
            for name in chosen:
                runners[name]()
        bench.summary()
    finally:
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    [{"name": r.name, "description": r.description, "figures": r.figures, "notes": r.notes,
                      "checks": [{"what": w, "ok": ok, "line": line} for w, ok, line in r.checks],
                      "samples": [s.__dict__ for s in r.samples]} for r in bench.results],
                    indent=2,
                )
            )  # fmt: skip
        if not args.workdir:
            shutil.rmtree(bench.work, ignore_errors=True)
    missed = [c for r in bench.results for c in r.checks if c[1] is False]
    return 1 if args.check and missed else 0


@contextmanager
def _postgres(spec: str | None) -> Iterator[str | None]:
    if not spec:
        yield None
    elif spec == "throwaway":
        # The server the test fixtures start (tests/pgserver.py), with the same settings.
        sys.path.insert(0, str(BENCH.parent))
        from tests.pgserver import throwaway_server

        with throwaway_server() as url:
            yield url
    else:
        yield spec.replace("postgres://", "postgresql://", 1)


if __name__ == "__main__":
    sys.exit(main())
