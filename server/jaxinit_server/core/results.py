"""Answers made once for many callers: single-flight generation and a result cache.

Every answer is a pure function of its request on one JAX and backend, so a whole tensor
made for one caller serves every identical request: concurrent ones share its generation
(a :class:`Flight`: the tensor is made once into one :class:`~stored.Stored` buffer, each
caller streams from it as it fills, ranges included), later ones are served from a
bounded in-memory cache (LRU by bytes) or, when a directory is configured, from disk
(:mod:`disk_cache`). Keys: the whole tensor's canonical request (its range left out) and
the server's fingerprint (JAX, jaxlib, backend, device, jaxinit), hashed.

Integrity: a stored tensor's digests are fixed as its bytes are made (see
:mod:`stored`), and every read of it is checked against them before a byte is served: a
cache hit is checked whole before its answer begins (a mismatch evicts the entry, logs an
ERROR, counts in ``/metrics`` and the tensor is made again for the caller), a caller of a
generation in progress takes only blocks already checked. The wire digest of a whole
answer from stored bytes is the one fixed when they were made.

Memory: everything stored counts against ``capacity`` bytes (its bytes plus a fixed
overhead per tensor, and exactly those bytes: a small tensor is copied out of the larger
chunk it was made in): flights' buffers (reserved before they start), cached tensors,
and tensors evicted while a caller still reads them or the disk writer still writes them
(held until the last reader lets go). When nothing evictable is left, a request runs
alone, priced by admission as any other. A cache of 0 bytes turns it all off.

Everything here runs on the event loop thread, except the producer threads, the disk
cache's threads and :class:`~stored.Stored`'s blocking calls, which touch only their own
buffer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import numpy as np

from jaxinit.protocol.codec import DTYPES
from jaxinit_server.core.disk_cache import DiskCache
from jaxinit_server.core.plan import Plan
from jaxinit_server.core.request import Resolved
from jaxinit_server.core.source import Source
from jaxinit_server.core.stored import OVERHEAD_BYTES, SEALED_MIN_BYTES, Corrupt, Stored

__all__ = ["DISK", "HIT", "MISS", "NONE", "SHARED", "Entry", "Flight", "Results", "Share", "whole_identity"]

log = logging.getLogger("jaxinit_server.results")
INLINE_BYTES = 2**20  # a tensor made already and at most this big is copied and hashed on the event loop
SEGMENT_BYTES = 8 * 2**20  # a cached tensor is checked and handed out in pieces of this size

# How an answer was made, as the answer says (X-Jaxinit-Cache, TensorHeader.cache).
NONE = "none"  # not shareable (a range of a tensor nobody is making, cache off, too large)
MISS = "miss"  # made for this caller; identical requests meanwhile share it, later ones hit
SHARED = "shared"  # joined a generation another caller started
HIT = "hit"  # from the in-memory cache
DISK = "disk"  # from the disk cache (read and checked once, then shared like a generation)


def _tensor_digest(resolved: Resolved) -> str:
    """The digest of ``resolved``'s whole tensor's canonical request (its range left out)."""
    if resolved.tensor_digest:
        return resolved.tensor_digest
    fields = json.loads(resolved.canonical)
    fields.pop("range", None)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def whole_identity(resolved: Resolved, fingerprint: str) -> str:
    """The key of ``resolved``'s whole tensor: its canonical request without the range,
    and what besides the request the bytes depend on."""
    return hashlib.sha256(f"{_tensor_digest(resolved)}\n{fingerprint}".encode()).hexdigest()


class Entry:
    """A whole tensor made already (cached, or evicted while still read): its stored
    bytes and the key data that made them. ``readers``: callers (and the disk writer)
    still reading it; its memory counts until the last one lets go."""

    __slots__ = ("counted", "evicted", "identity", "key_data", "readers", "stored")

    def __init__(self, identity: str, stored: Stored, key_data: tuple[int, ...], readers: int = 0) -> None:
        self.identity = identity
        self.stored = stored
        self.key_data = key_data
        self.counted = stored.nbytes + OVERHEAD_BYTES
        self.readers = readers
        self.evicted = False

    @property
    def array(self) -> np.ndarray:
        return self.stored.array


class Flight:
    """One whole tensor being made (or read from disk) into one buffer, for every caller
    that asks for it meanwhile. Callers :meth:`join`; when the last one leaves before it is
    done, making it stops."""

    def __init__(self, identity: str, resolved: Resolved, how: str) -> None:
        self.identity = identity
        self.resolved = resolved  # the whole tensor's request
        self.how = how  # MISS or DISK, what its first caller is told
        self.count = resolved.stop - resolved.start
        self.dtype = np.dtype(DTYPES[resolved.out_dtype])
        self.nbytes = self.count * self.dtype.itemsize
        self.counted = self.nbytes + OVERHEAD_BYTES
        self.stored: Stored | None = None  # made before anything is produced
        self.filled = 0  # elements made so far (as the event loop knows)
        self.key_data: tuple[int, ...] | None = None
        self.error: BaseException | None = None
        self.done = False
        self.started = False
        self.callers = 0
        self.entry: Entry | None = None  # what it became once made: its callers then read that
        self.stop = threading.Event()  # set when nobody wants it any more
        self.task: asyncio.Future[None] | None = None  # its producer, cancelled with it
        self.filling = False  # its copying thread runs (then the stop event ends it, not a cancel)
        self._changed = asyncio.Event()  # set (and replaced) whenever the above change

    # -- the producer's side (progress and the end come here on the event loop) --

    def advance(self, filled: int) -> None:
        self.filled = filled
        self._wake()

    def ready(self, key_data: tuple[int, ...]) -> None:
        self.key_data = tuple(key_data)
        self._wake()

    def finish(self, error: BaseException | None) -> None:
        self.error = error
        self.done = True
        self._wake()

    async def ended(self) -> None:
        """Wait until making it has ended."""
        while not self.done:
            await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- a caller's side --

    async def key(self) -> tuple[int, ...]:
        """The key data, once making the tensor has begun; the tensor's error if it failed first."""
        while self.key_data is None:
            if self.error is not None:
                raise self.error
            await self._changed.wait()
        return self.key_data

    async def pieces(self, start: int, stop: int) -> AsyncGenerator[np.ndarray, None]:
        """Elements [start, stop) of the tensor as they are made and checked (views of the
        buffer): only whole blocks whose digests are fixed, each checked against them."""
        position = start
        while position < stop:
            if self.error is not None:
                raise self.error
            stored = self.stored
            available = 0 if stored is None else min(self.filled, stored.checked_to())
            if available > position:
                end = min(available, stop, position + SEGMENT_BYTES // self.dtype.itemsize)
                assert stored is not None
                await _verify(stored, position, end)
                yield stored.array[position:end]
                position = end
                continue
            if self.done:  # done without error yet short: only when it was stopped
                raise RuntimeError("a shared generation stopped before its last element")
            await self._changed.wait()


async def _verify(stored: Stored, start: int, stop: int) -> None:
    """:meth:`Stored.verify`, on a thread when it is more than a little."""
    if stored.sealed:
        return
    if (stop - start) * stored.array.itemsize <= INLINE_BYTES:
        stored.verify(start, stop)
    else:
        await asyncio.to_thread(stored.verify, start, stop)


class Share:
    """A caller's hold on a shared answer: an :class:`Entry` (a hit) or a :class:`Flight`.
    :meth:`release` (idempotent) lets it go: a flight when no caller holds it any more, an
    evicted entry's memory when nobody reads it any more."""

    def __init__(self, results: Results, how: str, entry: Entry | None = None, flight: Flight | None = None) -> None:
        self._results = results
        self.how = how
        self.entry = entry
        self.flight = flight
        self._held = True
        if flight is not None:
            flight.callers += 1
        elif entry is not None:
            entry.readers += 1

    def release(self) -> None:
        if self._held:
            self._held = False
            self._results._let_go(self)

    def __del__(self) -> None:
        # A path that forgets to release cannot keep a flight or an entry alive; the loop may be gone.
        with contextlib.suppress(Exception):
            if self._held:
                self._held = False
                loop = self._results._loop
                if loop is not None and not loop.is_closed():
                    loop.call_soon_threadsafe(self._results._let_go, self)


class Results:
    """The single-flight table and the caches (see the module's doc).

    Args:
        capacity: bytes of memory for everything stored (0: off).
        fingerprint: what besides the request the bytes depend on (the server identity's).
        disk: the disk cache, if any.
        sealed: keep large tensors in sealed memfds (same-host callers can then be handed them).
    """

    def __init__(
        self,
        capacity: int,
        fingerprint: str,
        *,
        disk: DiskCache | None = None,
        sealed: bool = True,
    ) -> None:
        self.capacity = capacity
        self.fingerprint = fingerprint
        self.disk = disk
        self._sealed = sealed
        self._entries: collections.OrderedDict[str, Entry] = collections.OrderedDict()
        self._flights: dict[str, Flight] = {}
        self.cached_bytes = 0  # of the entries in the cache
        self.draining_bytes = 0  # of evicted entries still read
        self.reserved_bytes = 0  # of the flights' buffers
        self.counts = {
            HIT: 0,
            MISS: 0,
            SHARED: 0,
            DISK: 0,
            NONE: 0,
            "evicted": 0,
            "disk_rejected": 0,
            "integrity_failures": 0,
        }
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def held_bytes(self) -> int:
        """Everything stored, as counted against the capacity."""
        return self.cached_bytes + self.draining_bytes + self.reserved_bytes

    # -- finding and making shares --

    def share(self, plan: Plan) -> Share | None:
        """A hold on ``plan``'s whole tensor, made or being made, or on a new flight of
        it (a whole request that fits); None when it is not shared (a range nobody is
        making, or nothing fits). Cheap: no JAX work, no I/O."""
        resolved = plan.resolved
        if not self.capacity or resolved.stop == resolved.start:
            return self._unshared()
        self._loop = asyncio.get_running_loop()
        identity = plan.identity
        if (entry := self._entries.get(identity)) is not None:
            self._entries.move_to_end(identity)
            self.counts[HIT] += 1
            return Share(self, HIT, entry=entry)
        if (flight := self._flights.get(identity)) is not None:
            made = flight.stored is not None and flight.stored.digest is not None and flight.error is None
            how = HIT if made else SHARED  # (made whole, its producer not yet wound up: a hit)
            self.counts[how] += 1
            return Share(self, how, flight=flight)
        whole = plan.whole.resolved
        on_disk = self.disk is not None and self.disk.contains(identity)
        if resolved.is_range and not on_disk:
            return self._unshared()  # a range alone is made alone: it may be a small part of the tensor
        counted = (whole.stop - whole.start) * DTYPES[whole.out_dtype].itemsize + OVERHEAD_BYTES
        if not self._reserve(counted):
            return self._unshared()
        how = DISK if on_disk else MISS
        flight = Flight(identity, whole, how)
        self._flights[identity] = flight
        self.counts[how] += 1
        return Share(self, how, flight=flight)

    def _unshared(self) -> Share | None:
        self.counts[NONE] += 1
        return None

    async def open(
        self,
        share: Share,
        plan: Plan,
        make: Callable[[], Awaitable[Source]],
        hold: Callable[[], Callable[[], None]],
        timings: dict[str, float],
    ) -> Source | None:
        """``plan``'s answer from ``share``: a slice of a cached tensor (checked against its
        digests first: None when it failed, to be made again), or a flight's elements as
        they are made. A flight nobody has started is started here with ``make`` (a
        producer of the whole tensor), and ``hold()`` (the admission of the caller that
        made it a flight, which pays for making it) is held until it is made."""
        resolved = plan.resolved
        if share.entry is not None:
            if not await self.checked(share):
                return None
            return _Cached(self, share, share.entry, resolved)
        flight = share.flight
        assert flight is not None
        began = asyncio.get_running_loop().time()
        if not flight.started:
            flight.started = True
            flight.task = asyncio.ensure_future(
                self._produce(flight, make, hold() if share.how in (MISS, DISK) else None)
            )
        key_data = await flight.key()
        if share.how == DISK:
            share.how = flight.how  # a disk entry found wrong is made instead: a miss
        timings["generate"] = asyncio.get_running_loop().time() - began
        return _Joined(self, share, flight, resolved, key_data)

    async def checked(self, share: Share) -> bool:
        """Check a hit's whole tensor against its digests before it is served; False (the
        entry evicted, an ERROR logged and counted) when it differs: make it again."""
        entry = share.entry
        if entry is None:
            return True
        try:
            for start in range(0, entry.stored.array.size, SEGMENT_BYTES // entry.stored.array.itemsize):
                stop = min(entry.stored.array.size, start + SEGMENT_BYTES // entry.stored.array.itemsize)
                await _verify(entry.stored, start, stop)
        except Corrupt as exc:
            self.corrupt(entry.identity, exc)
            return False
        return True

    def corrupt(self, identity: str, exc: Exception) -> None:
        """A stored tensor differs from its digests: never served again."""
        self.counts["integrity_failures"] += 1
        log.error("a cached tensor (%s) no longer matches its digest: evicted, made again (%s)", identity[:16], exc)
        if (entry := self._entries.pop(identity, None)) is not None:
            self.cached_bytes -= entry.counted
            self._evict(entry)

    # -- the caches --

    def _reserve(self, counted: int) -> bool:
        if counted > self.capacity:
            return False
        while self.held_bytes + counted > self.capacity and self._entries:
            _, old = self._entries.popitem(last=False)
            self.cached_bytes -= old.counted
            self.counts["evicted"] += 1
            self._evict(old)
        if self.held_bytes + counted > self.capacity:
            return False
        self.reserved_bytes += counted
        return True

    def _evict(self, entry: Entry) -> None:
        """``entry`` leaves the cache: its memory goes now, or when its last reader is done."""
        entry.evicted = True
        if entry.readers > 0:
            self.draining_bytes += entry.counted
        else:
            entry.stored.close()

    def _let_go(self, share: Share) -> None:
        if share.flight is not None:
            flight = share.flight
            flight.callers -= 1
            if flight.entry is not None:  # made meanwhile: the caller was reading the entry
                self._read_done(flight.entry)
            elif flight.callers <= 0 and not flight.done and flight.filled < flight.count:
                self._abandon(flight)  # (one made whole whose producer is winding up is cached, not dropped)
        elif share.entry is not None:
            self._read_done(share.entry)

    def _read_done(self, entry: Entry) -> None:
        entry.readers -= 1
        if entry.readers <= 0 and entry.evicted:
            self.draining_bytes -= entry.counted
            entry.stored.close()

    def _abandon(self, flight: Flight) -> None:
        flight.stop.set()  # nobody wants it: stop making it; a caller that comes now starts anew
        if self._flights.get(flight.identity) is flight:
            del self._flights[flight.identity]
        if not flight.started:  # never begun: give its reservation back now
            flight.finish(RuntimeError("abandoned before it began"))
            self._ended(flight)
        elif flight.task is not None and not flight.filling:
            # still being prepared (a whole-tensor worker computing, say): cancelled, which
            # stops the worker; once elements flow, the stop event ends the copying
            flight.task.cancel()

    def _ended(self, flight: Flight) -> None:
        """A flight is over: cache what it made (its callers now read the entry), or forget it."""
        if self._flights.get(flight.identity) is flight:
            del self._flights[flight.identity]
        self.reserved_bytes -= flight.counted
        stored = flight.stored
        if not (flight.error is None and flight.key_data is not None and stored is not None and stored.digest):
            if stored is not None and flight.callers <= 0:
                stored.close()
            return
        entry = Entry(flight.identity, stored, flight.key_data, readers=flight.callers)
        flight.entry = entry
        if (old := self._entries.pop(flight.identity, None)) is not None:
            # made twice (a retry raced a flight whose callers had just left): keep the new one
            self.cached_bytes -= old.counted
            self._evict(old)
        if self._reserve(entry.counted):  # room again, as the reservation just went back
            self.reserved_bytes -= entry.counted
            self._entries[entry.identity] = entry
            self.cached_bytes += entry.counted
        else:
            self._evict(entry)
        if self.disk is not None and flight.how == MISS and not entry.evicted:
            entry.readers += 1  # the writer reads it: its memory counts until written
            loop = asyncio.get_running_loop()
            fields = {
                "canonical": flight.resolved.canonical,
                "tensor_digest": _tensor_digest(flight.resolved),
                "dtype": flight.resolved.out_dtype,
                "key_data": list(entry.key_data),
            }

            def written() -> None:
                with contextlib.suppress(RuntimeError):  # (the loop closed: nobody counts any more)
                    loop.call_soon_threadsafe(self._read_done, entry)

            if not self.disk.write(entry.identity, stored, fields, written):
                entry.readers -= 1

    def clear(self) -> None:
        for entry in self._entries.values():
            self.cached_bytes -= entry.counted
            self._evict(entry)
        self._entries.clear()

    async def sealed(self, share: Share) -> tuple[Stored, bytes] | None:
        """``share``'s whole tensor as a sealed buffer and its digest, once it is made (None:
        it is not sealed, or it failed)."""
        entry, flight = share.entry, share.flight
        if flight is not None:
            await flight.ended()
            entry = flight.entry
        if entry is None or not entry.stored.sealed or entry.stored.digest is None:
            return None
        return entry.stored, entry.stored.digest

    def state(self) -> dict[str, Any]:
        counts = dict(self.counts)
        if self.disk is not None:
            counts["disk_rejected"] += self.disk.counts["disk_rejected"]
            counts.update({k: v for k, v in self.disk.counts.items() if k != "disk_rejected"})
        return {
            "capacity_bytes": self.capacity,
            "cached_bytes": self.cached_bytes,
            "cached_tensors": len(self._entries),
            "reserved_bytes": self.reserved_bytes,
            "draining_bytes": self.draining_bytes,
            "held_bytes": self.held_bytes,
            "flights": len(self._flights),
            "disk": self.disk.state() if self.disk is not None else None,
            **{f"{name}_total": count for name, count in counts.items()},
        }

    # -- producing --

    async def _produce(
        self, flight: Flight, make: Callable[[], Awaitable[Source]], hold: Callable[[], None] | None
    ) -> None:
        try:
            sealed = self._sealed and flight.nbytes >= SEALED_MIN_BYTES
            if sealed:
                flight.stored = await asyncio.to_thread(Stored, flight.count, flight.dtype, sealed=True)
            else:
                flight.stored = Stored(flight.count, flight.dtype, sealed=False)
            stored = flight.stored
            key_data = None
            if flight.how == DISK and self.disk is not None:
                key_data = await self.disk.read(flight.identity, _tensor_digest(flight.resolved), stored)
                if key_data is None:  # unreadable or wrong on disk: made instead
                    self.counts[DISK] -= 1
                    self.counts[MISS] += 1
                    flight.how = MISS
                    if stored.filled:  # partly read: start afresh
                        stored.close()
                        stored = flight.stored = await asyncio.to_thread(
                            Stored, flight.count, flight.dtype, sealed=sealed
                        )
                else:
                    flight.ready(key_data)
                    flight.advance(stored.filled)
            if key_data is None:
                flight.how = MISS
                source = await make()
                try:
                    flight.ready(source.key_data)
                    flight.filling = True  # from here the stop event ends it, not a cancel
                    await _fill(flight, stored, source)
                finally:
                    source.close()
            flight.finish(None if stored.digest is not None else RuntimeError("stopped"))
        except BaseException as exc:
            flight.finish(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            try:
                if hold is not None:
                    hold()
            finally:
                self._ended(flight)


async def _fill(flight: Flight, stored: Stored, source: Source) -> None:
    """Write what ``source`` makes into the flight's stored buffer, telling its callers as it
    goes (large pieces are copied and hashed on a thread); stops early when nobody wants the
    tensor any more. Once whole, the digest is fixed (and a memfd sealed and checked)."""
    async with contextlib.aclosing(source.pieces()) as pieces:
        async for piece in pieces:
            if not stored.filled and piece.size == flight.count and stored.fd is None:
                # made whole at once (one chunk): it is the buffer, no copy (one if it is a view of more)
                await _blocking(piece.nbytes, stored.adopt, piece)
            else:
                await _blocking(piece.nbytes, stored.write, piece)
            flight.advance(stored.filled)
            if flight.stop.is_set():
                return
    if stored.filled == flight.count and stored.digest is None:  # (its callers may have left: kept for the next)
        await _blocking(stored.nbytes if stored.fd is not None else 0, stored.finish)
    flight.advance(stored.filled)


async def _blocking(nbytes: int, fn: Callable[..., Any], *args: Any) -> None:
    """``fn(*args)``: here when it touches at most :data:`INLINE_BYTES`, else on a thread
    (shielded: a buffer being written is never left to a thread that runs on unseen)."""
    if nbytes <= INLINE_BYTES:
        fn(*args)
    else:
        await asyncio.shield(asyncio.to_thread(fn, *args))


class _Cached(Source):
    """A slice of a cached tensor (checked whole before it was handed out)."""

    def __init__(self, results: Results, share: Share, entry: Entry, resolved: Resolved) -> None:
        super().__init__(entry.key_data, close=share.release)
        self._results, self._share, self._entry = results, share, entry
        self._whole = not resolved.is_range
        self._array = entry.array[resolved.start : resolved.stop]

    async def pieces(self) -> AsyncGenerator[np.ndarray, None]:
        yield self._array

    async def stored(self) -> tuple[Stored, bytes] | None:
        return await self._results.sealed(self._share) if self._whole else None

    def fixed_digest(self) -> bytes | None:
        return self._entry.stored.digest if self._whole else None


class _Joined(Source):
    """A flight's elements as they are made (see :meth:`Flight.pieces`)."""

    def __init__(
        self, results: Results, share: Share, flight: Flight, resolved: Resolved, key_data: tuple[int, ...]
    ) -> None:
        super().__init__(key_data, close=share.release)
        self._results, self._share, self._flight = results, share, flight
        self._whole = not resolved.is_range
        self._start, self._stop = resolved.start, resolved.stop

    def pieces(self) -> AsyncGenerator[np.ndarray, None]:
        return self._flight.pieces(self._start, self._stop)

    async def stored(self) -> tuple[Stored, bytes] | None:
        return await self._results.sealed(self._share) if self._whole else None

    def fixed_digest(self) -> bytes | None:
        stored = self._flight.stored
        return stored.digest if self._whole and stored is not None else None
