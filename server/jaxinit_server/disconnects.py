"""HTTP callers who go away before their answer starts: their work is cancelled.

Starlette cancels nothing when a client disconnects while a handler is still preparing
its response; the handler finds out only when it sends. So a caller that gave up on a
QR left it computing for minutes. :func:`unless_disconnected` races the work against
the connection and cancels the work (and with it, e.g., a whole-tensor worker) as soon
as the client is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from jaxinit.protocol.errors import ServerUnavailable

__all__ = ["unless_disconnected"]

T = TypeVar("T")
POLL_SECONDS = 0.25


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result; cancelled, and ServerUnavailable raised, if the client disconnects.

    Call once the request body has been read (FastAPI reads it before the handler).
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_SECONDS)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                await asyncio.wait({task})
                raise ServerUnavailable("the client went away")
    finally:
        if not task.done():  # this handler itself was cancelled
            task.cancel()
