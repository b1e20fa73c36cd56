"""The disk cache (``--cache-dir``): made tensors kept across restarts.

One entry is two files named by the tensor's identity: ``<id>.bin`` (its wire bytes)
and ``<id>.json`` (what made it: the canonical request, the server's fingerprint, the key
data, the digest fixed when the bytes were made, and a check digest over all of that,
so that a changed key or digest is caught as surely as a changed byte).

- **Reads** open regular files only (``O_NOFOLLOW | O_NONBLOCK``, then ``fstat``: a FIFO,
  a device or a link is refused, never waited on), run on the cache's own reader threads
  (never asyncio's default pool) and are given up after ``read_timeout`` seconds (the
  tensor is made instead). An entry whose size, origin or digests do not match is deleted.
- **Writes** go through one writer thread and a queue bounded in bytes: an entry that
  does not fit the queue is not written (counted), never a thread per entry. Each block
  is checked against the digests fixed when it was made before it is written.
- **The index** (identity -> bytes, least recently used first) is read from the directory
  once, on the writer thread at start; trimming to ``max_bytes`` uses it, never a scan.
- **The directory** must be this user's and writable by nobody else (created 0700 when
  missing); anything else is refused at start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import queue
import stat
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from jaxinit.protocol.digest import new_hasher
from jaxinit_server.core.stored import BLOCK, Corrupt, Stored

__all__ = ["DiskCache", "UnsafeDirectory"]

log = logging.getLogger("jaxinit_server.results")
META_MAX_BYTES = 2**20
READERS = 2
_OPEN = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class UnsafeDirectory(ValueError):
    """The cache directory is not private to this server's user."""


