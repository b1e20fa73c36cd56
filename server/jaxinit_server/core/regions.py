"""Same-host shared memory: a tensor's bytes written into a file the caller maps.

Off unless the server is started with ``--shared-memory``. The server then makes a
directory of its own (mode 0700) under ``--shared-memory-dir`` (default ``/dev/shm``,
memory-backed) holding a random token in a file only its user can read (mode 0600).
A caller proves it may use the regions by sending that token: only a process on this
host that can read the directory (the same user, or root) has it, so nothing is ever
written for a caller that could not read it, and a remote caller cannot make the
server fill its memory. A wrong or missing token is refused (403 / PERMISSION_DENIED).

A region is a file named in the answer, created (0600) for one answer and written
whole before the answer is sent; the caller maps it and deletes its name at once (its
memory lives on in the mapping, freed with the array). The server deletes a region
when writing it fails or its caller goes away mid-transfer, a region nobody claimed
within ``lease_seconds``, and the whole directory when it stops. On start it deletes
the directories of servers that died without doing so.

Threat model: callers on this host as the server's user (a sidecar in the same pod
running as the same user, a trainer beside it). Another user cannot read the token or
the regions; anybody who can read them could as well read the server's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hmac
import logging
import math
import mmap
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxinit.protocol.errors import Overloaded, PermissionDenied

__all__ = ["Region", "Regions"]

log = logging.getLogger("jaxinit_server.regions")
PREFIX = "jaxinit-"


class Region:
    """One region being written: a file of this server's directory."""

    def __init__(self, regions: Regions, name: str, nbytes: int) -> None:
        self.name = name
        self.nbytes = nbytes
        self.path = regions.directory / name
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._regions = regions

    def reserve(self) -> None:
        """Take the region's memory now (blocking: on a thread): a full directory is an
        OSError here, before a byte is consumed, never a failed write half-way."""
        if self.nbytes:
            os.posix_fallocate(self._fd, 0, self.nbytes)

    def write(self, data: Any) -> None:
        """Append ``data`` (blocking: on a thread)."""
        view = memoryview(data).cast("B")
        while view:
            done = os.write(self._fd, view)
            view = view[done:]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def delete(self) -> None:
        self.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self._regions._forget(self.name)


