"""Making a plan's bytes: a worker process for a whole tensor, the JAX pool for the rest.

Every JAX call of the server process runs on one bounded pool (``--workers`` threads):
preparing a request (a chunk plan, a key derivation, the first chunk), each further chunk
(:class:`~source.Pipelined`), the hand-off of a whole tensor from its worker process
(waiting for its header, reading its bytes) and a model's checks. Heavy plans (see
:mod:`admission`) also take one of the heavy slots, held until their source is closed.
The result cache is handed :meth:`Production.make` for the tensors it makes once for many
callers; nothing here knows of the cache or of :class:`~service.Service`.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from jaxinit_server.core import engine
from jaxinit_server.core._threads import on_thread, unless_aborted
from jaxinit_server.core.plan import Plan
from jaxinit_server.core.request import Resolved
from jaxinit_server.core.source import Made, Pipelined, Source
from jaxinit_server.core.whole import WholePool, _Slots

__all__ = ["Production", "Programs"]


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn``, which runs on its first call only."""
    done = threading.Event()

    def once() -> None:
        if not done.is_set():
            done.set()
            fn()

    return once


class Programs:
    """The jax.jit programs this server compiled before (with the compilation cache on, a
    worker that has not reads them back: pricing counts no compile for them)."""

    def __init__(self, cached: bool, size: int = 4096) -> None:
        self._cached = cached
        self._size = size
        self._compiled: collections.OrderedDict[tuple[Any, ...], None] = collections.OrderedDict()

    def compiled(self, resolved: Resolved) -> bool:
        program = engine.program(resolved)
        return program is not None and self._cached and program in self._compiled

    def made(self, resolved: Resolved) -> None:
        if (program := engine.program(resolved)) is not None:
            self._compiled[program] = None
            self._compiled.move_to_end(program)
            while len(self._compiled) > self._size:
                self._compiled.popitem(last=False)


class Production:
    """Makes sources for plans (see the module's doc).

    Args:
        executor: the one JAX pool.
        whole: the whole-tensor worker processes.
        heavy_slots: heavy plans made at once.
        chunk_bytes: the size of the pieces read from a whole-tensor worker.
        aborted: set when the server gives up on work in flight.
        programs: the jax.jit programs compiled so far.
    """

    def __init__(
        self,
        executor: Executor,
        whole: WholePool,
        *,
        heavy_slots: int,
        chunk_bytes: int,
        aborted: threading.Event,
        programs: Programs,
    ) -> None:
        self.executor = executor
        self.whole = whole
        self.heavy_slots = heavy_slots
        self._heavy = _Slots(heavy_slots)
        self.heavy_waiting = 0
        self._chunk_bytes = chunk_bytes
        self._aborted = aborted
        self.programs = programs

    async def make(self, plan: Plan, timings: dict[str, float] | None = None) -> Source:
        """``plan``'s bytes, ready to read, by its route. Raises domain errors (JAX's
        refusal of the request arrives here, before any byte is sent)."""
        submitted = time.perf_counter()
        timings = {} if timings is None else timings
        if plan.heavy:  # one of the heavy slots, held until the source is closed
            self.heavy_waiting += 1
            try:
                await unless_aborted(self._heavy.acquire(), self._aborted)
            finally:
                self.heavy_waiting -= 1
        try:
            source = await self._make(plan, timings, submitted)
        except BaseException:
            if plan.heavy:
                self._heavy.release()
            raise
        self.programs.made(plan.resolved)  # (a jit program: made, so compiled and kept by the cache)
        if plan.heavy:
            release = _once(self._heavy.release)
            source.also_on_close(release)
            weakref.finalize(source, release)  # a source dropped unclosed cannot keep its slot
        return source

    async def _make(self, plan: Plan, timings: dict[str, float], submitted: float) -> Source:
        if plan.cost.route == engine.WHOLE:
            job = await self.whole.run(plan.resolved)
            timings["generate"] = time.perf_counter() - submitted
            pieces = functools.partial(job.pieces, self._chunk_bytes)
            return Pipelined(job.key_data, pieces, self.executor, timings=timings, close=job.close)

        def prepare(stop: threading.Event) -> engine.Generation:
            started = time.perf_counter()
            timings["queue"] = started - submitted
            try:
                return engine.prepare(plan, stop=stop)
            finally:
                timings["generate"] = time.perf_counter() - started

        # A caller that leaves stops it between slices, and keeps its admission until the
        # thread is done; a server that stops answers ServerUnavailable (see _threads).
        made = await on_thread(self.executor, prepare, aborted=self._aborted, discard=engine.Generation.close)
        if made.array is not None:
            return Made(made.key_data, made.array, close=made.close)
        return Pipelined(
            made.key_data, made.produce, self.executor, config=made.config, timings=timings, close=made.close
        )
