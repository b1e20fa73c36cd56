"""Bytes made once and kept for other callers: digests fixed as they are made, a buffer
nobody else can write, checked before any of it is served again.

A :class:`Stored` tensor is filled once, from the pieces its producer makes (or a disk
entry's bytes). As each piece arrives its bytes are hashed *before* they are copied into
the buffer: the whole tensor's digest (the one every answer from it carries on the wire)
and one digest per :data:`BLOCK` bytes. Those digests are the truth; the buffer is only
memory, and every read of it (a cache hit, a caller joining a generation, a range, a
disk write) checks the blocks it covers against them first (:meth:`Stored.verify`).

Large tensors (at least :data:`SEALED_MIN_BYTES`) live in a memfd on Linux: written with
``pwrite`` through the server's own descriptor, mapped read-only, and sealed
(``F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``) once whole, so that nothing
(no caller holding a descriptor of it, no process of the same user reopening it) can
change a byte afterwards; it is checked once after sealing and never needs checking
again. Same-host callers are handed that sealed descriptor (see :mod:`regions`), which
they can map only privately (copy-on-write). Small tensors live in ordinary memory and
are checked each time they are read (microseconds).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import sys
from typing import Any

import numpy as np

from jaxinit.protocol.digest import new_hasher

__all__ = ["BLOCK", "SEALED_MIN_BYTES", "Corrupt", "Digests", "Stored"]

log = logging.getLogger("jaxinit_server.results")

BLOCK = 2**20  # bytes covered by one block digest
SEALED_MIN_BYTES = 2**20  # tensors this large live in a sealed memfd (where the OS has them)
OVERHEAD_BYTES = 1024  # what one stored tensor costs besides its bytes (objects, digests), as counted
_SEALS = getattr(fcntl, "F_SEAL_WRITE", 0) | getattr(fcntl, "F_SEAL_SHRINK", 0) | getattr(fcntl, "F_SEAL_GROW", 0)
SEALS = _SEALS | getattr(fcntl, "F_SEAL_SEAL", 0)


class Corrupt(Exception):
    """A stored tensor's bytes no longer match the digests fixed when they were made."""


class Digests:
    """The digests of bytes fed in order: the whole's and one per :data:`BLOCK`."""

    def __init__(self) -> None:
        self._whole = new_hasher()
        self._block = new_hasher()
        self._in_block = 0
        self.blocks: list[bytes] = []
        self.done = 0  # bytes fed

    def update(self, data: memoryview) -> None:
        self._whole.update(data)
        view = data.cast("B") if data.format != "B" or data.ndim != 1 else data
        while len(view):
            take = min(len(view), BLOCK - self._in_block)
            self._block.update(view[:take])
            self._in_block += take
            self.done += take
            view = view[take:]
            if self._in_block == BLOCK:
                self.blocks.append(self._block.digest())
                self._block = new_hasher()
                self._in_block = 0

    def finish(self) -> bytes:
        """The whole's digest (the last, partial block's digest is kept too)."""
        if self._in_block:
            self.blocks.append(self._block.digest())
            self._in_block = 0
        return self._whole.digest()


