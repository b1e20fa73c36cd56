"""on_thread (core/_threads.py): a caller that leaves is told to stop, and its cancellation
waits for the thread to end; a late result is discarded; work the server gave up on or a
pool that shut down is ServerUnavailable. The service-level cases (admission held until
the thread ends): tests/unit/test_bounds_compute.py."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from jaxinit.protocol.errors import ServerUnavailable
from jaxinit_server.core._threads import on_thread


def test_a_result_comes_back() -> None:
    with ThreadPoolExecutor(1) as executor:
        assert asyncio.run(on_thread(executor, lambda stop: 42)) == 42


def test_a_caller_that_leaves_waits_for_the_thread_and_its_late_result_is_discarded() -> None:
    started, release, ended = threading.Event(), threading.Event(), threading.Event()
    discarded: list[str] = []

    def work(stop: threading.Event) -> str:
        started.set()
        release.wait(30)
        assert stop.is_set()  # told to stop before it ended
        ended.set()
        return "late"

    async def run() -> None:
        with ThreadPoolExecutor(1) as executor:
            task = asyncio.ensure_future(on_thread(executor, work, discard=discarded.append))
            while not started.is_set():
                await asyncio.sleep(0.001)
            task.cancel()
            await asyncio.sleep(0)
            assert not task.done()  # the cancellation waits for the thread
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert ended.is_set() and discarded == ["late"]

    asyncio.run(run())


def test_aborted_work_and_a_shut_pool_are_server_unavailable() -> None:
    aborted, release = threading.Event(), threading.Event()

    async def run() -> None:
        executor = ThreadPoolExecutor(1)
        busy = asyncio.ensure_future(on_thread(executor, lambda stop: release.wait(30), aborted=aborted))
        await asyncio.sleep(0.01)
        aborted.set()
        with pytest.raises(ServerUnavailable):
            await busy
        release.set()
        executor.shutdown(wait=True)
        with pytest.raises(ServerUnavailable):
            await on_thread(executor, lambda stop: 1)

    asyncio.run(run())
