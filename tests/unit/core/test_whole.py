"""The whole-tensor pool's slots: any thread releases, any event loop waits, and a slot
given to a waiter that left goes on (no sleeps: each step waits on a condition)."""

from __future__ import annotations

import asyncio
import threading

from jaxinit_server.core.whole import _Slots


def test_a_second_event_loop_gets_slots_released_from_another_thread() -> None:
    """asyncio.Semaphore bound the pool to the first loop; the fourth asyncio.run hung.
    Each loop here waits (the slot is held) until a thread releases it."""
    slots = _Slots(1)
    asyncio.run(slots.acquire())  # held by the first loop

    async def wait_for_a_thread() -> None:
        waiter = asyncio.ensure_future(slots.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()  # waiting: the slot is held
        releaser = threading.Thread(target=slots.release)
        releaser.start()
        await asyncio.wait_for(waiter, timeout=60)  # woken on this loop by the other thread
        releaser.join()

    for _ in range(5):  # each a new loop; each leaves the slot held for the next
        asyncio.run(wait_for_a_thread())


def test_a_waiter_that_leaves_after_being_granted_passes_the_slot_on() -> None:
    async def main() -> None:
        slots = _Slots(1)
        await slots.acquire()
        first = asyncio.ensure_future(slots.acquire())
        second = asyncio.ensure_future(slots.acquire())
        await asyncio.sleep(0)  # both are waiting now
        slots.release()  # granted to the first (its callback is scheduled, not yet run)
        first.cancel()
        await asyncio.wait_for(second, timeout=60)
        assert first.cancelled()
        third = asyncio.ensure_future(slots.acquire())
        await asyncio.sleep(0)
        assert not third.done()  # one slot, held by the second
        slots.release()
        await asyncio.wait_for(third, timeout=60)

    asyncio.run(main())


def test_a_waiter_whose_loop_closed_is_skipped() -> None:
    slots = _Slots(1)
    asyncio.run(slots.acquire())
    orphan_loop = asyncio.new_event_loop()
    orphan = orphan_loop.create_task(slots.acquire())
    orphan_loop.run_until_complete(asyncio.sleep(0))  # it waits on a future of this loop
    orphan_loop.close()
    assert not orphan.done()
    orphan._log_destroy_pending = False  # it can never finish: its loop is gone
    slots.release()  # its loop is closed: the slot returns to the count
    asyncio.run(asyncio.wait_for(slots.acquire(), timeout=60))
