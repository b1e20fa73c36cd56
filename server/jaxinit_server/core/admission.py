"""Admission control: how much work one server takes on at once.

Two caps, both checked before any JAX work: tensors being made or sent (streams), and
the bytes of those tensors (what a whole-tensor family holds in memory, and what the
server has promised to send). Over a cap the request is refused at once with
:class:`Overloaded` (429 / RESOURCE_EXHAUSTED, with a retry-after), never queued
without bound and never left to run the process out of memory.
"""

from __future__ import annotations

import threading

from jaxinit._errors import Overloaded

__all__ = ["Admission", "Ticket"]


class Ticket:
    """One admitted unit of work; :meth:`release` (idempotent) gives its share back.

    Released when its tensor has been sent or dropped; garbage collection releases a
    ticket nobody released, so a path that forgets cannot leak capacity.
    """

    def __init__(self, admission: Admission, nbytes: int) -> None:
        self._admission = admission
        self.nbytes = nbytes
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release(self.nbytes)

    def __del__(self) -> None:
        self.release()


class Admission:
    def __init__(self, max_streams: int, max_bytes: int, retry_after: float = 1.0) -> None:
        self.max_streams = max_streams
        self.max_bytes = max_bytes
        self.retry_after = retry_after
        self.streams = 0
        self.bytes = 0
        self._lock = threading.Lock()

    def admit(self, nbytes: int) -> Ticket:
        """A ticket for ``nbytes`` of work, or :class:`Overloaded` when a cap is reached.

        A request larger than the byte cap on its own is admitted when nothing else is
        in flight (the size limits, not this, decide what is too large ever to serve).
        """
        with self._lock:
            if self.streams >= self.max_streams:
                raise Overloaded(
                    f"the server is answering {self.streams} requests, its limit; retry in "
                    f"{self.retry_after:g} s or use another replica", retry_after=self.retry_after,
                )
            if self.streams and self.bytes + nbytes > self.max_bytes:
                raise Overloaded(
                    f"the server has {self.bytes} bytes in flight and this request adds {nbytes}, over its "
                    f"limit of {self.max_bytes}; retry in {self.retry_after:g} s or use another replica",
                    retry_after=self.retry_after,
                )
            self.streams += 1
            self.bytes += nbytes
        return Ticket(self, nbytes)

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self.streams -= 1
            self.bytes -= nbytes
