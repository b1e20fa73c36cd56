"""Blocking work on a thread pool, awaited so that what it holds is released only when it ends.

A JAX call on a thread cannot be interrupted. When the caller that awaits it goes away,
``run_in_executor`` alone lets the caller's admission go at once while the thread runs on
(a long key derivation kept computing, and allocating, with nothing counted). Here the
work is told to stop (it checks the event between steps), and the awaiting task waits
for the thread to end before its cancellation goes on, so that whatever the caller holds
(its admission ticket) is released only then. Work the pool dropped because the server
shut it down, or that the server gave up on (``aborted``), is :class:`ServerUnavailable`
(503 / UNAVAILABLE: retry elsewhere), never a bare cancellation that a transport turns
into a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import TypeVar

from jaxinit.protocol.errors import ServerUnavailable

__all__ = ["on_thread", "unless_aborted"]

T = TypeVar("T")

ABORT_POLL_SECONDS = 0.1  # how often a waiter looks at the server's abort flag


def _stopping() -> ServerUnavailable:
    return ServerUnavailable("the server is shutting down; retry on another replica")


async def on_thread(
    executor: Executor,
    work: Callable[[threading.Event], T],
    *,
    aborted: threading.Event | None = None,
    discard: Callable[[T], None] | None = None,
) -> T:
    """``work(stop)`` on ``executor``, awaited.

    Args:
        work: the blocking call; ``stop`` is set when its result is no longer wanted (it
            should check it between steps and raise or return early).
        aborted: the server's flag for in-flight work it gives up on: then
            ServerUnavailable, without waiting for the thread.
        discard: lets go of a result that came after its caller left.

    Raises:
        ServerUnavailable: the pool was shut down, or ``aborted`` was set.
        asyncio.CancelledError: the caller went away; raised once the thread has ended.
    """
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    try:
        future = loop.run_in_executor(executor, work, stop)
    except RuntimeError:  # "cannot schedule new futures after shutdown"
        raise _stopping() from None
    try:
        while True:
            done, _ = await asyncio.wait([future], timeout=ABORT_POLL_SECONDS if aborted is not None else None)
            if done:
                break
            if aborted is not None and aborted.is_set():
                stop.set()
                raise _stopping()
        if future.cancelled():  # dropped by the pool's shutdown, never run
            raise _stopping()
        return future.result()
    except asyncio.CancelledError:
        stop.set()
        # The caller went away: what it holds stays held until the thread is done with it.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([future])
        if future.done() and not future.cancelled() and future.exception() is None and discard is not None:
            discard(future.result())
        raise


async def unless_aborted(waiting: Awaitable[T], aborted: threading.Event | None) -> T:
    """``waiting`` awaited (a wait for a slot), or ServerUnavailable once ``aborted`` is set:
    a caller still waiting when the server gives up gets the retryable refusal, not the
    bare cancellation the transport's own shutdown would turn into a 500."""
    task = asyncio.ensure_future(waiting)
    try:
        while True:
            done, _ = await asyncio.wait([task], timeout=ABORT_POLL_SECONDS if aborted is not None else None)
            if done:
                return task.result()
            if aborted is not None and aborted.is_set():
                raise _stopping()
    except BaseException:
        if not task.done():
            task.cancel()  # what it was waiting for goes on to the next waiter
            with contextlib.suppress(BaseException):
                await task
        raise
