"""ToolSetIds on SQLite in memory: what its cache remembers and forgets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, event, func, select

from archiver import tool_sets as tool_sets_module
from archiver.schema import metadata, tool_sets
from archiver.tool_sets import ToolSetIds


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    metadata.create_all(engine, tables=[tool_sets])
    yield engine
    engine.dispose()


def values(n: int) -> list[list[dict[str, str]]]:
    return [[{"type": "function", "name": f"f{i}"}] for i in range(n)]


def test_the_cache_keeps_the_most_recently_used_ids(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tool_sets_module, "MAX_CACHED", 3)
    ids = ToolSetIds()
    five = values(5)
    statements: list[str] = []
    first: list[int | None] = []
    for value in five:  # one transaction each: the order they were used in is known
        with engine.begin() as conn:
            ids.begin()
            first += ids.resolve_sync(conn, [value])
        ids.confirm()
    assert len(ids._ids) == 3  # the bound holds

    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with engine.begin() as conn:
        ids.begin()
        assert ids.resolve_sync(conn, five[2:3]) == first[2:3]  # remembered (2, 3, 4): no statement
        assert statements == []
        assert ids.resolve_sync(conn, five[:1]) == first[:1]  # forgotten: found again
        assert any("SELECT" in s for s in statements)
        assert conn.execute(select(func.count()).select_from(tool_sets)).scalar() == 5
    ids.confirm()
    assert len(ids._ids) == 3
    with engine.begin() as conn:
        statements.clear()
        ids.begin()
        assert ids.resolve_sync(conn, [five[2], five[0], five[4]]) == [first[2], first[0], first[4]]
        assert statements == []  # the ones used last stayed; 3, used longest ago, went


def test_none_is_no_tool_set_and_an_empty_array_is_one(engine: Engine) -> None:
    ids = ToolSetIds()
    with engine.begin() as conn:
        none, empty, again = ids.resolve_sync(conn, [None, [], []])
    assert none is None and empty is not None and again == empty
