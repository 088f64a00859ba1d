"""Normalize modes, --since times and the renormalize/compact command lines (no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from archiver.cli import build_parser, settings_from
from archiver.errors import ConfigError
from archiver.projection import PROJECTION_TABLES, SUMMARY_TABLES, keep_children
from archiver.renormalize import check_scope, parse_since
from archiver.schema import CHILD_TABLES
from archiver.settings import Settings

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7d", datetime(2026, 11, 24, 12, 0, tzinfo=UTC)),
        ("36h", datetime(2026, 11, 30, 0, 0, tzinfo=UTC)),
        ("90m", datetime(2026, 12, 1, 10, 30, tzinfo=UTC)),
        ("2w", datetime(2026, 11, 17, 12, 0, tzinfo=UTC)),
        ("1.5H", datetime(2026, 12, 1, 10, 30, tzinfo=UTC)),
        ("30s", datetime(2026, 12, 1, 11, 59, 30, tzinfo=UTC)),
        ("2026-11-24", datetime(2026, 11, 24, tzinfo=UTC)),
        ("2026-11-24T08:00", datetime(2026, 11, 24, 8, 0, tzinfo=UTC)),
        ("2026-11-24T08:00Z", datetime(2026, 11, 24, 8, 0, tzinfo=UTC)),
        ("2026-11-24T09:00:00+01:00", datetime(2026, 11, 24, 8, 0, tzinfo=UTC)),
        (" 2026-11-24 08:00:00 ", datetime(2026, 11, 24, 8, 0, tzinfo=UTC)),
    ],
)
def test_since_takes_iso_8601_or_an_age(value: str, expected: datetime) -> None:
    assert parse_since(value, NOW) == expected


@pytest.mark.parametrize("value", ["yesterday", "7", "d7", "-7d", "2026-13-01", ""])
def test_since_refuses_what_is_not_a_time(value: str) -> None:
    with pytest.raises(ConfigError, match="is not a time: use an ISO 8601"):
        parse_since(value, NOW)


def test_since_refuses_the_future() -> None:
    with pytest.raises(ConfigError, match="in the future"):
        parse_since("2026-12-02", NOW)


def test_exactly_one_scope() -> None:
    for ids, everything, since in [((), False, None), (("resp_a",), True, None), ((), True, "7d")]:
        with pytest.raises(ConfigError, match="exactly one"):
            check_scope(ids, everything=everything, since=since)
    check_scope(("resp_a",), everything=False, since=None)


def test_summary_keeps_the_usage_rows_only() -> None:
    children = {table.name: [{"row": table.name}] for table in CHILD_TABLES}
    assert keep_children(children, "full") is children
    assert set(keep_children(children, "summary")) == {"billing_details", "tool_usage"} == SUMMARY_TABLES
    assert PROJECTION_TABLES == CHILD_TABLES  # input items are not child tables: no rebuild touches them


def test_normalize_is_a_flag_and_a_variable() -> None:
    parser = build_parser()
    for command in ("run", "renormalize"):
        args = parser.parse_args(
            [command, "--normalize", "summary", *(["--all"] if command != "run" else [])]
        )
        assert settings_from(args, {}).normalize == "summary"
    args = parser.parse_args(["run"])
    assert settings_from(args, {}).normalize is None  # the archive's mode
    assert settings_from(args, {"ARCHIVER_NORMALIZE": "Summary"}).normalize == "summary"
    with pytest.raises(ConfigError, match="ARCHIVER_NORMALIZE='brief': must be one of full, summary"):
        settings_from(args, {"ARCHIVER_NORMALIZE": "brief"})
    with pytest.raises(ConfigError, match="normalize must be one of"):
        Settings(normalize="brief")