def _memfd(nbytes: int) -> tuple[int, mmap.mmap] | None:
    """A memfd of ``nbytes`` (its memory taken now) and a read-only shared mapping of it
    through a read-only descriptor (a writable one would stop the seal); None where the
    OS has no memfd or no room."""
    if not hasattr(os, "memfd_create") or not SEALS or sys.byteorder != "little":
        return None
    try:
        fd = os.memfd_create("jaxinit-tensor", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError:
        return None
    try:
        os.posix_fallocate(fd, 0, nbytes)
        reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            mapped = mmap.mmap(reader, nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(reader)
    except (OSError, ValueError) as exc:
        log.warning("no memfd of %d bytes (%s): this tensor is kept in ordinary memory", nbytes, exc)
        os.close(fd)
        return None
    return fd, mapped


class Stored:
    """One whole tensor's bytes, filled once (see the module).

    Args:
        count: its elements.
        dtype: its numpy dtype (wire byte order: little-endian machines only use a memfd).
        sealed: back it by a sealed memfd when it is at least :data:`SEALED_MIN_BYTES`
            (blocking: call on a thread for large tensors).
    """

    def __init__(self, count: int, dtype: np.dtype[Any], *, sealed: bool = True) -> None:
        nbytes = count * dtype.itemsize
        self.nbytes = nbytes
        self.fd: int | None = None
        self._mapped: mmap.mmap | None = None
        made = _memfd(nbytes) if sealed and nbytes >= SEALED_MIN_BYTES else None
        if made is not None:
            self.fd, self._mapped = made
            self.array: np.ndarray = np.frombuffer(self._mapped, dtype=dtype)
        else:
            self.array = np.empty(count, dtype)
        self.filled = 0  # elements written
        self.digests = Digests()
        self.digest: bytes | None = None  # the whole's, once filled
        self.sealed = False  # a memfd sealed and checked after sealing: immutable and known good
        self.closed = False

    @property
    def bytes(self) -> memoryview:
        return self.array.view(np.uint8).data

    def adopt(self, made: np.ndarray) -> None:
        """Take ``made`` (exactly the tensor, flat, in ordinary memory) as the buffer, hashing
        it: the one-chunk path, no copy. A view of something larger is copied out, so that
        the buffer holds exactly the bytes it is counted as."""
        assert self.fd is None and not self.filled
        if made.base is not None and getattr(made.base, "nbytes", made.nbytes) > made.nbytes:
            made = made.copy()
        self.digests.update(made.view(np.uint8).data)
        self.array = made
        self.filled = made.size
        self.finish()

    def write(self, piece: np.ndarray) -> int:
        """Append ``piece`` (the next elements, as made): hashed first, then copied in.
        Returns the elements filled. Blocking for large pieces: call on a thread."""
        data = np.ascontiguousarray(piece).reshape(-1).view(np.uint8).data
        self.digests.update(data)
        offset = self.filled * self.array.itemsize
        if self.fd is not None:
            view = data
            while len(view):
                done = os.pwrite(self.fd, view, offset)
                view, offset = view[done:], offset + done
        else:
            self.array.view(np.uint8)[offset : offset + len(data)] = np.frombuffer(data, np.uint8)
        self.filled += piece.size
        return self.filled

    def finish(self) -> None:
        """Every element is written: the digest is fixed. A memfd is sealed and checked
        once (its bytes can change no more after that)."""
        self.digest = self.digests.finish()
        if self.fd is not None:
            try:
                fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, SEALS)
            except OSError as exc:  # (a writable mapping somewhere: never ours)
                log.error("could not seal a stored tensor (%s): it is checked on every read", exc)
                return
            self.verify(0, self.array.size)
            self.sealed = True

    def verify(self, start: int, stop: int) -> None:
        """Check elements [start, stop)'s blocks against the digests fixed when they were
        made (only whole blocks made so far, and the last block once finished). Raises
        :class:`Corrupt`. Blocking for large ranges (microseconds per KiB): on a thread."""
        if self.sealed or start >= stop:
            return
        size = self.array.itemsize
        raw = self.array.view(np.uint8)
        first, last = (start * size) // BLOCK, (stop * size - 1) // BLOCK
        for index in range(first, min(last + 1, len(self.digests.blocks))):
            hasher = new_hasher()
            hasher.update(raw[index * BLOCK : min((index + 1) * BLOCK, self.nbytes)].data)
            if hasher.digest() != self.digests.blocks[index]:
                raise Corrupt(f"block {index} of a stored tensor of {self.nbytes} bytes differs from its digest")

    def checked_to(self) -> int:
        """The elements from the start whose blocks have their digests (what a reader may
        take while the tensor is being filled): whole blocks, or everything once finished."""
        if self.digest is not None:
            return self.filled
        return min(self.filled, len(self.digests.blocks) * BLOCK // self.array.itemsize)

    def dup(self) -> int | None:
        """A new descriptor of the sealed memfd (for a same-host caller), or None."""
        if self.fd is None or not self.sealed or self.closed:
            return None
        return os.dup(self.fd)

    def close(self) -> None:
        """Let the memory go (views handed out keep theirs alive)."""
        if self.closed:
            return
        self.closed = True
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