class Regions:
    """This server's shared-memory directory and the regions in it (see the module)."""

    def __init__(self, parent: str = "/dev/shm", *, lease_seconds: float = 60.0, max_bytes: int = 2**32) -> None:
        base = Path(parent)
        _remove_orphans(base)
        self.directory = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))  # mode 0700
        self.token = secrets.token_hex(32)
        # Held while this server lives: another server finding it free knows this one is gone
        # (process ids alone mislead across PID namespaces sharing one /dev/shm).
        self._lock = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fd = os.open(self.directory / "token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token)
        self.lease_seconds = lease_seconds
        self.max_bytes = max_bytes  # of regions written and not yet claimed
        self._unclaimed: dict[str, tuple[float, int]] = {}  # name -> (deadline, bytes)
        self.written = 0
        self.expired = 0

    @property
    def unclaimed_bytes(self) -> int:
        return sum(n for _, n in self._unclaimed.values())

    def check(self, token: str) -> None:
        """Refuse a caller whose token is not this server's (PermissionDenied)."""
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            raise PermissionDenied(
                "the shared-memory token is not this server's: read it from the file 'token' in the server's "
                f"shared-memory directory ({self.directory}), which only its user on its host can read"
            )

    def create(self, nbytes: int) -> Region:
        """A new region for ``nbytes``; Overloaded while unclaimed regions hold too much. Its
        lease starts when it is written whole."""
        self._room(nbytes)
        region = Region(self, f"r-{secrets.token_hex(12)}", nbytes)
        self._unclaimed[region.name] = (math.inf, nbytes)
        return region

    async def room(self, nbytes: int, *, wait: bool) -> None:
        """Return once a region of ``nbytes`` fits under ``max_bytes``. ``wait``: for a stream
        of many tensors whose caller maps them as they come (its own regions are what
        fill the room), wait for room up to a lease; else Overloaded at once."""
        deadline = time.monotonic() + self.lease_seconds
        while True:
            try:
                self._room(nbytes)
                return
            except Overloaded:
                if not wait or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.02)

    def master(self, nbytes: int) -> tuple[Path, np.ndarray] | None:
        """A new file of ``nbytes`` in the directory, mapped (uint8): the buffer of a tensor
        made for several callers, which same-host callers are then given links to
        (:meth:`link`). Its memory is taken now (an error, not a crash, when the directory
        is full); None when it cannot be."""
        if nbytes <= 0:
            return None
        path = self.directory / f"m-{secrets.token_hex(12)}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return None
        try:
            os.posix_fallocate(fd, 0, nbytes)
            mapped = mmap.mmap(fd, nbytes)
        except (OSError, ValueError) as exc:
            log.warning("no shared-memory buffer of %d bytes (%s): this tensor is copied into regions", nbytes, exc)
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        finally:
            os.close(fd)
        return path, np.frombuffer(mapped, dtype=np.uint8)

    def link(self, master: Path, nbytes: int) -> str | None:
        """A new region that is ``master`` (a hard link: no copy); None when it is gone.
        Overloaded while unclaimed regions hold too much (a link holds its pages once the
        cache lets them go)."""
        self._room(nbytes)
        name = f"r-{secrets.token_hex(12)}"
        try:
            os.link(master, self.directory / name)
        except OSError:
            return None
        self.written += 1
        self._unclaimed[name] = (time.monotonic() + self.lease_seconds, nbytes)
        return name

    def _room(self, nbytes: int) -> None:
        self.sweep()
        if self._unclaimed and self.unclaimed_bytes + nbytes > self.max_bytes:
            raise Overloaded(
                f"unclaimed shared-memory regions hold {self.unclaimed_bytes} bytes, this one would pass "
                f"--shared-memory-bytes ({self.max_bytes}); retry once callers map theirs",
                retry_after=1.0,
            )

    def written_whole(self, region: Region) -> None:
        """``region`` is complete: its lease starts now."""
        region.close()
        self.written += 1
        self._unclaimed[region.name] = (time.monotonic() + self.lease_seconds, region.nbytes)

    def _forget(self, name: str) -> None:
        self._unclaimed.pop(name, None)

    def sweep(self) -> None:
        """Forget claimed regions (their names are gone); delete those past their lease."""
        now = time.monotonic()
        for name, (deadline, _) in list(self._unclaimed.items()):
            path = self.directory / name
            if not path.exists():
                del self._unclaimed[name]
            elif now > deadline:
                with contextlib.suppress(OSError):
                    path.unlink()
                del self._unclaimed[name]
                self.expired += 1
                log.warning("deleted shared-memory region %s: not claimed within %g s", name, self.lease_seconds)

    async def run(self) -> None:
        """Sweep forever (a task)."""
        while True:
            await asyncio.sleep(max(0.05, min(1.0, self.lease_seconds / 4)))
            self.sweep()

    def state(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "unclaimed": len(self._unclaimed),
            "unclaimed_bytes": self.unclaimed_bytes,
            "written": self.written,
            "expired": self.expired,
        }

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.close(self._lock)


def _remove_orphans(base: Path) -> None:
    """Delete the directories of this user's servers that are no longer running."""
    with contextlib.suppress(OSError):
        for path in base.glob(f"{PREFIX}*-*"):
            try:
                if path.is_symlink() or path.stat().st_uid != os.getuid() or _held(path):
                    continue
            except (ValueError, OSError):
                continue
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, left by a server that is gone", path)


def _held(path: Path) -> bool:
    """Whether a live server holds the directory: the lock its server keeps while it lives;
    without one (a directory of another make), the process id its name carries."""
    lock = path / "lock"
    if not lock.exists():
        return _alive(int(path.name[len(PREFIX) :].split("-", 1)[0]))
    fd = os.open(lock, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # (closing lets the lock go)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
