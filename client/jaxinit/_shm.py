"""The client's side of same-host shared memory (servers started with ``--shared-memory``).

The server names a directory; a caller that can read the token file in it (the server's
user, on the server's host) sends the token, and the server answers with the name of a
*region* instead of the bytes: a sealed memory file (nobody can write it) that the
client claims over the directory's Unix socket and receives as a file descriptor. The
client checks that it is sealed and of the answer's size, maps it privately
(copy-on-write: the array is writable, nothing is copied until it is written, and no
write reaches the server or another caller) and closes the descriptor, so the memory
goes with the array. Where the token cannot be read (another host, another user, a
server without shared memory), or the server refuses it (a replica restarted, or
another replica behind one address), tensors come in the stream as always.
"""

from __future__ import annotations

import contextlib
import ipaddress
import mmap
import os
import re
import socket
import stat
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np

try:
    import fcntl
except ImportError:  # (Windows: no shared memory, the stream always)
    fcntl = None  # type: ignore[assignment]

from jaxinit.protocol.errors import JaxinitError, PermissionDenied, ProtocolError

T = TypeVar("T")

__all__ = ["SharedMemory"]

_REGION_NAME = re.compile(r"r-[0-9a-f]{24}")
_DIRECTORY_NAME = re.compile(r"jaxinit-[0-9]+-[A-Za-z0-9_]+")
_TOKEN = re.compile(r"[0-9a-f]{64}")
TOKEN_FILE = "claim-token"
SOCKET_FILE = "claim"
# A region must be sealed against every change: then its bytes are the ones the digest covers.
_SEALS = getattr(fcntl, "F_SEAL_WRITE", 0) | getattr(fcntl, "F_SEAL_SHRINK", 0) | getattr(fcntl, "F_SEAL_GROW", 0)


def _private(st: os.stat_result, mode: int) -> bool:
    return st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == mode


