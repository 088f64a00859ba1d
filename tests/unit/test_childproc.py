"""Choosing and starting the writer process early (archiver.childproc)."""

from __future__ import annotations

import pytest

from archiver.childproc import is_in_memory, wants_process


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite://", True),
        ("sqlite:///:memory:", True),
        ("sqlite+aiosqlite:///:memory:?cache=shared", True),
        ("sqlite:///archive.db", False),
        ("sqlite:////var/lib/archiver/archive.db", False),
        ("postgresql://archiver@db/archive", False),
    ],
)
def test_in_memory_sqlite_urls_are_told_apart(url: str, expected: bool) -> None:
    assert is_in_memory(url) is expected


def test_auto_wants_a_process_with_two_cores_and_a_database_a_child_can_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("archiver.childproc.cores", lambda: 2)
    assert wants_process("auto", "sqlite:///archive.db")
    assert not wants_process("auto", "sqlite:///:memory:")
    assert wants_process("process", "sqlite:///archive.db")
    assert not wants_process("inline", "sqlite:///archive.db")
    monkeypatch.setattr("archiver.childproc.cores", lambda: 1)
    assert not wants_process("auto", "postgresql://db/archive")
