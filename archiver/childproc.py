"""Starting the writer process (:mod:`archiver.writer`), with no heavy imports.

The process itself runs ``python -m archiver.childproc`` (:func:`main`): this module
is light, so the collector can be turned off before the writer's imports (see
:mod:`archiver.heap`).

``archiver run`` starts the child before it imports SQLAlchemy and aiohttp itself, so
the child's own start-up (about 0.3 s of imports, then opening the database) runs on the
second core while the parent imports, instead of after it. In the cpu-bound benchmark
that was +7 % (bench/README.md). The child never receives the API key: it is left out of
its environment, and it is not on any command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import weakref

from archiver import heap
from archiver.errors import WriterFailed

ENV_NOT_FOR_CHILD = (
    "ARCHIVER_API_KEY",
    "DASHSCOPE_API_KEY",
    "ARCHIVER_API_KEY_FILE",
    "ARCHIVER_MOCK_API_KEY",
)


_STARTED: weakref.WeakSet[subprocess.Popen[bytes]] = weakref.WeakSet()
"""Writer processes this process started, for :func:`kill_started`."""


def cores() -> int:
    """The cores this process may use (cgroups and taskset included)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux, or a seccomp filter refuses it
        return os.cpu_count() or 1


def is_in_memory(database_url: str) -> bool:
    """True for an in-memory SQLite URL (``sqlite://``, ``sqlite:///:memory:``)."""
    url = database_url.strip()
    if not url.startswith("sqlite"):
        return False
    path = url.partition("://")[2].partition("?")[0]
    return path in ("", "/", "/:memory:")


def wants_process(mode: str, database_url: str) -> bool:
    """Whether ``--writer`` ``mode`` means a writer process for this database.

    ``auto`` means one when a second core is there to run it and the database is one a
    child can open too (not an in-memory SQLite database).
    """
    if mode == "auto":
        return cores() >= 2 and not is_in_memory(database_url)
    return mode == "process"


def start_writer_process() -> subprocess.Popen[bytes]:
    """Start the writer process (``python -m archiver.childproc``) with pipes on its stdin and stdout.

    It imports what it needs, then waits for its settings on stdin; closing stdin before
    sending them makes it exit.

    Raises:
        WriterFailed: the process could not be started.
    """
    env = {k: v for k, v in os.environ.items() if k not in ENV_NOT_FOR_CHILD}
    # The child writes on a thread of its own: with glibc's default of one malloc arena per
    # thread and core, memory freed after a large body stays mapped in the other arena.
    # Two arenas measured 10-20 MiB less peak RSS with large bodies (README, Guarantees).
    env.setdefault("MALLOC_ARENA_MAX", "2")
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "archiver.childproc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Through the parent (archiver.writer), so its log lines go where the parent's
            # go: above a progress bar, never onto its line.
            stderr=subprocess.PIPE,
            env=env,
        )
    except OSError as exc:
        raise WriterFailed(f"cannot start the writer process: {exc}") from None
    _STARTED.add(process)
    return process


def kill_started() -> None:
    """Kill every writer process this process started that still runs (before an exit that
    cannot wait for them: see :func:`archiver.deadline.exit_at_deadline`). A batch cut this
    way is rolled back; its rows' leases recover them."""
    for process in list(_STARTED):
        if process.poll() is None:
            process.kill()


def discard(process: subprocess.Popen[bytes] | None) -> None:
    """Make sure a started writer process is gone (kill it if it still runs)."""
    if process is None:
        return
    if process.poll() is None:
        process.kill()
    process.wait()
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None and not pipe.closed:
            pipe.close()


def main() -> None:
    """Entry point of the writer process: :func:`archiver.writer.child_main`."""
    heap.hold()  # until the writer's imports are done
    from archiver.writer import child_main  # after hold(), on purpose

    child_main()


if __name__ == "__main__":
    main()
