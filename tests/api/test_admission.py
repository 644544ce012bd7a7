"""The memory budget on its own: order, deadlines, bounds, and what a request gives back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from service.api.admission import MemoryBudget, cgroup_memory_limit, default_budget
from service.errors import Overloaded, PayloadTooLarge, TooLarge


def test_waiters_are_served_first_come_first_served() -> None:
    async def scenario() -> list[str]:
        budget = MemoryBudget(100, max_queue=10, timeout=5)
        order: list[str] = []
        holder = budget.lease()
        await holder.hold(90)

        async def want(name: str, size: int) -> None:
            lease = budget.lease()
            await lease.hold(size)
            order.append(name)
            await asyncio.sleep(0.01)
            lease.release()

        # "small" would fit beside the holder's 90 once 20 are free, but "big" came first
        tasks = [asyncio.create_task(want("big", 60)), asyncio.create_task(want("small", 5))]
        await asyncio.sleep(0.01)
        assert order == [] and budget.waiting == 2
        await holder.hold(40)  # shrinking gives bytes back at once: big (60) now fits
        await asyncio.gather(*tasks)
        holder.release()
        assert budget.free == 100
        return order

    assert asyncio.run(scenario()) == ["big", "small"]


def test_a_request_that_waits_too_long_gets_503() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(100, max_queue=10, timeout=0.05)
        holder = budget.lease()
        await holder.hold(100)
        with pytest.raises(Overloaded, match="SCE_QUEUE_TIMEOUT"):
            await budget.lease().hold(1)
        assert budget.waiting == 0
        holder.release()
        assert budget.free == 100

    asyncio.run(scenario())


def test_a_full_queue_refuses_at_once() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(10, max_queue=1, timeout=5)
        await budget.lease().hold(10)
        waiter = asyncio.create_task(budget.lease().hold(1))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="SCE_MAX_QUEUE=1"):
            await budget.lease().hold(1)
        waiter.cancel()

    asyncio.run(scenario())


def test_what_could_never_fit_is_refused_naming_the_setting() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(1 << 20, max_queue=1, timeout=5)
        with pytest.raises(PayloadTooLarge, match="SCE_MEMORY_BUDGET"):
            await budget.lease().hold(2 << 20, body=True)
        with pytest.raises(TooLarge, match="SCE_MEMORY_BUDGET"):
            await budget.lease().hold(2 << 20)
        assert budget.free == budget.total

    asyncio.run(scenario())


def test_a_cancelled_waiter_gives_back_what_it_was_granted() -> None:
    async def scenario() -> int:
        budget = MemoryBudget(100, max_queue=10, timeout=5)
        holder = budget.lease()
        await holder.hold(100)
        waiter = asyncio.create_task(budget.lease().hold(50))
        behind = budget.lease()
        behind_task = asyncio.create_task(behind.hold(60))
        await asyncio.sleep(0)
        holder.release()  # grants the waiter, which is cancelled before it resumes
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        await behind_task  # the 50 came back, so 60 fits
        behind.release()
        return budget.free

    assert asyncio.run(scenario()) == 100


def test_default_budget_reads_the_cgroup_limit(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("4294967296\n")
    assert cgroup_memory_limit(tmp_path) == 4 << 30
    assert default_budget(2, tmp_path) == int((4 << 30) * 0.7) // 2
    (tmp_path / "memory.max").write_text("max\n")
    assert cgroup_memory_limit(tmp_path) is None
    assert default_budget(1, tmp_path) > 16 << 20  # the machine's memory instead


def test_the_request_that_would_deadlock_the_budget_is_refused_at_once() -> None:
    """Two requests hold all the memory and each wants more: the second to ask is refused
    at once (not after the queue timeout), and its memory lets the first go on."""

    async def scenario() -> tuple[float, bool]:
        budget = MemoryBudget(100, max_queue=10, timeout=5)
        first, second = budget.lease(), budget.lease()
        await first.hold(60)
        await second.hold(40)
        growing = asyncio.create_task(first.hold(70))
        await asyncio.sleep(0)
        assert budget.waiting == 1  # the other holder may still give memory back
        started = time.monotonic()
        with pytest.raises(Overloaded, match="every request holding"):
            await second.hold(50)
        refused_after = time.monotonic() - started
        second.release()
        await growing
        first.release()
        return refused_after, budget.free == 100 and budget.holders == 0

    refused_after, clean = asyncio.run(scenario())
    assert refused_after < 0.5 and clean


def test_a_lease_growing_past_the_budget_is_refused_at_once() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(100, max_queue=10, timeout=5)
        lease = budget.lease()
        await lease.hold(60)
        with pytest.raises(TooLarge, match="SCE_MEMORY_BUDGET"):
            await lease.hold(110)  # 50 more would fit the total, 110 never can
        lease.release()

    asyncio.run(scenario())
