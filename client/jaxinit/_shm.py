"""The client's side of same-host shared memory (servers started with ``--shared-memory``).

The server names a directory; a caller that can read the token file in it (the server's
user, on the server's host) sends the token, and the server writes each tensor into a
region file there instead of the stream. The client maps the region (copy-on-write: the
array is writable, and nothing is copied until it is written) and deletes its name at
once, so the memory goes with the array. Where the token cannot be read (another host,
another user, a server without shared memory), or the server refuses it (a replica
restarted, or another replica behind one address), tensors come in the stream as always.
"""

from __future__ import annotations

import contextlib
import ipaddress
import mmap
import os
import re
import stat
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np

from jaxinit.protocol.errors import JaxinitError, PermissionDenied, ProtocolError

T = TypeVar("T")

__all__ = ["SharedMemory"]

_REGION_NAME = re.compile(r"r-[0-9a-f]{24}")
_DIRECTORY_NAME = re.compile(r"jaxinit-[0-9]+-[A-Za-z0-9_]+")
_TOKEN = re.compile(r"[0-9a-f]{64}")


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
        fd = os.open(os.path.join(directory, "token"), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
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
        """The region ``name`` as bytes (uint8), mapped copy-on-write; its name is deleted."""
        if self.directory is None:
            raise ProtocolError("the server answered in shared memory, which this client did not ask for")
        if not _REGION_NAME.fullmatch(name):
            raise ProtocolError(f"the server named an invalid shared-memory region: {name[:60]!r}")
        path = os.path.join(self.directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise ProtocolError(f"cannot open the shared-memory region {name}: {exc}") from None
        try:
            os.unlink(path)  # claimed: the memory now lives as long as the mapping
            size = os.fstat(fd).st_size
            if size != nbytes:
                raise ProtocolError(f"the shared-memory region {name} holds {size} bytes, its header said {nbytes}")
            mapped = mmap.mmap(fd, nbytes, access=mmap.ACCESS_COPY)
        finally:
            os.close(fd)
        return np.frombuffer(mapped, dtype=np.uint8)
