"""Command line: parse flags (:mod:`archiver.arguments`; each setting also read from an
``ARCHIVER_*`` variable, :mod:`archiver.options`), build Settings, run one async command.
Expected faults print one line and exit non-zero, never a traceback.

:mod:`archiver.commands`, and with it SQLAlchemy and aiohttp, is imported by the handler
that needs it: ``run`` starts its writer process first (see :func:`_run`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

from archiver import heap
from archiver.arguments import DEMO_DATABASE_URL, build_parser
from archiver.childproc import discard, start_writer_process, wants_process
from archiver.deadline import enable_exit_at_deadline
from archiver.errors import ArchiverError, ConfigError
from archiver.logs import configure_logging, register_secret
from archiver.options import (
    env_number,
    export_cursor,
    export_format_from,
    log_level,
    settings_from,
)
from archiver.redaction import install_excepthook, redact, register_database_url
from archiver.secret_sources import register_secrets, register_source_secrets
from archiver.settings import Settings
from archiver.signals import interrupt_backstop, quiet_late_thread_results
from archiver.streams import discard_stdout, flush_output, guard_streams, open_closed_std_streams, write_all

T = TypeVar("T")


def console() -> NoReturn:
    """The ``archiver`` console script and ``python -m archiver``: :func:`main`, then a fast exit.

    When :func:`main` returns, every database connection is closed and the writer process
    has exited; what is left is the interpreter tearing down SQLAlchemy, aiohttp and the
    rest, which took ~0.1 s per command and bought nothing. Output is flushed first. An
    unexpected exception still ends the normal way, with its traceback.
    """
    heap.hold()  # until the command's imports are done (_arun)
    enable_exit_at_deadline()
    stdout_closed = open_closed_std_streams()
    guard_streams()
    quiet_late_thread_results()
    code = flush_output(main(), stdout_closed=stdout_closed)
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``archiver`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    env = os.environ
    install_excepthook()
    configure_logging(log_level(args, env))
    try:
        register_secrets(  # may wait on a key FIFO: Ctrl-C there is "interrupted"
            env,
            api_key_file=getattr(args, "api_key_file", None),
            database_url=getattr(args, "database_url", None),
            base_url=getattr(args, "base_url", None),
        )
        settings = settings_from(args, env)
        register_secret(settings.api_key)
        register_database_url(settings.database_url)
        args.sources_config = _load_config(settings, env)
        handler = _HANDLERS[args.command]
        return handler(args, settings)
    except ArchiverError as exc:
        print(f"archiver: error: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # Whoever read stdout stopped (`| head`): nothing more to tell them, and no traceback.
        discard_stdout()
        return 1
    except Exception as exc:
        line = _database_error_line(exc)
        if line is None:
            raise
        print(f"archiver: error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("archiver: interrupted", file=sys.stderr)
        return 130


def _database_error_line(exc: Exception) -> str | None:
    """One line for a database error that escaped :func:`archiver.db.open_database`, else None.

    Never ``str(exc)``: a SQLAlchemy error carries its statement and parameters.
    """
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy_exc is None or not isinstance(exc, sqlalchemy_exc.DBAPIError):
        return None
    from archiver.db_faults import database_error

    return redact(str(database_error(exc, "the database")))


def _load_config(settings: Settings, env: Mapping[str, str]) -> dict[str, Any] | None:
    """The sources file of ``--config`` (None without one), its keys registered as secrets.

    Raises:
        ConfigError: the file is missing or invalid (every command, exit 2).
    """
    if settings.config is None:
        return None
    from archiver.sources import load_config

    config = load_config(settings.config)
    register_source_secrets(config, env)
    return dict(config)


def _arun(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, the collector first back on (see :mod:`archiver.heap`).

    Every command calls it once its imports are done, so the objects they made are
    frozen before the work starts.
    """
    heap.release()
    with interrupt_backstop():
        return asyncio.run(main)