def _read_token(directory: str) -> str | None:
    """The token of a jaxinit server's shared-memory directory, or None. The directory is
    the server's word: only one that is a jaxinit directory (its name), a real directory
    (not a link) of this user with mode 0700, holding a 0600 file of this user with a
    64-hex-digit token, is trusted; no other file is ever read, let alone sent."""
    if not _DIRECTORY_NAME.fullmatch(os.path.basename(directory.rstrip("/"))):
        return None
    try:
        st = os.lstat(directory)
        if not stat.S_ISDIR(st.st_mode) or not _private(st, 0o700):
            return None
        if not _SEALS or not hasattr(socket, "recv_fds"):
            return None  # (no sealed files here: this is not the server's host)
        fd = os.open(os.path.join(directory, TOKEN_FILE), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not _private(st, 0o600) or st.st_size > 256:
                return None
            token = os.read(fd, 256).decode("ascii").strip()
        finally:
            os.close(fd)
    except (OSError, UnicodeDecodeError):
        return None
    return token if _TOKEN.fullmatch(token) else None


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SharedMemory:
    """Whether and how this client asks for shared memory.

    Args:
        mode: True: whenever the server offers it and its token can be read; None: the
            same, for servers on a loopback address only; False: never.
        host: the server's host, as the URL names it.
    """

    def __init__(self, mode: bool | None, host: str) -> None:
        if mode not in (None, True, False):
            raise TypeError(f"shared_memory must be True, False or None, got {mode!r}")
        self.wanted = mode is True or (mode is None and _loopback(host))
        self.discovered = not self.wanted  # nothing to find out when not wanted
        self.directory: str | None = None
        self.token: str | None = None
        self._socket: socket.socket | None = None
        self._socket_pid = 0
        self._lock = threading.Lock()

    def discover(self, described: dict[str, Any]) -> None:
        """Read the server's offer (its ``list_initializers`` answer) and the token, if this
        process can (it then asks for regions)."""
        self.discovered = True
        offer = described.get("shared_memory")
        directory = offer.get("directory") if isinstance(offer, dict) else described.get("shared_memory_directory")
        if not directory or not isinstance(directory, str):
            return
        token = _read_token(directory)
        if token is not None:  # else not this host, not the server's user, or not a jaxinit directory
            self.directory, self.token = directory, token

    def refused(self) -> None:
        """The server refused the token: use the stream from now on."""
        self.token = None

    def known(self, describe: Callable[[], dict[str, Any]]) -> str | None:
        """The token to send (None: the stream), the server's offer read first if it has not
        been (``describe``: the transport's ``list_initializers``; an error there: the stream)."""
        if not self.discovered:
            with contextlib.suppress(JaxinitError):
                self.discover(describe())
            self.discovered = True
        return self.token

    async def known_async(self, describe: Callable[[], Awaitable[dict[str, Any]]]) -> str | None:
        """:meth:`known` for an asyncio transport."""
        if not self.discovered:
            with contextlib.suppress(JaxinitError):
                self.discover(await describe())
            self.discovered = True
        return self.token

    def attempt(self, token: str | None, call: Callable[[str | None], T]) -> T:
        """``call(token)``; when the server refuses the token (another replica behind one
        address, or a restarted one), the stream from now on, this call included."""
        try:
            return call(token)
        except PermissionDenied:
            if token is None:
                raise
            self.refused()
            return call(None)

    async def attempt_async(self, token: str | None, call: Callable[[str | None], Awaitable[T]]) -> T:
        """:meth:`attempt` for an asyncio transport."""
        try:
            return await call(token)
        except PermissionDenied:
            if token is None:
                raise
            self.refused()
            return await call(None)

    def map(self, name: str, nbytes: int) -> np.ndarray:
        """The region ``name`` as bytes (uint8): claimed over the server's socket, checked
        (sealed, of ``nbytes``) and mapped copy-on-write; its descriptor is closed."""
        if self.directory is None or self.token is None:
            raise ProtocolError("the server answered in shared memory, which this client did not ask for")
        if not _REGION_NAME.fullmatch(name):
            raise ProtocolError(f"the server named an invalid shared-memory region: {name[:60]!r}")
        fd = self._claim(name)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != nbytes:
                raise ProtocolError(
                    f"the shared-memory region {name} holds {st.st_size} bytes, its header said {nbytes}"
                )
            if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & _SEALS != _SEALS:
                raise ProtocolError(f"the shared-memory region {name} is not sealed against writes: not used")
            mapped = mmap.mmap(fd, nbytes, access=mmap.ACCESS_COPY)
        finally:
            os.close(fd)
        return np.frombuffer(mapped, dtype=np.uint8)

    def _claim(self, name: str) -> int:
        """The descriptor of region ``name``, from the server's claim socket (one connection
        per client process, reopened once if the server closed it)."""
        assert self.directory is not None and self.token is not None
        request = f"CLAIM {self.token} {name}".encode()
        with self._lock:
            for attempt in (0, 1):
                try:
                    if self._socket is None or self._socket_pid != os.getpid():
                        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                        self._socket_pid = os.getpid()
                        self._socket.settimeout(30)
                        self._socket.connect(os.path.join(self.directory, SOCKET_FILE))
                    self._socket.sendall(request)
                    message, fds, _, _ = socket.recv_fds(self._socket, 512, 1)
                except OSError as exc:
                    self.close()
                    if attempt:
                        raise ProtocolError(f"cannot claim the shared-memory region {name}: {exc}") from None
                    continue
                if not message:
                    self.close()
                    if attempt:
                        raise ProtocolError(f"cannot claim the shared-memory region {name}: the server closed")
                    continue
                if message.startswith(b"OK") and len(fds) == 1:
                    return fds[0]
                for fd in fds:
                    os.close(fd)
                why = message.decode("utf-8", "replace").removeprefix("ERR ")
                raise ProtocolError(f"cannot claim the shared-memory region {name}: {why}")
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the claim socket (a later claim opens another)."""
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None
