"""The byte budget: response bodies held in the fetching process, being read or waiting to be written.

``--max-held-mb`` bounds them. A request starts only while the budget has room
(:meth:`ByteBudget.wait_for_room`), and a body counts from its first byte, not once it is
whole: each reader takes bytes from the budget as they arrive (:meth:`Reservation.take`).
When the budget is full, readers wait for the writer to free bytes. Only when nothing
but half-read bodies fills it (no finished body the writer will free) would they wait
for ever; then one of them, the *overflow reader*, goes past the budget until its own
body is read, and no other reader may overflow until finished bodies are freed again.
The bytes held therefore stay below::

    max_held + max_body + concurrency * READ_PIECE

where ``max_body`` is ``--max-body-mb`` (no single body is read past it) and ``READ_PIECE``
is the largest piece a reader takes at once.
"""

from __future__ import annotations

import asyncio

READ_PIECE = 64 * 1024
"""The largest piece of body a reader takes from the budget at once, in bytes."""


class ByteBudget:
    """Bytes held: being read (by :class:`Reservation`) or read and not yet written.

    Args:
        max_bytes: the budget (``--max-held-mb`` in bytes).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(int(max_bytes), 1)
        self.used = 0
        self.reading = 0  # of ``used``: bytes of bodies still being read
        self.aside = 0  # of ``used``: finished bodies the writer will not free soon (held back)
        self.peak = 0
        self._overflow: Reservation | None = None
        self._waiters: list[asyncio.Future[None]] = []

    def reservation(self) -> Reservation:
        """A new reader's account against this budget."""
        return Reservation(self)

    def is_full(self) -> bool:
        """True when no new request should start."""
        return self.used >= self.max_bytes

    def release(self, count: int) -> None:
        """Give back ``count`` bytes (a body written, dropped or cut to a sample)."""
        if count <= 0:
            return
        self.used = max(self.used - count, 0)
        self._wake()

    async def wait_for_room(self, stop: asyncio.Event) -> None:
        """Wait until the budget has room, or ``stop`` is set."""
        while self.is_full() and not stop.is_set():
            stopper: asyncio.Future[None] = asyncio.ensure_future(stop.wait())  # type: ignore[arg-type]
            changed = self._changed()
            try:
                await asyncio.wait([stopper, changed], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopper.cancel()
                if not changed.done():
                    changed.cancel()

    def set_aside(self, count: int) -> None:
        """``count`` finished bytes wait for something other than the writer (a breaker decision)."""
        self.aside += max(count, 0)

    def take_back(self, count: int) -> None:
        """Bytes set aside go on to the writer (or are released) after all."""
        self.aside = max(self.aside - max(count, 0), 0)
        self._wake()

    def _may_overflow(self, reader: Reservation) -> bool:
        if self._overflow is not None:
            return self._overflow is reader
        # Nothing the writer will free: waiting would wait for ever.
        return self.used - self.reading - self.aside <= 0

    def _add(self, count: int) -> None:
        self.used += count
        self.reading += count
        self.peak = max(self.peak, self.used)

    def _changed(self) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class Reservation:
    """One reader's bytes in a :class:`ByteBudget`. Call :meth:`done` when the read ends."""

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self.taken = 0

    async def take(self, count: int) -> None:
        """Count ``count`` more bytes read, waiting while the budget is full.

        When only half-read bodies fill the budget, the first reader to find it full
        becomes the overflow reader and goes on without waiting until :meth:`done`.
        """
        budget = self.budget
        while budget.used + count > budget.max_bytes:
            if budget._may_overflow(self):
                budget._overflow = self
                break
            await budget._changed()
        budget._add(count)
        self.taken += count

    def give_back(self, count: int) -> None:
        """Return up to ``count`` of the bytes taken (all of them for a failed read)."""
        count = min(count, self.taken)
        self.taken -= count
        self.budget.reading -= count
        self.budget.release(count)

    def keep(self, count: int) -> None:
        """The read is over and ``count`` bytes of it stay held until written: return the rest."""
        self.give_back(self.taken - max(count, 0))
        self.budget.reading -= self.taken  # finished now: the writer frees them
        self.taken = 0
        self.done()

    def done(self) -> None:
        """The read is over: another reader may overflow the budget now."""
        if self.budget._overflow is self:
            self.budget._overflow = None
            self.budget._wake()