def _enqueue(args: argparse.Namespace, settings: Settings) -> int:
    from archiver import commands
    from archiver.sources import SourceRouting

    if args.follow is not None and args.files:
        raise ConfigError("--follow FILE reads that one file: give no other FILE")
    if args.follow == "-":
        raise ConfigError(
            "--follow reads a log by its path, not stdin: pipe into `archiver enqueue` (no --follow), "
            "which commits lines as they arrive"
        )
    routing = SourceRouting.from_settings(settings, args.sources_config)
    report = _arun(
        commands.enqueue(settings, args.files, refetch=args.refetch, follow=args.follow, routing=routing)
    )
    print(report.summary(refetch=args.refetch))
    if args.follow is not None:
        return 0  # stopped by a signal; rejected lines were reported as they came
    return 1 if report.failed else 0


def _refuse_in_memory(settings: Settings, command: str) -> None:
    """``run`` and ``demo`` share their database between tasks (and a writer process): an
    in-memory database cannot be shared, and would end with the command anyway."""
    from archiver.dburl import normalize_database_url

    if normalize_database_url(settings.database_url).database == ":memory:":
        raise ConfigError(
            f"{command} needs a database file: sqlite:///:memory: cannot be shared by the claimer "
            "and the writer and ends with the command (use e.g. sqlite:///archive.db)"
        )


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from archiver.sources import refuse_keyless, source_settings

    _refuse_in_memory(settings, "run")
    sources = source_settings(settings, args.sources_config, os.environ, api_key_file=args.api_key_file)
    refuse_keyless(sources, from_config=args.sources_config is not None)
    # The writer process starts before this process imports the heavy part of archiver,
    # so both import at once, on two cores (see archiver.childproc).
    early = start_writer_process() if wants_process(settings.writer, settings.database_url) else None
    progress = summary = None
    try:
        from archiver import commands
        from archiver.output import dumps
        from archiver.progress import Progress

        progress = Progress.for_stream(sys.stderr) if args.once else None
        summary = _arun(
            commands.run(settings, once=args.once, progress=progress, writer_process=early, sources=sources)
        )
    finally:
        if progress is not None:
            progress.close(summary)
        discard(early)
    if args.once:
        print(redact(dumps(summary.as_dict())))  # stop_reason may quote the server
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from archiver import commands
    from archiver.output import print_status

    details = _arun(
        commands.status(
            settings, error_states=args.error_states, limit=args.limit, served_sources=_served(args, settings)
        )
    )
    print_status(details, json_out=args.json)
    return 0


def _served(args: argparse.Namespace, settings: Settings) -> list[str]:
    """The sources ``run`` with the same config and environment serves."""
    from archiver.sources import served_sources

    return served_sources(settings, args.sources_config, os.environ)


def _show(args: argparse.Namespace, settings: Settings) -> int:
    from archiver import commands

    raw = _arun(commands.show(settings, args.response_id))  # NotArchived says where it stands
    write_all(raw)
    return 0


def _retry(args: argparse.Namespace, settings: Settings) -> int:
    from archiver import commands
    from archiver.ingest import MAX_PRINTED_REJECTIONS

    report = _arun(commands.retry(settings, args.state or ["failed", "not_found"], args.response_ids))
    # Through the redaction point: an ID given may be the API key pasted by mistake.
    for problem in report.rejected[:MAX_PRINTED_REJECTIONS]:
        print(redact(f"archiver: rejected: {problem}"), file=sys.stderr)
    for rid, reason in report.not_moved:
        print(redact(f"archiver: {rid} not moved: {reason}"), file=sys.stderr)
    why = f": {report.nothing_reason}" if report.nothing_reason else ""
    rejected = f", rejected {len(report.rejected)}" if report.rejected else ""
    if len(report.rejected) > MAX_PRINTED_REJECTIONS:
        rejected += f" ({len(report.rejected) - MAX_PRINTED_REJECTIONS} not printed)"
    print(f"moved {report.moved} back to pending{rejected}{why}")
    return 1 if report.rejected else 0


