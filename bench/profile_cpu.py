"""Profile ``archiver run --once`` in the cpu-bound scenario with py-spy and summarize the hotspots.

    python bench/profile_cpu.py [--ids 10000] [--concurrency 32] [--rate 250] [--postgres URL|throwaway]
                                [--keep DIR] [--top 30]

Starts the mock API (latency 0) as a separate process, warms its body cache, enqueues the
IDs into a fresh database (not profiled), then runs
``py-spy record --format raw --threads -- python -m archiver run --once`` and prints, per
thread, the share of samples (py-spy counts only samples where the thread is on the CPU,
not idle in a wait), then for the event-loop thread: inclusive % by archiver function,
inclusive % by library, and self % by function. With ``--keep DIR`` the raw stacks
(``profile.txt``, flamegraph-ready collapsed format) stay in DIR.

Needs ``py-spy`` (``pip install py-spy``); as a non-root user it may need
``sysctl kernel.yama.ptrace_scope=0`` or ``--cap-add SYS_PTRACE`` in a container.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import PY, MockApi, _pg_admin, _pg_with_database, _postgres, clean_env, run_process, write_ids

FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")

LIBRARIES = [
    ("archiver/", "archiver"),
    ("sqlalchemy/", "sqlalchemy"),
    ("aiosqlite/", "aiosqlite"),
    ("asyncpg/", "asyncpg"),
    ("aiohttp/", "aiohttp"),
    ("yarl/", "yarl"),
    ("multidict/", "multidict"),
    ("structlog/", "structlog"),
    ("prometheus_client/", "prometheus_client"),
    ("alembic/", "alembic"),
    ("asyncio/", "asyncio"),
    ("greenlet", "greenlet"),
    ("sqlite3/", "sqlite3"),
    ("json/", "json (stdlib)"),
    ("<frozen importlib", "imports"),
]

# Phases of the event-loop thread: the first rule that matches a frame, searched from the
# top of the stack (leaf) down, names the phase. SQLAlchemy's async layer runs statements
# in a greenlet whose stack starts at Connection.execute, without the archiver caller.
PHASES = [
    (lambda f, p: "importlib._bootstrap" in p, "startup: imports"),
    (lambda f, p: f in {"migrate", "open_database", "_current_revision", "create_engine"}
     and ("archiver/db.py" in p or "archiver/migrate.py" in p), "startup: open database, schema check"),
    (lambda f, p: f == "normalize_body", "normalize (normalize_body)"),
    (lambda f, p: f.startswith("ProcessWriter."), "handing batches to the writer process (pickle, pipe)"),
    (lambda f, p: f == "classify_response", "policy (classify_response: orjson.loads + checks)"),
    (lambda f, p: f == "ResponsesClient.fetch", "HTTP request (aiohttp session.get/read)"),
    (lambda f, p: f.startswith("ArchiveStore."), "DB write_batch (archiver side, excl. greenlet)"),
    (lambda f, p: f == "QueueStore.claim_batch", "DB claim_batch"),
    (lambda f, p: f.startswith("QueueStore."), "DB other queue statements"),
    (lambda f, p: f.startswith("Metrics.") or "prometheus_client" in p, "metrics (prometheus)"),
    (lambda f, p: "structlog" in p or "archiver/logs.py" in p, "logging"),
    (lambda f, p: f.startswith(("Worker.", "Fetcher.")), "worker glue (fetch_one/_writer/_claimer own code)"),
]  # fmt: skip


def phase_of(frames: list[tuple[str, str]]) -> str:
    for func, path in reversed(frames):
        for rule, name in PHASES:
            if rule(func, path):
                return name
    if frames and "sqlalchemy/" in frames[0][1]:
        return "SQLAlchemy statement execution in greenlet (compile, params, bind processors)"
    leaf = frames[-1][1] if frames else ""
    if "aiohttp/" in leaf or "yarl/" in leaf or "multidict/" in leaf:
        return "event loop: aiohttp callbacks (response parsing, connection reuse)"
    if "aiosqlite/" in leaf:
        return "event loop: aiosqlite result hand-off"
    return "event loop: asyncio/selectors and other callbacks"


def parse_frame(frame: str) -> tuple[str, str]:
    m = FRAME_RE.match(frame.strip())
    if not m:
        return frame.strip(), ""
    return m.group("func"), m.group("file")


def library_of(file: str) -> str:
    for needle, name in LIBRARIES:
        if needle in file:
            return name
    return "other: " + file.rsplit("/", 1)[-1] if file else "other"


def _split(stack: str) -> tuple[str, str, list[str]]:
    """(process, thread, Python frames) of one py-spy raw line (with or without --subprocesses)."""
    frames = stack.split(";")
    process = "run"
    while frames and frames[0].startswith("process "):
        if "archiver.writer" in frames[0]:
            process = "writer"
        frames = frames[1:]
    thread = frames[0].split(": ", 1)[-1] if frames and frames[0].startswith("thread ") else "?"
    frames = frames[1:]
    if "connection_worker" in thread or any("connection_worker" in f for f in frames):
        thread = "aiosqlite (waiting in tx.get)" if frames and "core.py:59)" in frames[-1] else "aiosqlite"
    elif "waitpid" in thread:
        thread = "asyncio child watcher (waitpid)"
    else:
        # Until the threading module names it, the main thread shows as a bare id.
        thread = "MainThread"
    return process, thread, frames


def analyze(raw: Path, top: int) -> str:
    per_thread: Counter[tuple[str, str]] = Counter()
    stacks: list[tuple[str, str, list[tuple[str, str]], int]] = []
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        stack, _, count_s = line.rpartition(" ")
        try:
            count = int(count_s)
        except ValueError:
            continue
        process, thread, frames = _split(stack)
        per_thread[(process, thread)] += count
        stacks.append((process, thread, [parse_frame(f) for f in frames], count))
    total = sum(per_thread.values())
    out = [f"samples: {total} (on-CPU only; GIL waits can show as on-CPU)"]
    for (process, thread), n in sorted(per_thread.items()):
        out.append(f"  {process:7s} {thread:32s} {n:6d}  {100 * n / total:5.1f}%")
    for process in ("run", "writer"):
        main = [(frames, n) for p, t, frames, n in stacks if p == process and t == "MainThread"]
        if main:
            title = "archiver run" if process == "run" else "writer process (python -m archiver.writer)"
            out.append(_analyze_main(title, main, top))
    return "\n".join(out)


def _analyze_main(title: str, main: list[tuple[list[tuple[str, str]], int]], top: int) -> str:
    out: list[str] = []
    main_total = sum(n for _, n in main) or 1

    phases: Counter[str] = Counter()
    for frames, n in main:
        phases[phase_of(frames)] += n
    inclusive_fn: Counter[str] = Counter()
    inclusive_lib: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    for frames, n in main:
        seen_fn: set[str] = set()
        seen_lib: set[str] = set()
        for func, file in frames:
            key = f"{func} ({file})"
            if "archiver/" in file and key not in seen_fn:
                inclusive_fn[key] += n
                seen_fn.add(key)
            lib = library_of(file)
            if lib not in seen_lib:
                inclusive_lib[lib] += n
                seen_lib.add(lib)
        if frames:
            func, file = frames[-1]
            self_fn[f"{func} ({file})"] += n

    def pct(n: int) -> str:
        return f"{100 * n / main_total:5.1f}%"

    out.append(f"\n=== {title}: main thread, {main_total} samples = 100%")
    out.append("\nby phase (each sample counted once, see PHASES):")
    out += [f"  {pct(n)}  {k}" for k, n in phases.most_common()]
    out.append("\ninclusive % by archiver function (time in it and everything it calls):")
    out += [f"  {pct(n)}  {k}" for k, n in inclusive_fn.most_common(top)]
    out.append("\ninclusive % by library (a sample counts once per library on its stack):")
    out += [f"  {pct(n)}  {k}" for k, n in inclusive_lib.most_common(top)]
    out.append("\nself % by function (the frame on top of the stack):")
    out += [f"  {pct(n)}  {k}" for k, n in self_fn.most_common(top)]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description="py-spy profile of archiver in the cpu-bound scenario")
    p.add_argument("--ids", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument(
        "--postgres", default=None, help="profile on this PostgreSQL server ('throwaway': start one)"
    )
    p.add_argument("--keep", default=None, metavar="DIR", help="keep the raw stacks in DIR")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--analyze", default=None, metavar="RAW", help="only summarize an existing raw profile")
    args = p.parse_args()
    if args.analyze:
        print(analyze(Path(args.analyze), args.top))
        return 0
    py_spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(py_spy).exists():
        print("profile: py-spy not found (pip install py-spy)", file=sys.stderr)
        return 2
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="archiver-profile-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        ids_file = write_ids(work / f"ids_{args.ids}.txt", args.ids)
        with _postgres(args.postgres) as pg, MockApi(0, 0) as mock:
            warm = run_process(
                [PY, str(Path(__file__).parent / "floor_aiohttp.py"), "--base-url", mock.base_url,
                 "--ids-file", str(ids_file), "--db", str(work / "warm.db"), "--concurrency", "32"],
                clean_env(),
            )  # fmt: skip
            if warm.returncode != 0:
                raise RuntimeError(warm.stderr)
            if pg:
                _pg_admin(pg, 'DROP DATABASE IF EXISTS "archiver_profile" WITH (FORCE)')
                _pg_admin(pg, 'CREATE DATABASE "archiver_profile"')
                url = _pg_with_database(pg, "archiver_profile")
            else:
                db = work / "profile.db"
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
                url = f"sqlite:///{db}"
            env = clean_env(ARCHIVER_DATABASE_URL=url, ARCHIVER_BASE_URL=mock.base_url)
            enq = run_process([PY, "-m", "archiver", "enqueue", str(ids_file)], env)
            if enq.returncode != 0:
                raise RuntimeError(enq.stderr)
            raw = work / "profile.txt"
            run = run_process(
                [py_spy, "record", "--subprocesses", "--format", "raw", "--threads", "--rate", str(args.rate),
                 "-o", str(raw), "--", PY, "-m", "archiver", "run", "--once",
                 "--concurrency", str(args.concurrency)],
                env,
            )  # fmt: skip
            if run.returncode != 0:
                raise RuntimeError(f"py-spy failed: {run.stderr[-2000:]}")
            print(f"archiver run --once over {args.ids} IDs under py-spy: {run.wall_s:.2f} s wall")
            print(analyze(raw, args.top))
            if pg:
                _pg_admin(pg, 'DROP DATABASE IF EXISTS "archiver_profile" WITH (FORCE)')
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
