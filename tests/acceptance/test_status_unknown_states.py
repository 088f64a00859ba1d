"""``archiver status`` with queue rows in a state archiver does not know (set by an older
or newer version, or a plain INSERT): they are counted, listed and flagged, never dropped
from the table while the total counts them."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy import text

from archiver.db import open_database

from .conftest import Cli

pytestmark = pytest.mark.timeout(120)


async def _set_states(url: str, states: dict[str, str]) -> None:
    async with open_database(url, create=False) as engine, engine.begin() as conn:
        for rid, state in states.items():
            await conn.execute(
                text("UPDATE archive_queue SET state = :s WHERE id = :id"), {"s": state, "id": rid}
            )


@pytest.fixture
def odd_states(cli: Cli) -> Cli:
    """5 rows: 2 pending, 2 'paused' (a newer version's state), 1 'Pending' (a typo)."""
    ids = ["resp_a", "resp_b", "resp_c", "resp_d", "resp_e"]
    assert cli("enqueue", input="\n".join(ids).encode()).returncode == 0
    states = {"resp_b": "paused", "resp_c": "paused", "resp_d": "Pending"}
    asyncio.run(_set_states(cli.env["ARCHIVER_DATABASE_URL"], states))
    return cli


def test_status_json_flags_rows_in_unknown_states(odd_states: Cli) -> None:
    out = odd_states("status", "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["total"] == 5
    assert sum(status["states"].values()) == 5
    assert status["states"]["paused"] == 2 and status["states"]["Pending"] == 1
    assert status["unknown_states"] == {"Pending": 1, "paused": 2}
    assert status["sources"]["default"]["paused"] == 2


def test_status_text_lists_and_flags_rows_in_unknown_states(odd_states: Cli) -> None:
    out = odd_states("status")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    rows = {line.split()[0]: line for line in lines if line.startswith("  ") and line.split()}
    assert rows["pending"].split()[1] == "2"
    assert rows["total"].split()[1] == "5"
    for state, count in (("paused", "2"), ("Pending", "1")):
        assert state in rows, out.stdout.decode()
        assert rows[state].split()[1] == count
        assert "unknown state" in rows[state]
    # The listed counts add up to the total.
    listed = sum(int(line.split()[1].replace(",", "")) for name, line in rows.items() if name != "total")
    assert listed == 5
