"""The whole-tensor pool: worker processes for the requests that cannot be chunked.

Orthogonal (a QR of the whole matrix), complex dtypes, rbg/unsafe_rbg and other key
implementations, and the rest that :mod:`chunked` does not make in chunks run whole
in a bounded pool of worker processes (:mod:`._worker`), never in the server process:

- chunked traffic and health never wait behind them (they have their own slots);
- a caller who goes away (or whose deadline passes) has its worker killed at once, and
  the slot comes back only when the process has really ended;
- an allocation failure or crash ends a worker, not the server;
- JAX's per-shape programs live in the workers, which clear them above a soft RSS and
  are replaced above a hard one, so the server's memory stays bounded;
- on shutdown every worker is killed, so SIGTERM never waits on JAX.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import numpy as np

from jaxinit.protocol.codec import DTYPES
from jaxinit.protocol.errors import ERROR_TABLE, InternalError, JaxinitError, ServerUnavailable, TooLarge
from jaxinit_server.core._frames import read_frame, write_frame
from jaxinit_server.core.request import Resolved

__all__ = ["WholeJob", "WholePool"]

log = logging.getLogger("jaxinit_server.whole")
_ERRORS: dict[str, type[JaxinitError]] = {cls.__name__: cls for cls in ERROR_TABLE}


class _Worker:
    """One worker process and its pipes."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jaxinit_server.core._worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            bufsize=0,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        self.rss = 0
        self.loaded: bool | None = None  # None: not known yet (see hello)
        self._hello = threading.Lock()

    def hello(self) -> None:
        """Block until the worker has loaded JAX and says it is ready (from any thread; the
        first caller reads its greeting, the others wait for it)."""
        with self._hello:
            if self.loaded is None:
                try:
                    read_frame(self.stdout)
                    self.loaded = True
                except (EOFError, OSError, ValueError):
                    self.loaded = False
        if not self.loaded:
            raise ServerUnavailable("a whole-tensor worker failed to start; see the server log")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            self.process.kill()
        with contextlib.suppress(OSError, ValueError):
            self.stdin.close()
        self.process.wait()
        with contextlib.suppress(OSError, ValueError):
            self.stdout.close()

    def died(self) -> JaxinitError:
        """The error for a worker that ended in the middle of a job."""
        code = self.process.wait()
        if code in (-signal.SIGKILL, -signal.SIGABRT, -signal.SIGSEGV):
            return TooLarge(
                "the worker making this tensor ran out of memory (ended by signal "
                f"{signal.Signals(-code).name}); ask for a smaller tensor or a range of a chunked family"
            )
        return InternalError("internal server error")


class WholeJob:
    """One request running on (or finished by) a worker: its key data, then its bytes."""

    def __init__(self, pool: WholePool, resolved: Resolved) -> None:
        self._pool = pool
        self._worker: _Worker | None = None
        self._closed = False
        self.resolved = resolved
        self.key_data: tuple[int, ...] = ()
        self.nbytes = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        """Take a worker, send the request and wait for its header (blocking: call from a
        thread; :meth:`close` from another ends it wherever it is).

        Raises the domain error the worker reported (JAX's refusal, TooLarge, ...).
        """
        worker = self._pool._take()
        with self._lock:
            if not self._closed:
                self._worker = worker
        if self._worker is None:  # closed while a worker was being found: it goes back
            self._pool._done(worker, healthy=True)
            raise ServerUnavailable("the request was cancelled")
        try:
            write_frame(worker.stdin, self.resolved)
            header = read_frame(worker.stdout)
        except (EOFError, OSError, ValueError):
            error = worker.died() if self._pool.open else _stopping()
            self.close()
            raise error from None
        if not header.get("ok"):
            self._finish()
            raise _ERRORS.get(header.get("error", ""), InternalError)(str(header.get("message", "")))
        self.key_data = tuple(header["key_data"])
        self.nbytes = int(header["nbytes"])

    def pieces(self, piece_bytes: int) -> Iterator[np.ndarray]:
        """The bytes as flat arrays of the output dtype, as they come from the worker."""
        worker = self._worker
        if worker is None:
            raise ServerUnavailable("the request was cancelled")
        dtype = DTYPES[self.resolved.out_dtype].newbyteorder("<")
        step = max(dtype.itemsize, piece_bytes - piece_bytes % dtype.itemsize)
        left = self.nbytes
        try:
            while left:
                data = worker.stdout.read(min(step, left))
                if not data:
                    raise EOFError
                while len(data) % dtype.itemsize:  # a pipe read can end mid-element
                    more = worker.stdout.read(dtype.itemsize - len(data) % dtype.itemsize)
                    if not more:
                        raise EOFError
                    data += more
                left -= len(data)
                yield np.frombuffer(data, dtype=dtype)
            worker.rss = int(read_frame(worker.stdout).get("rss", 0))
        except (EOFError, OSError, ValueError):
            error = worker.died() if self._pool.open else _stopping()
            self.close()
            raise error from None
        self._finish()

    def _finish(self) -> None:
        """The worker is idle again: back to the pool."""
        with self._lock:
            worker, self._worker, self._closed = self._worker, None, True
        if worker is not None:
            self._pool._done(worker, healthy=True)

    def close(self) -> None:
        """Stop the job wherever it is (idempotent): a busy worker is killed and replaced."""
        with self._lock:
            worker, self._worker, self._closed = self._worker, None, True
        if worker is not None:
            self._pool._done(worker, healthy=False)


