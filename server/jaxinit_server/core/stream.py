"""A tensor on its way out: header fields and typed provenance now, its bytes from its one
:class:`~source.Source` (however they were made), encoded little-endian, hashed and timed
as they go, sent in the stream or written into a shared-memory region as its delivery
says. Adapters only frame what this yields."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from jaxinit.protocol.codec import DTYPES, to_wire_bytes
from jaxinit.protocol.digest import ALGORITHM as DIGEST_ALGORITHM
from jaxinit.protocol.digest import new_hasher
from jaxinit.protocol.errors import ServerUnavailable
from jaxinit.protocol.provenance import Provenance
from jaxinit_server.core.admission import Ticket
from jaxinit_server.core.regions import Regions
from jaxinit_server.core.request import Resolved
from jaxinit_server.core.source import Source

__all__ = ["StallWatch", "TensorStream", "gather", "stopping"]

log = logging.getLogger("jaxinit_server.service")


class TensorStream:
    """One tensor's answer, used once: :meth:`chunks` (or :meth:`array`) sends it, then
    :meth:`digest` is the digest of every byte sent; :meth:`close` (idempotent, also called
    when sending ends however it ends) stops the producer and gives the capacity back."""

    digest_algorithm = DIGEST_ALGORITHM

    def __init__(
        self,
        resolved: Resolved,
        source: Source,
        provenance: Provenance,
        *,
        shape: tuple[int, ...] | None = None,
        timings: dict[str, float] | None = None,
        ticket: Ticket | None = None,
        aborted: threading.Event | None = None,
        watch: StallWatch | None = None,
        cache: str = "none",
        regions: Regions | None = None,
        route: str = "",
    ) -> None:
        self.resolved = resolved
        self.provenance = provenance
        # The delivered shape: the request's, or a model tensor's (Flax's or PyTorch's).
        self.shape = resolved.shape if shape is None else shape
        # Seconds waiting for a JAX worker ("queue") and in JAX ("generate", which grows as
        # chunks are made while the tensor streams).
        self.timings = {} if timings is None else timings
        self._source = source
        self._ticket = ticket  # its share of the server's capacity, given back once sent
        self._aborted = aborted  # set when the server gives up on in-flight work
        self._watch = watch  # disconnects a reader that stops taking bytes
        self._regions = regions  # its delivery: a same-host caller's shared memory (None: the stream)
        self.route = route  # the producer its plan routed it to (see engine.route)
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
        self._source.close()
        if self._ticket is not None:
            self._ticket.release()

    async def chunks(self, chunk_bytes: int) -> AsyncIterator[tuple[int, memoryview]]:
        """(byte offset, bytes) pieces of at most ``chunk_bytes``, little-endian, in order.

        The source makes them a few pieces ahead of the sender at most, so memory stays
        bounded whatever the tensor's size.
        """
        offset = 0
        hasher = new_hasher()
        token = self._watch.start() if self._watch is not None else None
        try:
            async with contextlib.aclosing(self._source.pieces()) as pieces:
                async for piece in pieces:
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

    async def region(self) -> str | None:
        """Deliver the bytes as the request asked: into a shared-memory region (its name,
        and :meth:`digest` is then known), or None: they go in the stream (:meth:`chunks`),
        as they do for every tensor without a region asked, an empty one, or one shared
        memory has no room for."""
        if self._regions is None or not self.nbytes:
            return None
        return await self.to_region(self._regions)

    async def to_region(self, regions: Regions) -> str | None:
        """Hand the bytes to a same-host caller as a sealed shared-memory region instead of
        sending them, and return its name; :meth:`digest` is then known. None, with nothing
        consumed, when shared memory has no room for it (the caller sends it in the stream
        instead). A tensor stored sealed (made for many callers) is handed over as it is; any
        other is copied into a new region, sealed once written whole."""
        try:
            if not regions.room(self.nbytes):
                return None
            made = await self._source.stored()
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
            async with contextlib.aclosing(self._source.pieces()) as pieces:
                async for piece in pieces:
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
        expected = self._source.fixed_digest()
        if expected is not None and expected != digest:
            log.error("stored bytes of %s differ from the digest fixed when they were made", self.resolved.spec.name)
            raise ServerUnavailable("a stored tensor failed its integrity check; it was not sent whole, retry")

    async def array(self) -> np.ndarray:
        """What is sent, in memory (for answers that need it whole, such as JSON)."""
        try:
            return (await gather(self._source, self.resolved.out_dtype)).reshape(self.sent_shape)
        finally:
            self.close()


async def gather(source: Source, dtype: str) -> np.ndarray:
    """Every element ``source`` makes, as one flat array of ``dtype``."""
    async with contextlib.aclosing(source.pieces()) as made:
        pieces = [piece async for piece in made]
    if len(pieces) == 1:
        return pieces[0]
    return np.concatenate(pieces) if pieces else np.empty(0, DTYPES[dtype])


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
