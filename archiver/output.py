"""What the commands print: their JSON, the status table, and the rebuild summaries.

Pure text from the dicts the commands return (``rich`` only for a terminal), so a test can
check what a user sees without a process.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

from archiver.holds import hold_lines
from archiver.ids import response_id_problem
from archiver.queue import QUEUE_STATES, shown_name, unserved_line
from archiver.redaction import redact
from archiver.workers import worker_lines


def print_status(details: dict[str, Any], *, json_out: bool) -> None:
    """The ``status`` output: JSON, rich tables on a terminal, else plain text."""
    if json_out:
        print(dumps(details))
    elif sys.stdout.isatty():
        print_status_table(details)
    else:
        print(format_status(details))


def print_rebuild(result: Any, *, json_out: bool) -> None:
    """A renormalize or compact result: notes on stderr, then the summary line (or JSON) on stdout."""
    notes, line = result.lines()
    for note in notes:
        print(redact(note), file=sys.stderr)
    print(redact(dumps(result.as_dict())) if json_out else line)


UNKNOWN_STATE_FLAG = "unknown state: no archiver command takes or moves these rows"
SHOWN_UNKNOWN_STATES = 20
"""Unknown states listed by name in the text output (``--json`` has them all)."""


def shown_id(response_id: str) -> str:
    """A queue row's ID as the output shows it: another program may have queued one that is
    not a response ID (archiver fails it), shown quoted and cut, never a terminal escape."""
    if response_id_problem(response_id) is None:
        return response_id
    return repr(response_id[:80] + ("..." if len(response_id) > 80 else ""))


def shown_text(text: str | None) -> str | None:
    """Text from a row (an error) with each character that is not printable shown as ``?``:
    archiver stores errors that way, but a row edited by hand may hold terminal escapes."""
    if text is None or text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def state_rows(details: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(label, rows, flag) per state: every known state, then the unknown ones (the first
    ``SHOWN_UNKNOWN_STATES`` by rows, then one line for the rest), flagged."""
    rows = [(state, int(details["states"].get(state, 0)), "") for state in QUEUE_STATES]
    unknown = sorted((details.get("unknown_states") or {}).items(), key=lambda item: (-item[1], item[0]))
    rows.extend((shown_name(state), n, UNKNOWN_STATE_FLAG) for state, n in unknown[:SHOWN_UNKNOWN_STATES])
    rest = unknown[SHOWN_UNKNOWN_STATES:]
    if rest:
        label = f"({len(rest):,} more unknown states: status --json lists them)"
        rows.append((label, sum(n for _, n in rest), UNKNOWN_STATE_FLAG))
    return rows


def format_status(details: dict[str, Any]) -> str:
    """A readable status table."""
    lines = [f"database: {details['database']}", ""]
    rows = state_rows(details)
    width = max(len(label) for label, _, _ in rows)
    for label, n, flag in rows:
        lines.append(f"  {label:<{width}}  {n:>10,}" + (f"  ({flag})" if flag else ""))
    lines.append(f"  {'total':<{width}}  {details['total']:>10,}")
    lines.append("")
    lines.extend(source_lines(details))
    lines.extend(_health_lines(details))
    if details.get("error_rows") is not None:
        lines.append(_errors_title(details) + (":" if details["recent_errors"] else ""))
        for e in details["recent_errors"]:
            code = e["status_code"] if e["status_code"] is not None else "-"
            rid, error = shown_id(e["response_id"]), shown_text(e["error"])
            lines.append(f"  {rid}  {e['state']}  attempts={e['attempts']}  status={code}  {error}")
    return "\n".join(lines)


