"""The whole-tensor pool: its slots (any thread releases, any event loop waits, and a slot
given to a waiter that left goes on; no sleeps: each step waits on a condition), how a
worker's end is named, and one real worker process making eager JAX's bytes, refusing in
JAX's words, and being killed and replaced when its caller goes."""

from __future__ import annotations

import asyncio
import signal
import threading
import types
from collections.abc import Iterator

import jax
import numpy as np
import pytest

from jaxinit.protocol.errors import InternalError, JaxError, ServerUnavailable, TooLarge
from jaxinit.protocol.keys import Key
from jaxinit_server.core import engine
from jaxinit_server.core.request import GenerateParams, Limits, PrngDefaults, Resolved, resolve
from jaxinit_server.core.whole import WholePool, _Slots, _Worker


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


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (-signal.SIGKILL, TooLarge),  # the kernel's OOM killer, or a container limit
        (-signal.SIGABRT, TooLarge),  # XLA aborting on a failed allocation
        (-signal.SIGSEGV, TooLarge),
        (1, InternalError),
        (0, InternalError),
        (-signal.SIGTERM, InternalError),
    ],
)
def test_a_worker_that_ended_mid_job_is_named_by_how_it_ended(code: int, error: type) -> None:
    worker = types.SimpleNamespace(process=types.SimpleNamespace(wait=lambda: code))
    named = _Worker.died(worker)  # type: ignore[arg-type]
    assert type(named) is error
    if error is TooLarge:
        assert signal.Signals(-code).name in named.message and "smaller tensor" in named.message
    else:
        assert named.message == "internal server error"


DEFAULTS = PrngDefaults(threefry_partitionable=bool(jax.config.jax_threefry_partitionable), enable_x64=False)


def _resolved(name: str, shape: tuple[int, ...], **fields: object) -> Resolved:
    return resolve(GenerateParams(name, shape, key=Key(seed=2), **fields), Limits(), DEFAULTS)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pool() -> Iterator[WholePool]:
    """One worker process for the module (each start loads JAX: a few seconds)."""
    whole = WholePool(1)
    whole.start()
    try:
        yield whole
    finally:
        whole.close()


def _made(pool: WholePool, resolved: Resolved, piece_bytes: int = 1000) -> tuple[tuple[int, ...], bytes]:
    job = asyncio.run(pool.run(resolved))
    data = b"".join(piece.tobytes() for piece in job.pieces(piece_bytes))
    return job.key_data, data


def test_a_worker_makes_eager_jaxs_bytes(pool: WholePool) -> None:
    for resolved in [
        _resolved("orthogonal", (12, 6)),
        _resolved("orthogonal", (12, 6), offset=7, count=50),
    ]:
        array, key_data = engine.run(resolved)
        got_key, data = _made(pool, resolved, piece_bytes=20)  # pieces cut mid-element are joined
        assert got_key == key_data
        assert data == np.ascontiguousarray(array).reshape(-1)[resolved.start : resolved.stop].tobytes()
    assert pool.state() == {
        "size": 1,
        "busy": 0,
        "waiting": 0,
        "loading": 0,
        "replaced": pool.replaced,
        "killed": pool.killed,
    }
    assert pool.killed == pool.replaced == 0


def test_jax_refusing_is_its_own_error_and_the_worker_stays(pool: WholePool) -> None:
    killed = pool.killed
    with pytest.raises(JaxError, match="2D shape"):
        asyncio.run(pool.run(_resolved("orthogonal", (7,))))
    assert (pool.killed, pool.busy) == (killed, 0)
    assert _made(pool, _resolved("orthogonal", (2, 2)))[1]


def test_a_caller_that_goes_has_its_worker_killed_and_replaced(pool: WholePool) -> None:
    killed = pool.killed
    job = asyncio.run(pool.run(_resolved("orthogonal", (12, 6))))  # compiled already: only the kill costs
    job.close()  # the caller went after the header: the worker still holds its bytes
    job.close()  # idempotent
    assert (pool.killed, pool.busy) == (killed + 1, 0)
    with pytest.raises(ServerUnavailable, match="cancelled"):
        next(job.pieces(100))
    assert _made(pool, _resolved("orthogonal", (12, 6)))[1]  # a replacement (or a new worker) made it


def test_a_worker_grown_past_hard_rss_is_replaced(pool: WholePool) -> None:
    replaced = pool.replaced
    hard, pool.hard_rss = pool.hard_rss, 1  # every worker is larger than a byte
    try:
        _made(pool, _resolved("orthogonal", (3, 3)))
    finally:
        pool.hard_rss = hard
    assert pool.replaced == replaced + 1


def test_a_closed_pool_refuses_retryably() -> None:
    closed = WholePool(1)  # never started: no process
    closed.close()
    with pytest.raises(ServerUnavailable, match="shutting down"):
        asyncio.run(closed.run(_resolved("orthogonal", (2, 2))))
