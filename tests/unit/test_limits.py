"""The AIMD gate: halves on congestion, grows back by one per window, never exceeds its limit."""

from __future__ import annotations

import asyncio

import pytest

from archiver.limits import AdaptiveLimit


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_congestion_halves_and_successes_grow_back() -> None:
    clock = FakeClock()
    gate = AdaptiveLimit(16, cooldown_s=1.0, clock=clock)
    await gate.acquire()
    await gate.release(congested=True)
    assert gate.limit == 8 and gate.decreases == 1
    # A burst of 429s inside the cool-down counts once.
    for _ in range(5):
        await gate.acquire()
        await gate.release(congested=True)
    assert gate.limit == 8
    clock.now = 2.0
    await gate.acquire()
    await gate.release(congested=True)
    assert gate.limit == 4
    # Additive increase: one place per window of `limit` successes.
    for _ in range(4):
        await gate.acquire()
        await gate.release()
    assert gate.limit == 5
    for _ in range(5 + 6 + 7):
        await gate.acquire()
        await gate.release()
    assert gate.limit == 8


async def test_limit_never_below_floor_or_above_ceiling() -> None:
    clock = FakeClock()
    gate = AdaptiveLimit(4, min_limit=2, cooldown_s=0.0, clock=clock)
    for i in range(10):
        clock.now = float(i)
        await gate.acquire()
        await gate.release(congested=True)
    assert gate.limit == 2
    for _ in range(100):
        await gate.acquire()
        await gate.release()
    assert gate.limit == 4


async def test_holders_never_exceed_the_current_limit() -> None:
    gate = AdaptiveLimit(6, cooldown_s=0.0)
    peak = 0

    async def worker(i: int) -> None:
        nonlocal peak
        await gate.acquire()
        peak = max(peak, gate.in_use)
        assert gate.in_use <= gate.limit
        await asyncio.sleep(0.001)
        await gate.release(congested=(i % 7 == 0))

    await asyncio.gather(*(worker(i) for i in range(200)))
    assert 1 <= peak <= 6
    assert gate.in_use == 0


def test_bad_bounds_are_rejected() -> None:
    with pytest.raises(ValueError):
        AdaptiveLimit(0)
    with pytest.raises(ValueError):
        AdaptiveLimit(4, min_limit=5)


async def test_waiters_are_served_in_order_and_a_cancelled_waiter_gives_its_place_back() -> None:
    gate = AdaptiveLimit(1)
    await gate.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await gate.acquire()
        order.append(i)
        await gate.release()

    tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
    cancelled = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    cancelled.cancel()
    await gate.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert gate.in_use == 0