def source_lines(details: dict[str, Any]) -> list[str]:
    """Counts per source (when any row is not ``default``'s), and sources nobody serves."""
    sources: dict[str, dict[str, int]] = details.get("sources") or {}
    lines: list[str] = []
    if set(sources) - {"default"}:
        lines.append("per source:")
        labels = {name: shown_name(name) for name in sources}
        width = max(len(label) for label in labels.values())
        for name, counts in sources.items():
            unknown = sorted(
                ((state, n) for state, n in counts.items() if state not in QUEUE_STATES and n),
                key=lambda item: (-item[1], item[0]),
            )
            shown = "  ".join(
                [f"{state} {counts.get(state, 0):,}" for state in QUEUE_STATES]
                + [f"{shown_name(state)} {n:,}" for state, n in unknown[:SHOWN_UNKNOWN_STATES]]
            )
            if len(unknown) > SHOWN_UNKNOWN_STATES:
                rest = unknown[SHOWN_UNKNOWN_STATES:]
                shown += f"  ({len(rest):,} more unknown states: {sum(n for _, n in rest):,} rows)"
            lines.append(f"  {labels[name]:<{width}}  {shown}")
    for name, waiting in (details.get("unserved_sources") or {}).items():
        lines.append(unserved_line(name, waiting))
    return [*lines, ""] if lines else []


def _errors_title(details: dict[str, Any]) -> str:
    """``recent errors in failed, not_found, pending (10 of 523; ...)``, or ``...: none``."""
    shown, matching = len(details["recent_errors"]), details["error_rows"]
    title = f"recent errors in {', '.join(details['error_states'])}"
    if not matching:
        return f"{title}: none"
    more = "" if shown >= matching else "; --limit N shows more"
    return f"{title} ({shown:,} of {matching:,}{more})"


def _health_lines(details: dict[str, Any]) -> list[str]:
    """Oldest pending age, expired leases and expiry risk, one line each."""
    age = details["oldest_pending_age_s"]
    lines = [
        f"oldest pending: {_human_age(age) if age is not None else '-'}",
        f"expired leases: {details['expired_leases']}",
    ]
    if details.get("retention_days"):
        lines.append(
            f"expiry (provider keeps {details['retention_days']:g} days): "
            f"{details['pending_near_expiry']} pending within a day of expiry, "
            f"{details['pending_past_retention']} past it"
        )
    lines.extend(hold_lines(details))
    # A worker whose hold is listed above is not listed again (rows of an older archiver
    # name no source, so they have no hold entry and keep their worker line).
    holding = {w["owner"] for h in (details.get("held_sources") or {}).values() for w in h["holders"]}
    lines.extend(
        worker_lines({"workers": [w for w in details.get("workers") or [] if w["owner"] not in holding]})
    )
    if "archive" in details:
        from archiver.projection import archive_lines

        lines.extend(archive_lines(details["archive"]))
    return lines


def print_status_table(details: dict[str, Any]) -> None:
    """The status as rich tables, for a terminal."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    # Text from the database and the provider is data, never rich markup ("[bold]" in an
    # error message must print as it is).
    console.print(Text(f"database: {details['database']}"))
    states = Table(show_header=True)
    states.add_column("state")
    states.add_column("rows", justify="right")
    states.add_column("")
    for label, n, flag in state_rows(details):
        states.add_row(Text(label), f"{n:,}", Text(flag))
    states.add_row("total", f"{details['total']:,}", style="bold")
    console.print(states)
    for line in [*source_lines(details), *_health_lines(details)]:
        console.print(Text(line))
    if not details["recent_errors"] and details.get("error_rows") is not None:
        console.print(_errors_title(details), markup=False, highlight=False)
    if details["recent_errors"]:
        errors = Table(title=_errors_title(details))
        for column in ("response_id", "state", "attempts", "status", "error"):
            errors.add_column(column)
        for e in details["recent_errors"]:
            code = str(e["status_code"]) if e["status_code"] is not None else "-"
            errors.add_row(
                Text(shown_id(e["response_id"])),
                Text(e["state"]),
                str(e["attempts"]),
                code,
                Text(shown_text(e["error"]) or ""),
            )
        console.print(errors)


def _human_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def dumps(value: Any) -> str:
    """JSON text for command output."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
