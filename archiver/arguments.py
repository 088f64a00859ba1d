"""The argument parser: every command, its options and their help (the docs test reads it).

The settings options themselves are declared in :mod:`archiver.options`.
"""

from __future__ import annotations

import argparse

from archiver import __version__
from archiver.options import (
    COMMON_OPTIONS,
    ENQUEUE_OPTIONS,
    EXPORT_FORMATS,
    HTTP_OPTIONS,
    NORMALIZE_OPTION,
    RUN_OPTIONS,
    add_key_file,
    add_log_level,
    add_options,
)
from archiver.ranges import OPTION_RANGES
from archiver.ranges import parser as ranged

QUEUE_STATE_NAMES = ("pending", "in_flight", "archived", "not_found", "failed")
"""archiver.queue.QUEUE_STATES, without importing SQLAlchemy for a parser (a test keeps them equal)."""


DEMO_DATABASE_URL = "sqlite:///demo.db"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs test)."""
    common = argparse.ArgumentParser(add_help=False)
    add_options(common, COMMON_OPTIONS)
    add_log_level(common)
    demo_common = argparse.ArgumentParser(add_help=False)
    add_options(demo_common, [o for o in COMMON_OPTIONS if o[0] not in ("--database-url", "--config")])
    demo_common.add_argument(
        "--database-url",
        dest="database_url",
        default=None,
        help=f"the demo's database (default {DEMO_DATABASE_URL}). Only this flag sets it: "
        "ARCHIVER_DATABASE_URL is ignored, so the demo never writes into your archive",
    )
    add_log_level(demo_common)

    parser = argparse.ArgumentParser(
        prog="archiver",
        description="Archive stored responses of an OpenAI-compatible Responses API "
        "into SQLite or PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"archiver {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "enqueue",
        parents=[common],
        help="queue response IDs from files or stdin",
        description="Queue response IDs: one per line, or JSON lines with an id field; "
        "blank lines and # comments are skipped. Bad lines are reported with their line "
        "number (the first 100; the rest are counted); good lines are still queued; exit "
        "status 1 when any line was rejected. Piped lines are committed within a second; "
        "SIGINT/SIGTERM/SIGHUP commit what was read and exit.",
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="ID files (default: stdin; - for stdin)")
    p.add_argument(
        "--follow",
        metavar="FILE",
        default=None,
        help="follow this log like tail -F: wait for new lines, survive rotation and truncation, "
        "keep the position in the database (a restart neither loses nor re-reads lines); "
        "runs until SIGTERM/SIGINT/SIGHUP, then exits 0",
    )
    p.add_argument(
        "--refetch",
        action="store_true",
        help="also move already archived/failed/not_found IDs back to pending",
    )
    add_options(p, ENQUEUE_OPTIONS + [o for o in RUN_OPTIONS if o[0] == "--final-write-seconds"])

    p = sub.add_parser(
        "run",
        parents=[common],
        help="archive due IDs (daemon, or --once to drain and exit)",
        description="Claim due IDs, fetch them concurrently, write raw and normalized rows.",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="drain the queue and exit (backfill); default: run forever",
    )
    add_options(p, HTTP_OPTIONS + RUN_OPTIONS)
    add_key_file(p)

    p = sub.add_parser(
        "status",
        parents=[common],
        help="queue counts per state, oldest pending, recent errors",
        description="Show queue counts per state, the oldest pending age and recent errors.",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON object whose `states` maps every state to its count",
    )
    p.add_argument(
        "--state",
        dest="error_states",
        action="append",
        choices=QUEUE_STATE_NAMES,
        default=None,
        help="list the errors of rows in this state (repeatable; default failed, then not_found, "
        "then pending with an error)",
    )
    p.add_argument(
        "--limit",
        type=ranged(OPTION_RANGES["limit"]),
        default=10,
        help="how many errors to list (default 10)",
    )

    p = sub.add_parser(
        "show",
        parents=[common],
        help="print the archived raw JSON of one ID exactly as received",
        description="Print the archived raw JSON exactly as received. Exit 1 if not archived, "
        "saying on stderr where the ID stands: its state and last error, or not in the queue.",
    )
    p.add_argument("response_id", metavar="ID")

    p = sub.add_parser(
        "retry",
        parents=[common],
        help="move failed/not_found IDs back to pending",
        description="Move failed and not_found rows (or only the given IDs) back to pending. "
        "Says on stderr why a given ID did not move (not in the queue, already archived, in "
        "flight, already pending), or that there were no rows to move. An invalid ID is "
        "rejected on stderr, the valid ones still move, and the exit status is then 1.",
    )
    p.add_argument(
        "--state",
        action="append",
        choices=["failed", "not_found"],
        default=None,
        help="only rows in this state (repeatable; default both)",
    )
    p.add_argument("response_ids", nargs="*", metavar="ID")

    p = sub.add_parser(
        "check",
        parents=[common],
        help="health check: database reachable, schema current, queue not stalled (exit 0 or 1)",
        description="Exit 0 when the database is reachable, the schema is current and the queue is not "
        "stalled; otherwise exit 1 with one line per problem. For monitoring and ExecStartPre. "
        "It never migrates.",
    )
    p.add_argument(
        "--max-pending-age",
        type=ranged(OPTION_RANGES["max_pending_age"]),
        default=3600.0,
        help="problem when a pending row has been due for longer than this many seconds (default 3600)",
    )
    p.add_argument(
        "--max-expired-leases",
        type=ranged(OPTION_RANGES["max_expired_leases"]),
        default=0,
        help="problem when more in_flight rows than this have a lease expired over a minute ago (default 0)",
    )

    sub.add_parser(
        "migrate",
        parents=[common],
        help="bring the database schema up to date",
        description="Create or upgrade the schema (every command also does this on start).",
    )

    rebuild_options = [
        o for o in RUN_OPTIONS if o[0] in ("--batch-size", "--max-held-mb", "--final-write-seconds")
    ]
    p = sub.add_parser(
        "renormalize",
        parents=[common],
        help="rebuild the normalized rows from the raw bodies (online, resumable)",
        description="Rebuild the normalized rows of the given IDs, of every response (--all) or of "
        "those archived since a time (--since) from their raw bodies, in short transactions beside "
        "a running daemon. --all and --since resume where an interrupted run stopped. Prints a "
        "summary line; exit 1 when a given ID is not archived or a body could not be normalized.",
    )
    p.add_argument("response_ids", nargs="*", metavar="ID", help="IDs to renormalize")
    p.add_argument("--all", dest="everything", action="store_true", help="every archived response")
    p.add_argument(
        "--since",
        metavar="TIME",
        default=None,
        help="responses archived (archived_at) at or after TIME: ISO 8601 (2026-11-24, "
        "2026-11-24T08:00Z; UTC without an offset) or an age (90m, 36h, 7d, 2w)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_options(p, [NORMALIZE_OPTION, *rebuild_options])

    p = sub.add_parser(
        "compact",
        parents=[common],
        help="re-encode old raw bodies, rebuild their rows, give the space back (online)",
        description="Convert an archive to the current storage beside a running daemon: train a "
        "dictionary if there is none, re-encode raw bodies stored as received (before migration "
        "0008) or as plain zstd, rebuild those responses' normalized rows, remove the tool sets and "
        "input items no response references any more, then give the freed space back (SQLite: "
        "incremental vacuum; PostgreSQL: VACUUM). Resumable: run it again after a crash.",
    )
    p.add_argument(
        "--vacuum",
        action="store_true",
        help="also rewrite the whole database once to give every free byte back (SQLite: VACUUM, "
        "and auto_vacuum becomes INCREMENTAL; PostgreSQL: VACUUM FULL); needs the daemon stopped",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_options(p, rebuild_options)

    p = sub.add_parser(
        "mock-server",
        parents=[common],
        help="run the built-in mock Responses API on loopback",
        description="Serve the built-in mock Responses API (for demos and for testing pipelines).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=ranged(OPTION_RANGES["port"]),
        default=8765,
        help="port (default 8765; 0 picks a free one)",
    )
    p.add_argument("--latency-ms", type=float, default=0.0, help="added latency per request")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="uniform +- jitter around the latency")
    p.add_argument(
        "--fail-rate",
        type=float,
        default=0.0,
        help="fraction of requests answered with a transient fault",
    )
    p.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds sent with 429s")
    p.add_argument(
        "--bodies-dir", default=None, help="also serve the JSON bodies in this folder, by their id"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument(
        "--require-key",
        action="store_true",
        help="require the API key from ARCHIVER_MOCK_API_KEY (wrong key -> 401)",
    )

    p = sub.add_parser(
        "export",
        parents=[common],
        help="write what changed since the last export to JSONL, Parquet or CSV files",
        description="Export responses and their child rows changed since the cursor's last export "
        "(or everything with --full) as one batch of files per table; prints a JSON report.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="output directory (created if missing)")
    p.add_argument(
        "--format",
        dest="export_format",
        choices=list(EXPORT_FORMATS),
        default=None,
        help="file format (default jsonl; parquet needs pyarrow) [env: ARCHIVER_EXPORT_FORMAT]",
    )
    p.add_argument(
        "--cursor",
        default=None,
        help="export position name (default 'default') [env: ARCHIVER_EXPORT_CURSOR]",
    )
    p.add_argument("--full", action="store_true", help="export everything, not only what changed")
    p.add_argument(
        "--chunk-size",
        type=ranged(OPTION_RANGES["chunk_size"]),
        default=None,
        help="responses per read and per Parquet row group (default 5000) [env: ARCHIVER_EXPORT_CHUNK_SIZE]",
    )

    p = sub.add_parser(
        "demo",
        parents=[demo_common],
        help="end to end against the built-in mock API (no key needed)",
        description="Start the mock API, queue sample IDs, archive them, and show the result. "
        "Uses demo.db unless --database-url is given on the command line (ARCHIVER_DATABASE_URL "
        "is ignored); refuses a database holding IDs the demo did not create.",
    )
    p.add_argument(
        "--count", type=ranged(OPTION_RANGES["count"]), default=200, help="how many sample IDs (default 200)"
    )
    return parser
