"""Same-host shared memory: a tensor handed over as a sealed memory file, no socket copy.

Off unless the server is started with ``--shared-memory`` (Linux: memfds and
``SCM_RIGHTS``). The server makes a directory of its own (mode 0700) under
``--shared-memory-dir`` holding a random token in a file only its user can read
(``claim-token``, mode 0600) and a Unix socket (``claim``). A caller proves it may use
shared memory by sending that token: only a process on this host that can read the
directory (the same user, or root) has it. A wrong or missing token is refused (403 /
PERMISSION_DENIED).

An answer in shared memory names a *region*: a sealed memfd
(``F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``) holding exactly the
answer's bytes, which the caller claims once over the socket (``CLAIM <token> <name>``)
and receives as a file descriptor (``SCM_RIGHTS``). Nobody can write a sealed file: not
the caller, not another process of the same user reopening it, not the server. A
caller maps it privately (copy-on-write), so its array is writable and nothing it does
reaches the server, the cache or any other caller; a tensor made for many callers is one
sealed file that each of them is handed (no copy), checked against its digests once
after sealing (see :mod:`stored`). Other tensors are copied into a new region.

Bounds: regions offered and not yet claimed hold at most ``max_bytes``; past that, or
when the memory cannot be had, the answer goes in the stream instead (never an error).
A region not claimed within ``lease_seconds`` is closed. Nothing of a region lives in
the directory, so a caller that dies leaves nothing behind; the directory is removed at
stop, and at start the directories of servers that died are.

Threat model: see docs/security.md ("Shared memory").
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hmac
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, overload

from jaxinit.protocol.errors import PermissionDenied
from jaxinit_server.core.stored import SEALS

__all__ = ["Region", "Regions", "supported"]

log = logging.getLogger("jaxinit_server.regions")
PREFIX = "jaxinit-"
TOKEN_FILE = "claim-token"
SOCKET_FILE = "claim"
MAX_CONNECTIONS = 256
_MESSAGE = 512


def supported() -> str | None:
    """Why shared memory cannot be offered here (None: it can)."""
    if not hasattr(os, "memfd_create") or not SEALS or not hasattr(socket, "send_fds"):
        return "shared memory needs Linux (memfds with seals, and SCM_RIGHTS)"
    return None


class Region:
    """A new region being written: a memfd, sealed when whole (see :meth:`Regions.region`)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.fd: int | None = os.memfd_create("jaxinit-region", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)

    def reserve(self) -> None:
        """Take the region's memory now (blocking: on a thread): no room is an OSError
        here, before a byte is consumed."""
        assert self.fd is not None
        os.posix_fallocate(self.fd, 0, self.nbytes)

    def write(self, data: Any) -> None:
        """Append ``data`` (blocking: on a thread for more than a little)."""
        assert self.fd is not None
        view = memoryview(data).cast("B")
        while view:
            done = os.write(self.fd, view)
            view = view[done:]

    def seal(self) -> int:
        """Seal it and hand its descriptor over (the region no longer owns it)."""
        fd, self.fd = self.fd, None
        assert fd is not None
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        return fd

    def delete(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


class _Claim:
    __slots__ = ("deadline", "fd", "nbytes")

    def __init__(self, fd: int, nbytes: int, deadline: float) -> None:
        self.fd = fd
        self.nbytes = nbytes
        self.deadline = deadline


class Regions:
    """This server's shared-memory directory and the regions offered (see the module)."""

    def __init__(self, parent: str = "/dev/shm", *, lease_seconds: float = 60.0, max_bytes: int = 2**32) -> None:
        if (why := supported()) is not None:
            raise ValueError(f"--shared-memory: {why}")
        base = Path(parent)
        _remove_orphans(base)
        self.directory = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))  # mode 0700
        self.token = secrets.token_hex(32)
        # Held while this server lives: another server finding it free knows this one is gone
        # (process ids alone mislead across PID namespaces sharing one /dev/shm).
        self._lock = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fd = os.open(self.directory / TOKEN_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._socket.bind(str(self.directory / SOCKET_FILE))
        os.chmod(self.directory / SOCKET_FILE, 0o600)
        self._socket.listen(64)
        self._socket.setblocking(False)
        self.lease_seconds = lease_seconds
        self.max_bytes = max_bytes  # of regions offered and not yet claimed
        self._claims: dict[str, _Claim] = {}
        self.unclaimed_bytes = 0
        self.offered = 0
        self.claimed = 0
        self.expired = 0
        self.streamed = 0  # answers sent in the stream for want of room
        self._connections: set[asyncio.Task[None]] = set()

    def check(self, token: str) -> None:
        """Refuse a caller whose token is not this server's (PermissionDenied)."""
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            raise PermissionDenied(
                f"the shared-memory token is not this server's: read it from the file '{TOKEN_FILE}' in the "
                f"server's shared-memory directory ({self.directory}), which only its user on its host can read"
            )

    def room(self, nbytes: int) -> bool:
        """Whether a region of ``nbytes`` may be offered now (else: the stream)."""
        self.sweep()
        if self.unclaimed_bytes + nbytes > self.max_bytes and self._claims:
            self.streamed += 1
            return False
        return True

    def region(self, nbytes: int) -> Region | None:
        """A new region to copy an answer into; None when no memfd can be had."""
        try:
            return Region(nbytes)
        except OSError as exc:
            log.warning("no shared-memory region (%s): a tensor of %d bytes goes in the stream", exc, nbytes)
            self.streamed += 1
            return None

    @overload
    def offer(self, fd: int, nbytes: int) -> str | None: ...
    @overload
    def offer(self, fd: int, nbytes: int, *, room_checked: Literal[True]) -> str: ...
    def offer(self, fd: int, nbytes: int, *, room_checked: bool = False) -> str | None:
        """Offer the sealed descriptor ``fd`` (now the regions') to one caller; its name,
        or None (``fd`` closed) when unclaimed regions hold too much already (unless
        ``room_checked``: a copy whose room was checked before it was written)."""
        if not room_checked and not self.room(nbytes):
            os.close(fd)
            return None
        name = f"r-{secrets.token_hex(12)}"
        self._claims[name] = _Claim(fd, nbytes, time.monotonic() + self.lease_seconds)
        self.unclaimed_bytes += nbytes
        self.offered += 1
        return name

    def _take(self, name: str) -> _Claim | None:
        claim = self._claims.pop(name, None)
        if claim is not None:
            self.unclaimed_bytes -= claim.nbytes
        return claim

    def sweep(self, now: float | None = None) -> None:
        """Close regions past their lease (at ``now`` on the monotonic clock: by default, now)."""
        now = time.monotonic() if now is None else now
        for name, claim in list(self._claims.items()):
            if now > claim.deadline:
                self._take(name)
                with contextlib.suppress(OSError):
                    os.close(claim.fd)
                self.expired += 1
                log.warning("closed shared-memory region %s: not claimed within %g s", name, self.lease_seconds)

    async def run(self) -> None:
        """Serve claims and sweep, forever (a task)."""
        sweeper = asyncio.ensure_future(self._sweep_forever())
        loop = asyncio.get_running_loop()
        try:
            while True:
                connection, _ = await loop.sock_accept(self._socket)
                if len(self._connections) >= MAX_CONNECTIONS:
                    connection.close()
                    continue
                task = asyncio.ensure_future(self._serve(connection))
                self._connections.add(task)
                task.add_done_callback(self._connections.discard)
        finally:
            sweeper.cancel()
            for task in list(self._connections):
                task.cancel()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, min(1.0, self.lease_seconds / 4)))
            self.sweep()

    async def _serve(self, connection: socket.socket) -> None:
        """One client's claims: ``CLAIM <token> <name>`` -> ``OK <bytes>`` with the
        descriptor, or ``ERR <why>`` (a wrong token also ends the connection)."""
        loop = asyncio.get_running_loop()
        connection.setblocking(False)
        with connection:
            while message := await loop.sock_recv(connection, _MESSAGE):
                parts = message.split()
                if len(parts) != 3 or parts[0] != b"CLAIM":
                    await loop.sock_sendall(connection, b"ERR a claim is 'CLAIM <token> <region>'")
                    return
                token, name = parts[1].decode("ascii", "replace"), parts[2].decode("ascii", "replace")
                if not hmac.compare_digest(token.encode(), self.token.encode()):
                    await loop.sock_sendall(connection, b"ERR the shared-memory token is not this server's")
                    return
                claim = self._take(name)
                if claim is None:
                    why = (
                        f"ERR no region {name[:40]}: claimed already, or not within its lease of "
                        f"{self.lease_seconds:g} s"
                    )
                    await loop.sock_sendall(connection, why.encode())
                    continue
                try:
                    socket.send_fds(connection, [f"OK {claim.nbytes}".encode()], [claim.fd])
                    self.claimed += 1
                except OSError:  # the caller went (or its socket is full): nothing to hand over to
                    return
                finally:
                    os.close(claim.fd)

    def state(self) -> dict[str, Any]:
        return {
            "unclaimed": len(self._claims),
            "unclaimed_bytes": self.unclaimed_bytes,
            "offered": self.offered,
            "claimed": self.claimed,
            "expired": self.expired,
            "streamed_for_room": self.streamed,
        }

    def close(self) -> None:
        for name in list(self._claims):
            claim = self._take(name)
            if claim is not None:
                with contextlib.suppress(OSError):
                    os.close(claim.fd)
        with contextlib.suppress(OSError):
            self._socket.close()
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
