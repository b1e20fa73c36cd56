"""Admission control: how much work one server takes on at once.

Two caps, both checked before any JAX work: tensors being made or sent (streams), and
the memory they hold as priced (``engine.price``: a few chunks for a stream, the working
set for a whole tensor). Each caller (a connection, or an API key when auth is on) has
its own smaller share of both, so that a few callers cannot hold the whole server. Over
a cap the request is refused at once with :class:`Overloaded` (429 /
RESOURCE_EXHAUSTED, with a retry-after), never queued without bound and never left to
run the process out of memory.

A third cap is on compute: requests priced as *heavy* (``Limits.heavy_flops`` or more of
uninterruptible work: a large QR, a long key derivation, a stack of eager calls, a jit
compile) are admitted at most ``max_heavy`` at once. They run fewer at a time than there
are workers (``Service``), so a cheap request from another caller always finds one; this
cap keeps those waiting from filling the server's streams.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from jaxinit.protocol.errors import Overloaded
from jaxinit_server.core.request import Limits

__all__ = ["Admission", "Ticket"]


class Ticket:
    """One admitted unit of work; :meth:`release` (idempotent) gives its share back.

    Released when its tensor has been sent or dropped; garbage collection releases a
    ticket nobody released, so a path that forgets cannot leak capacity.
    """

    def __init__(self, admission: Admission, nbytes: int, caller: str | None, heavy: bool = False) -> None:
        self._admission = admission
        self.nbytes = nbytes
        self.caller = caller
        self.heavy = heavy
        self._released = False
        self._let_go = False  # release() was called
        self._holds = 0

    def release(self) -> None:
        """Give the share back, now or, while something holds it (:meth:`hold`), then."""
        self._let_go = True
        self._maybe_release()

    def hold(self) -> Callable[[], None]:
        """Keep the share past :meth:`release` until the callable returned is called: a
        generation the ticket paid for that other callers still stream from."""
        self._holds += 1
        done = False

        def let_go() -> None:
            nonlocal done
            if not done:
                done = True
                self._holds -= 1
                self._maybe_release()

        return let_go

    def _maybe_release(self) -> None:
        if self._let_go and not self._holds and not self._released:
            self._released = True
            self._admission._release(self.nbytes, self.caller, self.heavy)

    def __del__(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release(self.nbytes, self.caller, self.heavy)


class Admission:
    """The caps. ``max_caller_streams`` / ``max_caller_bytes``: one caller's share (None:
    no per-caller cap). A caller is whatever identity the adapter names (see
    ``Service.admit``); work admitted without one counts only against the server's caps."""

    def __init__(
        self,
        max_streams: int,
        max_bytes: int,
        retry_after: float = 1.0,
        *,
        max_caller_streams: int | None = None,
        max_caller_bytes: int | None = None,
        max_heavy: int | None = None,
    ) -> None:
        self.max_streams = max_streams
        self.max_bytes = max_bytes
        self.max_caller_streams = max_caller_streams
        self.max_caller_bytes = max_caller_bytes
        self.max_heavy = max_heavy
        self.retry_after = retry_after
        self.streams = 0
        self.heavy = 0  # heavy requests in flight
        self.bytes = 0
        self.callers: dict[str, list[int]] = {}  # caller -> [streams, bytes]; only callers holding some
        self._lock = threading.Lock()

    @classmethod
    def for_limits(cls, limits: Limits, heavy_slots: int) -> Admission:
        """The caps ``limits`` set (heavy requests: four per slot unless they say)."""
        return cls(
            limits.max_streams,
            limits.max_inflight_bytes,
            max_caller_streams=limits.max_caller_streams,
            max_caller_bytes=limits.caller_bytes,
            max_heavy=limits.max_heavy_requests or 4 * heavy_slots,
        )

    def admit(self, nbytes: int, caller: str | None = None, *, heavy: bool = False) -> Ticket:
        """A ticket for ``nbytes`` of work, or :class:`Overloaded` when a cap is reached.
        ``heavy``: it counts against ``max_heavy`` too (see the module's note).

        A request larger than the byte cap (the server's, or a caller's share) on its own is
        admitted when nothing else is in flight (for its caller: when that caller holds
        nothing); the size limits, not this, decide what is too large ever to serve.
        """
        retry = f"retry in {self.retry_after:g} s"
        with self._lock:
            held = self.callers.get(caller, [0, 0]) if caller is not None else [0, 0]
            if caller is not None and self.max_caller_streams is not None and held[0] >= self.max_caller_streams:
                raise Overloaded(
                    f"this caller ({_shown(caller)}) already has {held[0]} requests in flight, its limit "
                    f"(--max-caller-streams); {retry}, after one of them ends",
                    retry_after=self.retry_after,
                )
            if (
                caller is not None
                and self.max_caller_bytes is not None
                and held[0]
                and held[1] + nbytes > self.max_caller_bytes
            ):
                raise Overloaded(
                    f"this caller ({_shown(caller)}) holds {held[1]} bytes in flight and this request adds "
                    f"{nbytes}, over its share of {self.max_caller_bytes} (--max-caller-bytes); {retry}, "
                    "after one of its requests ends",
                    retry_after=self.retry_after,
                )
            if self.streams >= self.max_streams:
                raise Overloaded(
                    f"the server is answering {self.streams} requests, its limit; {retry} or use another replica",
                    retry_after=self.retry_after,
                )
            if self.streams and self.bytes + nbytes > self.max_bytes:
                raise Overloaded(
                    f"the server has {self.bytes} bytes in flight and this request adds {nbytes}, over its "
                    f"limit of {self.max_bytes}; {retry} or use another replica",
                    retry_after=self.retry_after,
                )
            if heavy and self.max_heavy is not None and self.heavy >= self.max_heavy:
                raise Overloaded(
                    f"the server has {self.heavy} compute-heavy requests in flight or waiting for a worker, its "
                    f"limit (--max-heavy-requests); {retry} or use another replica",
                    retry_after=self.retry_after,
                )
            self.streams += 1
            self.bytes += nbytes
            self.heavy += heavy
            if caller is not None:
                self.callers[caller] = [held[0] + 1, held[1] + nbytes]
        return Ticket(self, nbytes, caller, heavy)

    def _release(self, nbytes: int, caller: str | None, heavy: bool = False) -> None:
        with self._lock:
            self.streams -= 1
            self.bytes -= nbytes
            self.heavy -= heavy
            if caller is not None and (held := self.callers.get(caller)) is not None:
                held[0] -= 1
                held[1] -= nbytes
                if held[0] <= 0:
                    del self.callers[caller]


def _shown(caller: str) -> str:
    """A caller as an error message names it: short (an API key is named by its digest)."""
    return caller if len(caller) <= 80 else caller[:77] + "..."
