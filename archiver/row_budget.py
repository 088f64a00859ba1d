"""How many normalized rows one body may make, and how many one write transaction holds.

A normalized row is a dict of every column of its table: about 1 KB in memory, for as
little as 17 bytes of body (``{"type":"xxxxx"},`` as an output item). A valid 16 MiB
body of 986,000 such items took the writer process to 1,268 MiB while it built their
rows, and 100 bodies of 30,000 items each, batched, to 374 MiB: rows were bounded by
nothing but the body. So a body may make one row per :data:`BYTES_PER_ROW` of its
bytes (at least :data:`MIN_ROWS`; real Responses make one per 169 bytes at the densest
in ``../shared/corpus``, and 54 rows at the most), and the writer writes a batch in
several transactions once it holds :data:`ROWS_PER_WRITE` rows, instead of normalizing
every body of the batch first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from typing import Any, Final

from archiver.errors import NormalizationError

BYTES_PER_ROW: Final = 512
MIN_ROWS: Final = 16_384
ROW_BYTES: Final = 1024
"""What one row is taken to hold in memory where rows wait for the writer (input items:
:meth:`archiver.fetch.Fetcher` counts them against ``--max-held-mb`` at this much each,
parsed and normalized, beside their pages' bytes)."""
ROWS_PER_WRITE: Final = 65_536
"""Rows a write transaction gathers before it is written (~65 MiB of row dicts): more
bodies wait for the next transaction of the same batch."""


def rows_to_write(children: Mapping[str, Sized]) -> int:
    """The rows one normalized response writes: its ``responses`` row and its child rows
    (``NormalizedResponse.children``), as counted against :data:`ROWS_PER_WRITE`."""
    return 1 + sum(map(len, children.values()))


def max_rows(body_bytes: int) -> int:
    """The normalized rows a body of ``body_bytes`` may make (the ``responses`` row aside)."""
    return max(MIN_ROWS, body_bytes // BYTES_PER_ROW)


class TooManyRows(NormalizationError):
    """The body would make more normalized rows than :func:`max_rows` allows."""

    def __init__(self, most: int) -> None:
        super().__init__(
            f"body makes more than the {most:,} normalized rows (one per {BYTES_PER_ROW} bytes, "
            f"at least {MIN_ROWS:,}) the archiver builds; its raw bytes are kept with the failure"
        )


class RowBudget:
    """Rows left to one body's normalization, shared by its tables' row lists."""

    __slots__ = ("left", "most")

    def __init__(self, most: int) -> None:
        self.most = most
        self.left = most

    def rows(self) -> BoundedRows:
        """An empty row list that spends this budget."""
        return BoundedRows(self)


class BoundedRows(list[Any]):
    """A list of rows whose ``append`` spends a :class:`RowBudget` and raises
    :class:`TooManyRows` past it (the normalizers only append)."""

    __slots__ = ("budget",)

    def __init__(self, budget: RowBudget) -> None:
        super().__init__()
        self.budget = budget

    def append(self, row: Any, /) -> None:
        budget = self.budget
        budget.left -= 1
        if budget.left < 0:
            raise TooManyRows(budget.most)
        super().append(row)

    def extend(self, rows: Any, /) -> None:
        for row in rows:
            self.append(row)