def _check(args: argparse.Namespace, settings: Settings) -> int:
    from archiver import commands

    result = _arun(
        commands.check(
            settings,
            max_pending_age_s=args.max_pending_age,
            max_expired_leases=args.max_expired_leases,
            served_sources=_served(args, settings),
        )
    )
    if result.ok:
        print("ok")
        return 0
    for problem in result.problems:
        print(redact(problem), file=sys.stderr)
    return 1


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from archiver import commands

    head = _arun(commands.migrate(settings))
    print(f"schema at {head}")
    return 0


def _mock_server(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from archiver.mockapi import MockConfig, serve_forever

    key = os.environ.get("ARCHIVER_MOCK_API_KEY") if args.require_key else None
    if args.require_key and not key:
        raise ConfigError("--require-key needs ARCHIVER_MOCK_API_KEY")
    config = MockConfig(
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        api_key=key,
        fail_rate=args.fail_rate,
        retry_after_s=args.retry_after,
        bodies_dir=Path(args.bodies_dir) if args.bodies_dir else None,
        seed=args.seed,
    )

    def ready(base_url: str) -> None:
        print(f"mock Responses API at {base_url}  (ARCHIVER_BASE_URL={base_url})", flush=True)

    try:
        with contextlib.suppress(KeyboardInterrupt):
            _arun(serve_forever(config, args.host, args.port, ready=ready))
    except OSError as exc:  # the address: in use, not this host's, no such name
        where = f"{args.host}:{args.port}"
        raise ArchiverError(f"cannot serve the mock API on {where}: {exc.strerror or exc}") from None
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from archiver.demo import run_demo

    if args.database_url is None:  # never ARCHIVER_DATABASE_URL (see settings_from)
        settings = settings.with_changes(database_url=DEMO_DATABASE_URL)
    _refuse_in_memory(settings, "demo")
    return _arun(run_demo(settings, count=args.count))


def _renormalize(args: argparse.Namespace, settings: Settings) -> int:
    from archiver import commands
    from archiver.output import print_rebuild
    from archiver.progress import WorkProgress

    progress = WorkProgress.for_stream(sys.stderr, "renormalizing")
    try:
        result = _arun(
            commands.renormalize(
                settings, args.response_ids, everything=args.everything, since=args.since, progress=progress
            )
        )
    finally:
        progress.close()
    print_rebuild(result, json_out=args.json)
    return 1 if result.report.failed or result.missing else 0


def _compact(args: argparse.Namespace, settings: Settings) -> int:
    from archiver import commands
    from archiver.output import print_rebuild
    from archiver.progress import WorkProgress

    progress = WorkProgress.for_stream(sys.stderr, "compacting")
    try:
        result = _arun(commands.compact(settings, vacuum=args.vacuum, progress=progress))
    finally:
        progress.close()
    print_rebuild(result, json_out=args.json)
    return 1 if result.report.failed else 0


def _export(args: argparse.Namespace, settings: Settings) -> int:
    from archiver import commands
    from archiver.output import dumps

    env = os.environ
    chunk_size = args.chunk_size or env_number(env, "ARCHIVER_EXPORT_CHUNK_SIZE", "chunk_size", 5000)
    cursor = export_cursor(args.cursor, env)
    report = _arun(
        commands.export(
            settings,
            args.out_dir,
            fmt=args.export_format or export_format_from(env),
            cursor=cursor,
            full=args.full,
            chunk_size=chunk_size,
        )
    )
    print(dumps(dataclasses.asdict(report)))
    return 0


_HANDLERS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "enqueue": _enqueue,
    "run": _run,
    "status": _status,
    "show": _show,
    "retry": _retry,
    "check": _check,
    "migrate": _migrate,
    "mock-server": _mock_server,
    "demo": _demo,
    "export": _export,
    "renormalize": _renormalize,
    "compact": _compact,
}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
