"""Where a tensor's bytes come from: one interface for every way they are made.

A :class:`Source` has the key data that made the bytes, ``pieces()`` (the elements asked
for, in C order, as flat arrays, awaited), ``close()`` (stop, and let go of what it holds),
and a file form (``stored()``: the sealed buffer holding exactly these bytes, which a
same-host caller can be handed instead of a copy, and ``fixed_digest()``: the digest fixed
when stored bytes were made, which what is sent must match). Four kinds implement it:
:class:`Made` (an array made already), :class:`Pipelined` (a blocking producer run piece by
piece on the JAX pool, a few pieces ahead of its reader), and the result cache's joined
flight and cached entry (:mod:`results`). :class:`~stream.TensorStream`, :func:`~stream.gather`
and the cache each read any of them with one loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxinit.protocol.errors import ServerUnavailable

if TYPE_CHECKING:
    from jaxinit_server.core.stored import Stored

__all__ = ["Made", "Pipelined", "Source"]

_END = object()


class Source:
    """The interface (see the module's doc); :meth:`close` runs its closers once, in order."""

    def __init__(self, key_data: tuple[int, ...], *, close: Callable[[], None] | None = None) -> None:
        self.key_data = tuple(key_data)
        self._closers: list[Callable[[], None]] = [close] if close is not None else []
        self._closed = False

    def pieces(self) -> AsyncGenerator[np.ndarray, None]:
        """The elements, in order (one use)."""
        raise NotImplementedError

    async def stored(self) -> tuple[Stored, bytes] | None:
        """The sealed buffer of exactly these bytes and their digest, once made; None when
        there is none (the bytes are made for this caller only)."""
        return None

    def fixed_digest(self) -> bytes | None:
        """The digest fixed when stored bytes were made (None: not stored bytes)."""
        return None

    def also_on_close(self, release: Callable[[], None]) -> None:
        """Call ``release`` when this source is closed, after what it closes already."""
        self._closers.append(release)

    def close(self) -> None:
        """Stop producing and let go of what it holds (idempotent)."""
        if self._closed:
            return
        self._closed = True
        closers, self._closers = self._closers, []
        try:
            for close in closers[:-1]:
                with contextlib.suppress(Exception):
                    close()
        finally:
            if closers:
                closers[-1]()


class Made(Source):
    """Elements made already, sent as they are."""

    def __init__(
        self, key_data: tuple[int, ...], array: np.ndarray, *, close: Callable[[], None] | None = None
    ) -> None:
        super().__init__(key_data, close=close)
        self.array = array

    async def pieces(self) -> AsyncGenerator[np.ndarray, None]:
        yield self.array


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Pipelined(Source):
    """A blocking producer run on ``executor`` (the server's one JAX pool), one piece per
    task, at most ``depth`` pieces ahead of the reader; each step runs inside ``config()``
    (JAX's configuration is per thread, and the steps of one producer may run on several).
    The time spent making pieces is added to ``timings["generate"]``. A reader that stops
    early stops the producer: the step on a thread is waited for, then the producer closed.
    """

    def __init__(
        self,
        key_data: tuple[int, ...],
        produce: Callable[[], Iterator[np.ndarray]],
        executor: Executor,
        *,
        config: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        depth: int = 2,
        timings: dict[str, float] | None = None,
        close: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(key_data, close=close)
        self._produce = produce
        self._executor = executor
        self._config = config
        self._depth = depth
        self._timings = {} if timings is None else timings

    async def pieces(self) -> AsyncGenerator[np.ndarray, None]:
        loop = asyncio.get_running_loop()
        produce = self._produce()
        ready: asyncio.Queue[Any] = asyncio.Queue()
        room = asyncio.Semaphore(self._depth)
        running: list[asyncio.Future[Any]] = []
        timings = self._timings

        def step() -> Any:
            with self._config():
                began = time.perf_counter()
                try:
                    return next(produce, _END)
                finally:
                    timings["generate"] = timings.get("generate", 0.0) + time.perf_counter() - began

        async def run() -> None:
            try:
                while True:
                    await room.acquire()
                    try:
                        future = loop.run_in_executor(self._executor, step)
                    except RuntimeError:  # the pool was shut down
                        raise ServerUnavailable("the server is shutting down; retry on another replica") from None
                    running[:] = [future]
                    await asyncio.wait([future])  # (a cancelled reader leaves the step to end)
                    if future.cancelled():  # dropped from the pool's queue by its shutdown
                        raise ServerUnavailable("the server is shutting down; retry on another replica")
                    item = future.result()
                    ready.put_nowait(item)
                    if item is _END:
                        return
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # delivered to the reader, raised there
                ready.put_nowait(_Failure(exc))

        def finish(step: asyncio.Future[Any] | None = None) -> None:
            if step is not None and not step.cancelled():
                step.exception()  # retrieved: its reader is gone, nobody else wants it
            with self._config():  # a producer suspended inside its own config context ends here
                produce.close()  # type: ignore[attr-defined]

        task = asyncio.ensure_future(run())
        try:
            while (item := await ready.get()) is not _END:
                if isinstance(item, _Failure):
                    raise item.exc
                yield item
                room.release()
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                # the step on a thread (one piece) ends before the producer is closed
                await asyncio.wait([task, *running])
            if running and not running[0].done():  # interrupted: closed when the step ends
                running[0].add_done_callback(finish)
            else:
                finish(running[0] if running else None)
