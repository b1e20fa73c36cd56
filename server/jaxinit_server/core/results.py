"""Answers made once for many callers: single-flight generation and a result cache.

Every answer is a pure function of its request on one JAX and backend, so a whole tensor
made for one caller serves every identical request: concurrent ones share its generation
(a :class:`Flight`: the tensor is made once into one buffer, each caller streams from it
as it fills, ranges included), later ones are served from a bounded in-memory cache (LRU
by bytes) or, when a directory is configured, from disk. Keys: the whole tensor's
canonical request (its range left out) and the server's fingerprint (JAX, jaxlib,
backend, device), hashed.

Memory: the buffers of flights and the cached tensors together stay within
``capacity`` bytes (a flight reserves its tensor's bytes before it starts; when nothing
evictable is left, the request runs alone as before). A cache of 0 bytes turns both off.
Disk entries carry their digest and are checked before a byte of them is served; one
that does not match is deleted and the tensor is made again.

Everything here runs on the event loop thread, except the producer threads and the
disk writer, which touch only their own flight or file.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from jaxinit.protocol.codec import DTYPES
from jaxinit.protocol.digest import new_hasher
from jaxinit_server.core import engine
from jaxinit_server.core.regions import Regions
from jaxinit_server.core.request import Resolved

__all__ = ["DISK", "HIT", "MISS", "NONE", "SHARED", "Entry", "Flight", "Results", "Share"]

log = logging.getLogger("jaxinit_server.results")
INLINE_COPY_BYTES = 2**20  # a tensor made already and at most this big is copied on the event loop
MASTER_MIN_BYTES = 2**20  # with shared memory on, shared tensors this large live in a file

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
    """A whole tensor made already: its flat elements and the key data that made them; with
    shared memory on, the file its elements live in and their digest."""

    __slots__ = ("array", "digest", "flight", "identity", "key_data", "master", "nbytes")

    def __init__(
        self,
        identity: str,
        array: np.ndarray,
        key_data: tuple[int, ...],
        *,
        master: Path | None = None,
        digest: bytes | None = None,
        flight: Flight | None = None,
    ) -> None:
        self.identity = identity
        self.array = array
        self.key_data = key_data
        self.nbytes = array.nbytes
        self.master = master
        self.digest = digest
        self.flight = flight  # made whole by this flight, not yet wound up (its digest may be due)

    def unlink(self) -> None:
        if self.master is not None:
            with contextlib.suppress(OSError):
                self.master.unlink()


class Flight:
    """One whole tensor being made (or read from disk) into one buffer, for every caller
    that asks for it meanwhile. Callers :meth:`join`; when the last one leaves before it is
    done, making it stops."""

    def __init__(self, identity: str, resolved: Resolved, how: str) -> None:
        self.identity = identity
        self.resolved = resolved  # the whole tensor's request
        self.how = how  # MISS or DISK, what its first caller is told
        self.buffer = np.empty(resolved.stop - resolved.start, DTYPES[resolved.out_dtype])
        self.master: Path | None = None  # the file the buffer is, with shared memory on
        self.digest: bytes | None = None  # of the whole buffer, once made (with a master only)
        self.nbytes = self.buffer.nbytes
        self.filled = 0  # elements made so far
        self.key_data: tuple[int, ...] | None = None
        self.error: BaseException | None = None
        self.done = False
        self.started = False
        self.callers = 0
        self.stop = threading.Event()  # set when nobody wants it any more
        self.task: asyncio.Future[None] | None = None  # its producer, cancelled with it
        self.filling = False  # its copying thread runs (then the stop event ends it, not a cancel)
        self.unlinked = False
        self._changed = asyncio.Event()  # set (and replaced) whenever the above change

    # -- the producer's side (progress and the end come here on the event loop) --

    def advance(self, filled: int) -> None:
        self.filled = filled
        self._wake()

    def ready(self, key_data: tuple[int, ...]) -> None:
        self.key_data = tuple(key_data)
        self._wake()

    def use_master(self, regions: Regions) -> None:
        """With shared memory on, make the buffer a file of its directory (blocking: on a
        thread, before anything is made): same-host callers then get links to it, not
        copies. Small tensors keep theirs: a copy of them costs less than a file."""
        if self.nbytes < MASTER_MIN_BYTES or self.filled or sys.byteorder != "little":
            return  # (a region holds wire bytes: little-endian; elsewhere the buffer is not them)
        made = regions.master(self.nbytes)
        if made is not None:
            self.master, raw = made
            self.buffer = raw.view(self.buffer.dtype)
            if self.unlinked:  # the flight ended meanwhile (its callers left): nobody will
                with contextlib.suppress(OSError):
                    made[0].unlink()

    def finish(self, error: BaseException | None) -> None:
        self.error = error
        self.done = True
        self._wake()

    async def ended(self) -> None:
        """Wait until making it has ended (its digest is known then, with a master)."""
        while not self.done:
            await self._changed.wait()

    def unlink(self) -> None:
        self.unlinked = True  # (a master made on a thread after this is unlinked there)
        if self.master is not None:
            with contextlib.suppress(OSError):
                self.master.unlink()

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

    async def pieces(self, start: int, stop: int) -> AsyncIterator[np.ndarray]:
        """Elements [start, stop) of the tensor as they are made (views of the buffer)."""
        position = start
        while position < stop:
            if self.error is not None:
                raise self.error
            if self.filled > position:
                end = min(self.filled, stop)
                yield self.buffer[position:end]
                position = end
                continue
            if self.done:  # done without error yet short: only when it was stopped
                raise RuntimeError("a shared generation stopped before its last element")
            await self._changed.wait()


class Share:
    """A caller's hold on a shared answer: an :class:`Entry` (a hit) or a :class:`Flight`.
    :meth:`release` (idempotent) lets a flight go when no caller holds it any more."""

    def __init__(self, results: Results, how: str, entry: Entry | None = None, flight: Flight | None = None) -> None:
        self._results = results
        self.how = how
        self.entry = entry
        self.flight = flight
        self._held = flight is not None
        if flight is not None:
            flight.callers += 1

    def release(self) -> None:
        if self._held:
            self._held = False
            assert self.flight is not None
            self._results._left(self.flight)

    def __del__(self) -> None:
        # A path that forgets to release cannot keep a flight alive; the loop may be gone.
        with contextlib.suppress(Exception):
            if self._held and self.flight is not None:
                self._held = False
                loop = self._results._loop
                if loop is not None and not loop.is_closed():
                    loop.call_soon_threadsafe(self._results._left, self.flight)


class Results:
    """The single-flight table and the caches (see the module's doc).

    Args:
        capacity: bytes of memory for flights' buffers and cached tensors (0: off).
        fingerprint: what besides the request the bytes depend on (the server identity's).
        directory: a disk cache directory (None: no disk cache), holding at most
            ``directory_bytes``.
        make: makes a whole tensor's :class:`engine.Generation` (the service's engine call).
    """

    def __init__(
        self,
        capacity: int,
        fingerprint: str,
        *,
        make: Callable[[Resolved], Awaitable[engine.Generation]],
        directory: str | None = None,
        directory_bytes: int = 8 * 2**30,
        regions: Regions | None = None,
    ) -> None:
        self.capacity = capacity
        self.fingerprint = fingerprint
        self.directory = Path(directory) if directory else None
        self.directory_bytes = directory_bytes
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._make = make
        self._regions = regions
        self._entries: collections.OrderedDict[str, Entry] = collections.OrderedDict()
        self._flights: dict[str, Flight] = {}
        self.cached_bytes = 0  # of the entries
        self.reserved_bytes = 0  # of the flights' buffers
        self.counts = {HIT: 0, MISS: 0, SHARED: 0, DISK: 0, NONE: 0, "evicted": 0, "disk_rejected": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._disk_lock = threading.Lock()

    # -- finding and making shares --

    def share(self, resolved: Resolved) -> Share | None:
        """A hold on ``resolved``'s whole tensor, made or being made, or on a new flight of
        it (a whole request that fits); None when it is not shared (a range nobody is
        making, or nothing fits). Cheap: no JAX work, no I/O."""
        if not self.capacity or resolved.stop == resolved.start:
            return self._unshared()
        self._loop = asyncio.get_running_loop()
        identity = whole_identity(resolved, self.fingerprint)
        if (entry := self._entries.get(identity)) is not None:
            self._entries.move_to_end(identity)
            self.counts[HIT] += 1
            return Share(self, HIT, entry=entry)
        if (flight := self._flights.get(identity)) is not None:
            if flight.error is None and flight.key_data is not None and flight.filled == len(flight.buffer):
                self.counts[HIT] += 1  # made whole, its producer not yet wound up
                return Share(self, HIT, entry=Entry(identity, flight.buffer, flight.key_data, flight=flight))
            self.counts[SHARED] += 1
            return Share(self, SHARED, flight=flight)
        whole = _whole(resolved)
        nbytes = (whole.stop - whole.start) * DTYPES[whole.out_dtype].itemsize
        if resolved.is_range and not self._on_disk(identity):
            return self._unshared()  # a range alone is made alone: it may be a small part of the tensor
        if nbytes > self.capacity or not self._reserve(nbytes):
            return self._unshared()
        how = DISK if self._on_disk(identity) else MISS
        flight = Flight(identity, whole, how)
        self._flights[identity] = flight
        self.counts[how] += 1
        return Share(self, how, flight=flight)

    def _unshared(self) -> Share | None:
        self.counts[NONE] += 1
        return None

    def start(self, flight: Flight, hold: Callable[[], None] | None) -> None:
        """Begin making ``flight`` (idempotent); ``hold`` is called when it ends (the first
        caller's admission ticket, which priced the generation, is held until then)."""
        if flight.started:
            if hold is not None:
                hold()
            return
        flight.started = True
        flight.task = asyncio.ensure_future(self._produce(flight, hold))

    # -- the caches --

    def _reserve(self, nbytes: int) -> bool:
        while self.cached_bytes + self.reserved_bytes + nbytes > self.capacity and self._entries:
            _, old = self._entries.popitem(last=False)
            old.unlink()  # callers holding links to it keep theirs
            self.cached_bytes -= old.nbytes
            self.counts["evicted"] += 1
        if self.cached_bytes + self.reserved_bytes + nbytes > self.capacity:
            return False
        self.reserved_bytes += nbytes
        return True

    def _left(self, flight: Flight) -> None:
        flight.callers -= 1
        if flight.callers <= 0 and not flight.done and flight.filled < len(flight.buffer):
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
        """A flight is over: cache what it made, or forget it."""
        if self._flights.get(flight.identity) is flight:
            del self._flights[flight.identity]
        self.reserved_bytes -= flight.nbytes
        made = flight.error is None and flight.key_data is not None and flight.filled == len(flight.buffer)
        if made and (old := self._entries.pop(flight.identity, None)) is not None:
            # made twice (a retry raced a flight whose callers had just left): keep one
            self.cached_bytes -= old.nbytes
            old.unlink()
        if made:
            assert flight.key_data is not None
            entry = Entry(flight.identity, flight.buffer, flight.key_data, master=flight.master, digest=flight.digest)
            if self._reserve(entry.nbytes):  # room again, as the reservation just went back
                self.reserved_bytes -= entry.nbytes
                self._entries[entry.identity] = entry
                self.cached_bytes += entry.nbytes
            else:
                entry.unlink()
            if self.directory is not None and flight.how == MISS:
                threading.Thread(target=self._write, args=(entry, flight.resolved), daemon=True).start()
        else:
            flight.unlink()

    def clear(self) -> None:
        for entry in self._entries.values():
            entry.unlink()
        self._entries.clear()
        self.cached_bytes = 0

    async def shared_file(self, share: Share) -> tuple[Path, bytes] | None:
        """The file holding ``share``'s whole tensor and its digest, once it is made (with
        shared memory on; None otherwise, or when it failed)."""
        entry, flight = share.entry, share.flight
        source: Entry | Flight | None = flight or (entry.flight if entry is not None else None) or entry
        if isinstance(source, Flight):
            await source.ended()
            if source.error is not None:
                return None
        if source is None or source.master is None or source.digest is None:
            return None
        return source.master, source.digest

    def state(self) -> dict[str, Any]:
        return {
            "capacity_bytes": self.capacity,
            "cached_bytes": self.cached_bytes,
            "cached_tensors": len(self._entries),
            "reserved_bytes": self.reserved_bytes,
            "flights": len(self._flights),
            "directory": str(self.directory) if self.directory else None,
            **{f"{name}_total": count for name, count in self.counts.items()},
        }

    # -- producing --

    async def _produce(self, flight: Flight, hold: Callable[[], None] | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self._regions is not None and flight.nbytes >= MASTER_MIN_BYTES:
                await asyncio.to_thread(flight.use_master, self._regions)
            if flight.how == DISK and await asyncio.to_thread(self._read, flight):
                pass  # read and checked: every element is there
            else:
                if flight.how == DISK:  # unreadable or wrong on disk: made instead
                    self.counts[DISK] -= 1
                    self.counts[MISS] += 1
                flight.how = MISS
                generation = await self._make(flight.resolved)
                try:
                    flight.ready(generation.key_data)
                    made = generation.array
                    fits = made is not None and (made.shape, made.dtype) == (flight.buffer.shape, flight.buffer.dtype)
                    if made is not None and fits and flight.master is None:
                        # made already (one chunk): it is the buffer, no copy and no thread hop
                        flight.buffer = made
                        flight.advance(len(made))
                    elif made is not None and made.nbytes <= INLINE_COPY_BYTES:
                        # made already and small: copied here, no thread hop (microseconds)
                        flight.advance(_fill(flight, generation, loop))
                    else:
                        flight.filling = True
                        flight.advance(await asyncio.shield(asyncio.to_thread(_fill, flight, generation, loop)))
                finally:
                    generation.close()
            flight.finish(None if flight.filled == len(flight.buffer) else RuntimeError("stopped"))
        except BaseException as exc:
            flight.finish(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._ended(flight)
            if hold is not None:
                hold()

    # -- disk --

    def _paths(self, identity: str) -> tuple[Path, Path]:
        assert self.directory is not None
        return self.directory / f"{identity}.bin", self.directory / f"{identity}.json"

    def _on_disk(self, identity: str) -> bool:
        return self.directory is not None and self._paths(identity)[1].exists()

    def _read(self, flight: Flight) -> bool:
        """Read a disk entry into the flight's buffer; True when it is whole and its digest
        matches (otherwise it is deleted, and the tensor is made instead)."""
        data, meta = self._paths(flight.identity)
        try:
            info = json.loads(meta.read_text())
            if info.get("fingerprint") != self.fingerprint or info.get("tensor_digest") != _tensor_digest(
                flight.resolved
            ):
                raise ValueError("made by another JAX or for another request")
            view = flight.buffer.view(np.uint8)
            with open(data, "rb") as f:
                if f.readinto(view.data) != view.nbytes or f.read(1):
                    raise ValueError("the file's size is not the tensor's")
            hasher = new_hasher()
            hasher.update(view.data)
            if hasher.digest().hex() != info.get("digest"):
                raise ValueError("its digest does not match its bytes")
            key_data = tuple(int(w) for w in info["key_data"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("disk cache entry %s not used (deleted): %s", flight.identity[:16], exc)
            self.counts["disk_rejected"] += 1
            for path in (meta, data):
                with contextlib.suppress(OSError):
                    path.unlink()
            return False
        with contextlib.suppress(OSError):
            os.utime(meta)  # recently used: evicted last
        flight.key_data = key_data
        flight.filled = len(flight.buffer)
        if flight.master is not None:
            flight.digest = hasher.digest()
        return True

    def _write(self, entry: Entry, resolved: Resolved) -> None:
        """Store ``entry`` in the directory (a thread): the bytes, then the description that
        makes them an entry, each renamed into place whole; then trim to the size bound."""
        data, meta = self._paths(entry.identity)
        view = entry.array.view(np.uint8).data
        hasher = new_hasher()
        hasher.update(view)
        info = {
            "canonical": resolved.canonical,
            "tensor_digest": _tensor_digest(resolved),
            "fingerprint": self.fingerprint,
            "dtype": resolved.out_dtype,
            "key_data": list(entry.key_data),
            "digest": hasher.digest().hex(),
        }
        assert self.directory is not None
        with self._disk_lock:
            try:
                for path, payload in ((data, view), (meta, json.dumps(info).encode())):
                    fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".partial-")
                    try:
                        with os.fdopen(fd, "wb") as f:
                            f.write(payload)
                        os.replace(temp, path)
                    except BaseException:
                        with contextlib.suppress(OSError):
                            os.unlink(temp)
                        raise
                self._trim()
            except OSError as exc:
                log.warning("disk cache: could not store %s: %s", entry.identity[:16], exc)

    def _trim(self) -> None:
        metas = sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime)  # type: ignore[union-attr]
        sizes = {}
        for meta in metas:
            with contextlib.suppress(OSError):
                sizes[meta] = meta.with_suffix(".bin").stat().st_size + meta.stat().st_size
        total = sum(sizes.values())
        for meta in metas:
            if total <= self.directory_bytes:
                break
            for path in (meta, meta.with_suffix(".bin")):
                with contextlib.suppress(OSError):
                    path.unlink()
            total -= sizes.get(meta, 0)


def _whole(resolved: Resolved) -> Resolved:
    """``resolved`` for its whole tensor (a range's whole)."""
    if not resolved.is_range:
        return resolved
    fields = json.loads(resolved.canonical)
    fields.pop("range", None)
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    total = math.prod(resolved.shape)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return dataclasses.replace(
        resolved,
        start=0,
        stop=total,
        nbytes=total * DTYPES[resolved.out_dtype].itemsize,
        canonical=canonical,
        digest=digest,
        tensor_digest=digest,
    )


def _fill(flight: Flight, generation: engine.Generation, loop: asyncio.AbstractEventLoop) -> int:
    """Copy what ``generation`` makes into the flight's buffer (a thread), telling the
    event loop as it goes; stops early when nobody wants the tensor any more. A buffer that
    is a file (shared memory) is hashed as it fills, for the links same-host callers get."""
    filled = 0
    hasher = new_hasher() if flight.master is not None else None
    produce = generation.produce()
    try:
        for piece in produce:
            n = piece.size
            flight.buffer[filled : filled + n] = piece.reshape(-1)
            if hasher is not None:
                hasher.update(flight.buffer[filled : filled + n].view(np.uint8).data)
            filled += n
            loop.call_soon_threadsafe(flight.advance, filled)
            if flight.stop.is_set():
                break
    finally:
        produce.close()  # type: ignore[attr-defined]
    if hasher is not None and filled == len(flight.buffer) and not flight.stop.is_set():
        flight.digest = hasher.digest()
    return filled