def _stopping() -> ServerUnavailable:
    return ServerUnavailable("the server is shutting down; retry on another replica")


class _Slots:
    """A counting semaphore that any thread may release and any event loop may await.

    asyncio.Semaphore binds to the loop that first waits on it: a pool used from a second
    loop (an in-process app driven by several ``asyncio.run``) then never wakes. A waiter
    here is a future of its own loop; a slot given to a waiter that left goes on to the next.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._lock = threading.Lock()

    async def acquire(self) -> None:
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
        try:
            await future
        except BaseException:
            with self._lock:
                waiting = future in self._waiters
                if waiting:
                    self._waiters.remove(future)
            if not waiting and future.done() and not future.cancelled():
                self.release()  # granted as the caller left: the slot goes on
            raise

    def release(self) -> None:
        """Give one slot back: to the first waiter whose loop still runs, else to the count."""
        with self._lock:
            while self._waiters:
                future = self._waiters.popleft()
                try:
                    future.get_loop().call_soon_threadsafe(self._grant, future)
                    return
                except RuntimeError:  # its loop has closed: that waiter is gone
                    continue
            self._free += 1

    def _grant(self, future: asyncio.Future[None]) -> None:
        if future.done():  # cancelled after it was picked: pass the slot on
            self.release()
        else:
            future.set_result(None)


class WholePool:
    """``size`` worker processes; jobs wait (cancellably) for a free one.

    Args:
        size: workers, i.e. whole-tensor requests computed at once.
        hard_rss: a worker larger than this after a job is replaced.
        soft_rss: above this a worker clears JAX's caches after a job.
        compilation_cache_dir: JAX's persistent cache, shared with the workers.
        log_level: the workers' log level (their logs go to the server's stderr).
        executor: the threads that wait on the workers' pipes (the server's one JAX pool);
            None: a pool of its own, one thread per worker.
    """

    def __init__(
        self,
        size: int,
        *,
        hard_rss: int = 2 * 2**30,
        soft_rss: int = 768 * 2**20,
        compilation_cache_dir: str | None = None,
        log_level: str | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.size = size
        self.hard_rss = hard_rss
        self._env = {**os.environ, "JAXINIT_WORKER_SOFT_RSS": str(soft_rss)}
        if compilation_cache_dir:
            self._env["JAXINIT_COMPILATION_CACHE_DIR"] = compilation_cache_dir
        if log_level:
            self._env["JAXINIT_WORKER_LOG_LEVEL"] = log_level
        self._idle: list[_Worker] = []
        self._starting: list[_Worker] = []  # started by begin(), loading JAX
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._slots = _Slots(size)
        # Blocking pipe calls (start a worker, wait for its header).
        self._own_threads = executor is None
        self._threads = executor or ThreadPoolExecutor(max_workers=size, thread_name_prefix="jaxinit-whole")
        self.open = True
        self.busy = 0
        self.waiting = 0
        self.replaced = 0
        self.killed = 0

    def begin(self) -> None:
        """Start the pool's missing workers without waiting: each joins the idle ones once it
        has loaded JAX, and a job that comes first takes one still loading and waits for it."""
        with self._lock:
            missing = self.size - len(self._all)
        for _ in range(missing):
            worker = self._spawn()
            with self._lock:
                self._starting.append(worker)
            threading.Thread(target=self._settle, args=(worker,), name="jaxinit-whole-spawn", daemon=True).start()

    def start(self) -> None:
        """Start the pool's missing workers and wait until every worker started has loaded
        JAX (blocking)."""
        self.begin()
        with self._lock:
            starting = list(self._starting)
        for worker in starting:
            worker.hello()

    def _settle(self, worker: _Worker) -> None:
        """Wait for a worker :meth:`begin` started; then it is idle (or, failed, gone)."""
        with contextlib.suppress(JaxinitError):
            worker.hello()
        with self._lock:
            mine = worker in self._starting
            if mine:
                self._starting.remove(worker)
                if worker.loaded and self.open:
                    self._idle.append(worker)
                    return
        if mine:
            worker.kill()
            self._forget(worker)

    def _spawn(self) -> _Worker:
        worker = _Worker(self._env)
        with self._lock:
            self._all.add(worker)
        return worker

    async def run(self, resolved: Resolved) -> WholeJob:
        """A started job for ``resolved``: made whole by a worker, its header read.

        Waits for a free worker. If the caller goes away meanwhile, or while the worker
        computes, the worker is killed (it cannot be interrupted otherwise).
        """
        loop = asyncio.get_running_loop()
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        if not self.open:
            raise _stopping()
        with self._lock:
            self.busy += 1
        job = WholeJob(self, resolved)
        started = loop.run_in_executor(self._threads, job.start)
        try:
            await asyncio.shield(started)
            return job
        except BaseException:
            # Kills a busy worker (the blocked thread sees EOF and ends); a worker still
            # being found goes back to the pool. The slot is given back by whichever ends.
            job.close()
            if not started.done():
                await asyncio.wait([started])
            if not started.cancelled():
                started.exception()  # retrieved: the caller is gone, nobody else wants it
            raise

    def _release(self) -> None:
        """Give a slot back (from any thread)."""
        self._slots.release()

    def _take(self) -> _Worker:
        """An idle worker, else one still loading JAX, else a new one (blocking while it
        loads). On failure the slot taken for it is given back."""
        with self._lock:
            worker = self._idle.pop() if self._idle else (self._starting.pop() if self._starting else None)
        try:
            if worker is None:
                worker = self._started()
            else:
                try:
                    worker.hello()  # at once, unless it is still loading
                except JaxinitError:
                    worker.kill()
                    self._forget(worker)
                    raise
        except JaxinitError:
            with self._lock:
                self.busy -= 1
            self._release()
            raise
        return worker

    def _started(self) -> _Worker:
        """A new worker that has loaded JAX; on failure none is left behind (raises JaxinitError)."""
        worker = self._spawn()
        try:
            worker.hello()
        except JaxinitError:
            worker.kill()
            self._forget(worker)
            raise
        return worker

    def _done(self, worker: _Worker, *, healthy: bool) -> None:
        if healthy and self.open and (not self.hard_rss or worker.rss <= self.hard_rss):
            with self._lock:
                self._idle.append(worker)
        else:
            if healthy and self.open:
                log.info("replacing a whole-tensor worker of %d MiB", worker.rss // 2**20)
            worker.kill()
            self._forget(worker)
            if healthy and self.open:
                self.replaced += 1
            else:
                self.killed += 1
            if self.open:  # a replacement loads JAX now, not when the next caller waits
                threading.Thread(target=self._replenish, name="jaxinit-whole-spawn", daemon=True).start()
        with self._lock:
            self.busy -= 1
        self._release()  # only now: the work has really ended

    def _replenish(self) -> None:
        """Start one idle worker if the pool has fewer than its size (blocking)."""
        with self._lock:
            if len(self._all) >= self.size:
                return
        try:
            worker = self._started()
        except JaxinitError:
            return
        with self._lock:
            keep = self.open and len(self._idle) < self.size
            if keep:
                self._idle.append(worker)
        if not keep:
            worker.kill()
            self._forget(worker)

    def _forget(self, worker: _Worker) -> None:
        with self._lock:
            self._all.discard(worker)

    def state(self) -> dict[str, Any]:
        """The pool as readiness and metrics show it."""
        return {
            "size": self.size,
            "loading": len(self._starting),  # started, still loading JAX (just after a start)
            "busy": self.busy,
            "waiting": self.waiting,
            "replaced": self.replaced,
            "killed": self.killed,
        }

    def close(self) -> None:
        """Kill every worker (a running job ends with ServerUnavailable)."""
        self.open = False
        with self._lock:
            workers = list(self._all)
            self._idle.clear()
            self._starting.clear()
        for worker in workers:
            worker.kill()
        for _ in range(self.waiting + self.size):  # waiters wake, see the pool closed, and fail
            self._release()
        if self._own_threads:
            self._threads.shutdown(wait=False, cancel_futures=True)
