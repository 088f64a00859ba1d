"""A PostgreSQL restart right after a rebuild's last batch (hostile12).

``renormalize`` and ``compact`` retry every batch's reads and writes while the database
restarts (README: "the rebuild's own retries go on"). What they do once the walk is over
(renormalize: remove its saved position and record the projection; compact: count what
stays plain, sweep orphans, VACUUM) must be retried the same way: a restart then is no
reason to end a finished rebuild with exit 1 and leave its position behind.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import select

from archiver.db import open_database
from archiver.rebuild import Rebuilder, RebuildReport
from archiver.renormalize import POSITION_KEY, renormalize
from archiver.schema import archive_meta, responses
from tests.integration.test_hostile_rebuild import _old_rows
from tests.pgserver import PgCluster

pytestmark = [pytest.mark.timeout(180), pytest.mark.postgres]

COUNT = 60
DOWN_S = 1.5


class RestartAfterTheWalk:
    """Stops the server the moment a rebuild's walk over the responses returns (its last
    batch committed) and starts it again ``DOWN_S`` later, as a failover or a minor
    upgrade restarts it."""

    def __init__(self, cluster: PgCluster, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cluster = cluster
        self.restarted: threading.Thread | None = None
        walk = Rebuilder.walk

        async def walk_then_restart(rebuilder: Rebuilder, *args: Any, **kwargs: Any) -> RebuildReport:
            report = await walk(rebuilder, *args, **kwargs)
            if self.restarted is None:
                self.cluster.stop("fast")
                self.restarted = threading.Thread(target=self._start_later, daemon=True)
                self.restarted.start()
            return report

        monkeypatch.setattr(Rebuilder, "walk", walk_then_restart)

    def _start_later(self) -> None:
        time.sleep(DOWN_S)
        self.cluster.start()

    def join(self) -> None:
        if self.restarted is not None:
            self.restarted.join(timeout=60)


@pytest.mark.parametrize("command", ["renormalize", "compact"])
async def test_a_restart_after_the_last_batch_does_not_fail_the_rebuild(
    pg_url: str, pg_cluster: PgCluster, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    from archiver.compact import compact

    restart = None
    try:
        async with open_database(pg_url) as engine:
            async with engine.begin() as conn:
                await conn.execute(responses.insert(), _old_rows(COUNT))
            restart = RestartAfterTheWalk(pg_cluster, monkeypatch)
            report: Any
            if command == "compact":
                report = (await compact(engine, batch_size=20)).report
            else:
                report = (await renormalize(engine, everything=True, batch_size=20)).report
            assert report.rewritten == COUNT and report.failed == 0, report.as_dict()
            async with engine.connect() as conn:
                left = (
                    await conn.execute(select(archive_meta.c.name).where(archive_meta.c.name == POSITION_KEY))
                ).all()
            assert left == []
        assert restart.restarted is not None
    finally:
        if restart is not None:
            restart.join()