def _check_private(path: Path) -> None:
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(f"--cache-dir {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafeDirectory(f"--cache-dir {path} belongs to user {st.st_uid}, not this server's ({os.geteuid()})")
    if st.st_mode & 0o022:
        raise UnsafeDirectory(
            f"--cache-dir {path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}): "
            f"run 'chmod go-w {path}' (entries there are served to callers)"
        )


def _check(info: dict[str, Any]) -> str:
    """The check digest of an entry's description (every field but the check itself)."""
    fields = {k: v for k, v in info.items() if k != "check"}
    hasher = new_hasher()
    hasher.update(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode())
    return hasher.digest().hex()


def _read_regular(fd: int, expected: int | None, limit: int) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("not a regular file")
    if st.st_size > limit or (expected is not None and st.st_size != expected):
        raise ValueError(f"its size ({st.st_size} bytes) is not the entry's")
    return st


class DiskCache:
    """See the module. ``max_bytes``: the most the directory holds; ``queue_bytes``: the
    most bytes waiting to be written."""

    def __init__(
        self,
        directory: str,
        max_bytes: int,
        fingerprint: str,
        *,
        queue_bytes: int = 256 * 2**20,
        read_timeout: float = 30.0,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _check_private(self.directory)
        self.max_bytes = max_bytes
        self.fingerprint = fingerprint
        self.queue_bytes = queue_bytes
        self.read_timeout = read_timeout
        self.counts = {"disk_rejected": 0, "disk_dropped": 0, "disk_written": 0, "disk_timeouts": 0}
        self._index: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._total = 0
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Stored, dict[str, Any], Callable[[], None]] | None] = queue.SimpleQueue()
        self._queued = 0  # bytes waiting to be written
        self._reading = 0
        self._readers = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="jaxinit-disk-read")
        self.loaded = threading.Event()
        self._writer = threading.Thread(target=self._run, name="jaxinit-disk-write", daemon=True)
        self._writer.start()

    # -- the index --

    def _paths(self, identity: str) -> tuple[Path, Path]:
        return self.directory / f"{identity}.bin", self.directory / f"{identity}.json"

    def contains(self, identity: str) -> bool:
        with self._lock:
            return identity in self._index

    def _load(self) -> None:
        """Read the directory once (the writer thread, at start)."""
        found: list[tuple[float, str, int]] = []
        with os.scandir(self.directory) as entries:
            for item in entries:
                name = item.name
                with contextlib.suppress(OSError):
                    if name.startswith(".partial-"):
                        os.unlink(item.path)  # a write cut off by a crash
                    elif name.endswith(".json") and item.is_file(follow_symlinks=False):
                        st = item.stat(follow_symlinks=False)
                        data = self.directory / (name[:-5] + ".bin")
                        found.append((st.st_mtime, name[:-5], st.st_size + data.lstat().st_size))
        found.sort()
        with self._lock:
            for _, identity, size in found:
                if identity not in self._index:
                    self._index[identity] = size
                    self._total += size
        self.loaded.set()
        self._trim()

    def _forget(self, identity: str) -> None:
        with self._lock:
            size = self._index.pop(identity, None)
            if size is not None:
                self._total -= size
        for path in self._paths(identity):
            with contextlib.suppress(OSError):
                path.unlink()

    def _trim(self, incoming: int = 0) -> None:
        """Delete the least recently used entries until ``incoming`` more bytes fit."""
        while True:
            with self._lock:
                if self._total + incoming <= self.max_bytes or not self._index:
                    return
                identity, size = self._index.popitem(last=False)
                self._total -= size
            for path in self._paths(identity):
                with contextlib.suppress(OSError):
                    path.unlink()

    # -- reading --

    async def read(self, identity: str, tensor_digest: str, stored: Stored) -> tuple[int, ...] | None:
        """Fill ``stored`` from the entry and return its key data; None (the entry deleted
        when it was wrong) when it is missing, wrong, or not read in time."""
        if self._reading >= READERS:
            return None  # readers stuck on a slow disk: make it instead of queueing behind them
        self._reading += 1
        future = self._readers.submit(self._read, identity, tensor_digest, stored)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.read_timeout)
        except TimeoutError:
            self.counts["disk_timeouts"] += 1
            log.warning("disk cache entry %s not read within %g s: made instead", identity[:16], self.read_timeout)
            return None
        finally:
            self._reading -= 1

    def _read(self, identity: str, tensor_digest: str, stored: Stored) -> tuple[int, ...] | None:
        data, meta = self._paths(identity)
        try:
            fd = os.open(meta, _OPEN)
            try:
                _read_regular(fd, None, META_MAX_BYTES)
                info = json.loads(os.read(fd, META_MAX_BYTES + 1))
            finally:
                os.close(fd)
            if not isinstance(info, dict) or info.get("check") != _check(info):
                raise ValueError("its description does not match its check digest")
            if info.get("fingerprint") != self.fingerprint or info.get("tensor_digest") != tensor_digest:
                raise ValueError("made by another JAX or for another request")
            key_data = tuple(int(w) for w in info["key_data"])
            fd = os.open(data, _OPEN)
            try:
                _read_regular(fd, stored.nbytes, stored.nbytes)
                itemsize = stored.array.itemsize
                step = 4 * BLOCK
                buffer = bytearray(step)
                while stored.filled * itemsize < stored.nbytes:
                    want = min(step, stored.nbytes - stored.filled * itemsize)
                    got = os.readv(fd, [memoryview(buffer)[:want]])
                    if got != want:
                        raise ValueError("the file ended early")
                    stored.write(np.frombuffer(buffer, stored.array.dtype, want // itemsize))
            finally:
                os.close(fd)
            stored.finish()
            if stored.digest is None or stored.digest.hex() != info.get("digest"):
                raise ValueError("its digest does not match its bytes")
        except (OSError, ValueError, KeyError, TypeError, Corrupt) as exc:
            log.warning("disk cache entry %s not used (deleted): %s", identity[:16], exc)
            self.counts["disk_rejected"] += 1
            self._forget(identity)
            return None
        with contextlib.suppress(OSError):
            os.utime(meta)
        with self._lock:
            if identity in self._index:
                self._index.move_to_end(identity)
        return key_data

    # -- writing --

    def write(self, identity: str, stored: Stored, fields: dict[str, Any], done: Callable[[], None]) -> bool:
        """Queue ``stored`` to be written (``fields``: the request's description); ``done`` is
        called (on the writer thread) once it no longer needs the bytes. False, with
        ``done`` not called, when the queue has no room for it."""
        with self._lock:
            if self._queued + stored.nbytes > self.queue_bytes or stored.digest is None:
                self.counts["disk_dropped"] += 1
                return False
            self._queued += stored.nbytes
        info = {**fields, "identity": identity, "fingerprint": self.fingerprint, "digest": stored.digest.hex()}
        self._queue.put((stored, info, done))
        return True

    def _run(self) -> None:
        try:
            self._load()
        except OSError as exc:
            log.warning("disk cache: could not read %s: %s", self.directory, exc)
            self.loaded.set()
        while (item := self._queue.get()) is not None:
            stored, info, done = item
            try:
                self._write(stored, info)
            except (OSError, Corrupt) as exc:
                log.warning("disk cache: could not store %s: %s", str(info["identity"])[:16], exc)
            finally:
                with self._lock:
                    self._queued -= stored.nbytes
                done()

    def _write(self, stored: Stored, info: dict[str, Any]) -> None:
        identity = info["identity"]
        data, meta = self._paths(identity)
        info["check"] = _check(info)
        raw = stored.array.view(np.uint8)
        for path, write in (
            (data, lambda f: _write_checked(f, stored, raw)),
            (meta, lambda f: f.write(json.dumps(info).encode())),
        ):
            fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".partial-")
            try:
                with os.fdopen(fd, "wb") as f:
                    write(f)
                os.replace(temp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        size = stored.nbytes + meta.stat().st_size
        with self._lock:
            self._total -= self._index.pop(identity, 0)
        self._trim(size)
        with self._lock:
            self._total += size
            self._index[identity] = size
        self.counts["disk_written"] += 1

    def close(self) -> None:
        self._queue.put(None)
        self._readers.shutdown(wait=False, cancel_futures=True)

    def state(self) -> dict[str, Any]:
        return {"entries": len(self._index), "bytes": self._total, "queued_bytes": self._queued}


def _write_checked(f: Any, stored: Stored, raw: np.ndarray) -> None:
    """Write ``stored``'s bytes block by block, each checked first against its digest."""
    for start in range(0, stored.nbytes, BLOCK):
        stop = min(start + BLOCK, stored.nbytes)
        stored.verify(start // stored.array.itemsize, stop // stored.array.itemsize)
        f.write(raw[start:stop].data)
