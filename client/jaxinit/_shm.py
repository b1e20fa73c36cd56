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

import ipaddress
import mmap
import os
import re
from typing import Any

import numpy as np

from jaxinit.protocol.errors import ProtocolError

__all__ = ["SharedMemory"]

_REGION_NAME = re.compile(r"r-[0-9a-f]{24}")


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
        try:
            with open(os.path.join(directory, "token"), encoding="ascii") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError):
            return  # not this host, or not the server's user: the stream
        if token:
            self.directory, self.token = directory, token

    def refused(self) -> None:
        """The server refused the token: use the stream from now on."""
        self.token = None

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
