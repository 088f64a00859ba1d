"""Record the batches a worker hands its writer (what the fetch made of each ID)."""

from __future__ import annotations

from archiver.deadline import StopDeadline
from archiver.store import FetchResult, WriteReport
from archiver.worker import Worker


def record_writes(worker: Worker) -> list[FetchResult]:
    """Wrap ``worker.writer.write``; the returned list fills with every result it writes."""
    handed: list[FetchResult] = []
    write = worker.writer.write

    async def write_and_record(batch: list[FetchResult], deadline: StopDeadline | None = None) -> WriteReport:
        handed.extend(batch)
        return await write(batch, deadline)

    worker.writer.write = write_and_record  # type: ignore[method-assign]
    return handed
