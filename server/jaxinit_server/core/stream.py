"""A tensor on its way out: header fields and typed provenance now, its bytes from the
engine's one producer, pipelined on a thread, encoded little-endian, hashed and timed as
they go. Adapters only frame what this yields."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np

from jaxinit.protocol.codec import DTYPES, to_wire_bytes
from jaxinit.protocol.digest import ALGORITHM as DIGEST_ALGORITHM
from jaxinit.protocol.digest import new_hasher
from jaxinit.protocol.errors import ServerUnavailable
from jaxinit.protocol.provenance import Provenance
from jaxinit_server.core import engine
from jaxinit_server.core.admission import Ticket
from jaxinit_server.core.regions import Regions
from jaxinit_server.core.request import Resolved

__all__ = ["StallWatch", "TensorStream", "gather", "stopping"]

log = logging.getLogger("jaxinit_server.service")
_END = object()


class TensorStream:
    """One tensor's answer, used once: :meth:`chunks` (or :meth:`array`) sends it, then
    :meth:`digest` is the digest of every byte sent; :meth:`close` (idempotent, also called
    when sending ends however it ends) stops the producer and gives the capacity back."""

    digest_algorithm = DIGEST_ALGORITHM

    def __init__(
        self,
        resolved: Resolved,
        generation: engine.Generation,
        provenance: Provenance,
        *,
        shape: tuple[int, ...] | None = None,
        timings: dict[str, float] | None = None,
        ticket: Ticket | None = None,
        aborted: threading.Event | None = None,
        watch: StallWatch | None = None,
        pipeline_depth: int = 2,
        cache: str = "none",
    ) -> None:
        self.resolved = resolved
        self.provenance = provenance
        # The delivered shape: the request's, or a model tensor's (Flax's or PyTorch's).
        self.shape = resolved.shape if shape is None else shape
        # Seconds waiting for a JAX worker ("queue") and in JAX ("generate", which grows as
        # chunks are made while the tensor streams).
        self.timings = {} if timings is None else timings
        self._generation = generation
        self._ticket = ticket  # its share of the server's capacity, given back once sent
        self._aborted = aborted  # set when the server gives up on in-flight work
        self._watch = watch  # disconnects a reader that stops taking bytes
        self._depth = pipeline_depth
        self._digest: bytes | None = None
        # How it was made: "miss" (made here, shared with identical requests meanwhile),
        # "shared" (another caller's generation), "hit" / "disk" (cached), "none" (alone).
        self.cache = cache

    @property
    def dtype(self) -> str:
        return self.resolved.out_dtype

    @property
    def nbytes(self) -> int:
        """The bytes sent (a range's, for a range)."""
        return self.resolved.nbytes

    @property
    def sent_shape(self) -> tuple[int, ...]:
        """The shape of what is sent: the tensor's, or (count,) for a range."""
        resolved = self.resolved
        return (resolved.stop - resolved.start,) if resolved.is_range else self.shape

    def digest(self) -> bytes:
        """The digest of every byte :meth:`chunks` yielded, once it has yielded them all."""
        if self._digest is None:
            raise RuntimeError("the digest is known once every chunk has been sent")
        return self._digest

    def close(self) -> None:
        """Stop making the tensor and give its capacity back (idempotent)."""
        self._generation.close()
        if self._ticket is not None:
            self._ticket.release()

    async def chunks(self, chunk_bytes: int) -> AsyncIterator[tuple[int, memoryview]]:
        """(byte offset, bytes) pieces of at most ``chunk_bytes``, little-endian, in order.

        A producer thread makes them at most ``pipeline_depth`` pieces ahead of the sender,
        so memory stays bounded whatever the tensor's size.
        """
        offset = 0
        hasher = new_hasher()
        token = self._watch.start() if self._watch is not None else None
        try:
            async for piece in self._pieces():
                if self._aborted is not None and self._aborted.is_set():
                    raise stopping()
                data = to_wire_bytes(piece)
                hasher.update(data)
                for start in range(0, len(data), chunk_bytes):
                    yield offset + start, data[start : start + chunk_bytes]
                    if token is not None and self._watch is not None:  # the reader took it: progress
                        self._watch.progress(token)
                offset += len(data)
            self._check(hasher.digest())
            self._digest = hasher.digest()
        finally:
            if token is not None and self._watch is not None:
                self._watch.end(token)
            self.close()

    async def to_region(self, regions: Regions) -> str | None:
        """Hand the bytes to a same-host caller as a sealed shared-memory region instead of
        sending them, and return its name; :meth:`digest` is then known. None, with nothing
        consumed, when shared memory has no room for it (the caller sends it in the stream
        instead). A tensor stored sealed (made for many callers) is handed over as it is; any
        other is copied into a new region, sealed once written whole."""
        try:
            if not regions.room(self.nbytes):
                return None
            if self._generation.sealed is not None:
                made = await self._generation.sealed()
                if made is not None:
                    stored, digest = made
                    fd = stored.dup()
                    name = regions.offer(fd, self.nbytes) if fd is not None else None
                    if name is not None:
                        self._digest = digest
                        self.close()
                        return name
            region = regions.region(self.nbytes)
        except BaseException:
            self.close()
            raise
        if region is None:
            return None
        try:
            await asyncio.to_thread(region.reserve)
        except OSError as exc:
            log.warning("shared memory is full (%s): a tensor of %d bytes goes in the stream", exc, self.nbytes)
            region.delete()
            return None
        except BaseException:
            region.delete()
            self.close()
            raise
        hasher = new_hasher()

        def write(data: memoryview) -> None:
            hasher.update(data)
            region.write(data)

        try:
            async for piece in self._pieces():
                if self._aborted is not None and self._aborted.is_set():
                    raise stopping()
                data = to_wire_bytes(piece)
                if len(data) <= 2**16:
                    write(data)
                else:
                    await asyncio.to_thread(write, data)
            self._check(hasher.digest())
            name = regions.offer(region.seal(), self.nbytes, room_checked=True)
        except OSError as exc:  # reserved, so not for room
            raise ServerUnavailable(f"could not write the shared-memory region: {exc}; retry") from None
        finally:
            region.delete()
            self.close()
        self._digest = hasher.digest()
        return name

    def _check(self, digest: bytes) -> None:
        """Stored bytes must be the ones their digest was fixed for when they were made: a
        difference ends the answer with a retryable error, never wrong bytes with their digest."""
        expected = self._generation.fixed_digest() if self._generation.fixed_digest is not None else None
        if expected is not None and expected != digest:
            log.error("stored bytes of %s differ from the digest fixed when they were made", self.resolved.spec.name)
            raise ServerUnavailable("a stored tensor failed its integrity check; it was not sent whole, retry")

    async def array(self) -> np.ndarray:
        """What is sent, in memory (for answers that need it whole, such as JSON)."""
        try:
            return (await gather(self._generation, self.timings, self._depth)).reshape(self.sent_shape)
        finally:
            self.close()

    async def _pieces(self) -> AsyncIterator[np.ndarray]:
        if self._generation.array is not None:  # made already: no thread hop
            yield self._generation.array
            return
        if self._generation.feed is not None:  # another caller's generation, as it is made
            async for piece in self._generation.feed():
                yield piece
            return
        async for piece in _pipelined(_timed(self._generation.produce(), self.timings), self._depth):
            yield piece


async def gather(generation: engine.Generation, timings: dict[str, float], depth: int = 2) -> np.ndarray:
    """Every element ``generation`` makes, as one flat array (pipelined on a thread)."""
    if generation.array is not None:
        return generation.array
    if generation.feed is not None:
        shared = [piece async for piece in generation.feed()]
        return np.concatenate(shared) if shared else np.empty(0, DTYPES[generation.resolved.out_dtype])
    pieces = [piece async for piece in _pipelined(_timed(generation.produce(), timings), depth)]
    return np.concatenate(pieces) if pieces else np.empty(0, DTYPES[generation.resolved.out_dtype])


def _timed(produce: Iterator[np.ndarray], timings: dict[str, float]) -> Iterator[np.ndarray]:
    """``produce``, adding the time spent making each piece to ``timings["generate"]``."""
    try:
        while True:
            start = time.perf_counter()
            piece = next(produce, None)
            timings["generate"] = timings.get("generate", 0.0) + time.perf_counter() - start
            if piece is None:
                return
            yield piece
    finally:
        produce.close()  # type: ignore[attr-defined]


def stopping() -> ServerUnavailable:
    return ServerUnavailable("the server is shutting down; retry on another replica")


class StallWatch:
    """Cuts off readers that stop taking bytes: a stream that makes no progress for
    ``seconds`` has the task that sends it cancelled, which stops its work and frees its
    capacity (an idle socket must not hold a share of the server forever). An HTTP
    connection is closed; a gRPC call, whose pending message gRPC cannot take back, holds
    nothing more and ends at its deadline or when its caller goes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.disconnected = 0
        self._streams: dict[int, list[Any]] = {}
        self._next = 0

    def start(self) -> int:
        """Watch the stream sent by the current task; returns its token."""
        self._next += 1
        self._streams[self._next] = [time.monotonic(), asyncio.current_task()]
        return self._next

    def progress(self, token: int) -> None:
        if (entry := self._streams.get(token)) is not None:
            entry[0] = time.monotonic()

    def end(self, token: int) -> None:
        self._streams.pop(token, None)

    async def run(self) -> None:
        """Check the streams forever (a task)."""
        while True:
            await asyncio.sleep(max(0.05, min(1.0, self.seconds / 4)))
            now = time.monotonic()
            for token, (last, task) in list(self._streams.items()):
                if now - last > self.seconds and task is not None and not task.done():
                    log.warning("disconnecting a reader that took no bytes for %.0f s", now - last)
                    self._streams.pop(token, None)
                    self.disconnected += 1
                    task.cancel()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def _pipelined(produce: Iterator[np.ndarray], depth: int) -> AsyncIterator[np.ndarray]:
    """Run a blocking producer on its own thread, at most ``depth`` items ahead of the consumer.

    When the consumer stops early (a client went away), the producer stops too.
    """
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue[Any] = asyncio.Queue()
    slots = threading.Semaphore(depth)
    stop = threading.Event()

    def hand_over(item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            loop.call_soon_threadsafe(ready.put_nowait, item)

    def run() -> None:
        try:
            for item in produce:
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                hand_over(item)
        except BaseException as exc:  # delivered to the consumer, raised there
            hand_over(_Failure(exc))
            return
        finally:
            produce.close()  # type: ignore[attr-defined]
        hand_over(_END)

    threading.Thread(target=run, name="jaxinit-producer", daemon=True).start()
    try:
        while (item := await ready.get()) is not _END:
            if isinstance(item, _Failure):
                raise item.exc
            yield item
            slots.release()
    finally:
        stop.set()
