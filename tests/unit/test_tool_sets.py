"""ToolSetIds on SQLite in memory: what its cache remembers and forgets."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, func, select

from archiver import tool_sets as tool_sets_module
from archiver.normalize import item_digest
from archiver.projection import write_meta_sync
from archiver.schema import archive_meta, metadata, tool_sets
from archiver.tool_sets import SWEPT_KEY, ToolSetIds, _integral_floats_as_ints, tools_digest


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    metadata.create_all(engine, tables=[tool_sets, archive_meta])
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

    def on_tool_sets(*args: Any) -> None:  # besides the one read of the sweep count
        if "tool_sets" in args[2] and SWEPT_KEY not in args[2]:
            statements.append(args[2])

    event.listen(engine, "before_cursor_execute", on_tool_sets)
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


def test_a_sweep_makes_the_cache_forget(engine: Engine) -> None:
    """compact's sweep (archiver.orphans) counts itself in archive_meta: cached ids go."""
    ids = ToolSetIds()
    with engine.begin() as conn:
        ids.begin()
        (first,) = ids.resolve_sync(conn, values(1))
    ids.confirm()
    with engine.begin() as conn:  # the sweep deletes the set and counts itself
        conn.execute(tool_sets.delete())
        write_meta_sync(conn, SWEPT_KEY, "1")
    with engine.begin() as conn:
        ids.begin()
        (again,) = ids.resolve_sync(conn, values(1))
        assert conn.execute(select(tool_sets.c.id)).scalars().all() == [again]
    ids.confirm()
    assert first is not None


def test_none_is_no_tool_set_and_an_empty_array_is_one(engine: Engine) -> None:
    ids = ToolSetIds()
    with engine.begin() as conn:
        none, empty, again = ids.resolve_sync(conn, [None, [], []])
    assert none is None and empty is not None and again == empty


def test_the_digest_holds_what_jsonb_keeps_of_numbers_and_keys() -> None:
    """PostgreSQL's jsonb rewrites key order and integral floats; migration 0015 digests
    what it kept, the writer what the body says: both must be one digest."""
    from_body = [{"type": "function", "parameters": {"maximum": 1e18, "default": -0.0, "step": 1.0}}]
    from_jsonb = [{"parameters": {"default": 0.0, "maximum": 10**18, "step": 1}, "type": "function"}]
    assert tools_digest(from_body) == tools_digest(from_jsonb)
    # Values that differ still differ, and the value given is not changed.
    assert tools_digest([{"x": 1.5}]) != tools_digest([{"x": 1}])
    assert tools_digest([{"x": "1"}]) != tools_digest([{"x": 1}])
    assert tools_digest([{"x": True}]) != tools_digest([{"x": 1}])
    assert tools_digest([{"x": 2.0**70}]) != tools_digest([{"x": 2**70}])  # past 64 bits: left a float
    maximum = from_body[0]["parameters"]["maximum"]
    assert isinstance(maximum, float) and maximum == 1e18


def nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = [{"k": value}]
    return value


def test_the_digest_walks_a_hostile_nesting_without_recursion() -> None:
    # Far past Python's recursion limit: the walk has no recursion of its own.
    walked = _integral_floats_as_ints(nested(20_000, 2.0))
    for _ in range(20_000):
        walked = walked[0]["k"]
    assert walked == 2 and isinstance(walked, int)
    # Past orjson's 254 levels: the digest falls back to the standard library.
    assert tools_digest(nested(300, 2.0)) == tools_digest(nested(300, 2))


def test_the_digest_without_a_walk_is_the_digest_with_one() -> None:
    """Arrays with no integral float skip the copy; every number still digests as the walk has it."""
    rng = random.Random(17)
    numbers = [0.0, -0.0, 1.0, 100.0, 1.5, 2.5e-7, 1e16, 1.5e20, 12345678901234567.0, 2.0**64, 2**70, 7]
    numbers += [rng.uniform(-1e20, 1e20) for _ in range(500)]
    numbers += [float(rng.randint(-(10**18), 10**18)) for _ in range(500)]
    numbers += [rng.random() * 10 ** rng.randint(-10, 25) for _ in range(500)]
    strings = ["v1.0", "type2", "e1", "plain"]
    for value in [*numbers, *strings]:
        tools = [{"type": "function", "parameters": {"x": value, "note": "API v2"}}]
        assert tools_digest(tools) == item_digest(_integral_floats_as_ints(tools)), value
