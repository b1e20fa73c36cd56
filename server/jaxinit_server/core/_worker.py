"""A whole-tensor worker process: runs requests that cannot be chunked, one at a time.

Started by :class:`jaxinit_server.core.whole.WholePool` as
``python -m jaxinit_server.core._worker``. It reads jobs from stdin and writes answers to
stdout, each framed as an 8-byte little-endian length and a pickle (the pipe joins two
processes of the same server; nothing else writes to it):

- job: a resolved request; answer: a header ``{"ok": True, "key_data",
  "nbytes"}`` then exactly ``nbytes`` raw little-endian bytes (the requested range), then
  a trailer ``{"rss": bytes}``; or a header ``{"ok": False, "error", "message"}``.

Running whole-tensor work here keeps it out of the server process: a QR that cannot be
interrupted is stopped by killing its worker, an allocation failure kills at most a
worker, and JAX's per-shape caches live and die with the worker (it clears them, and
the pool replaces a worker that stays large).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys
import threading
import time

from jaxinit_server.core._frames import read_frame, rss_bytes, write_frame

PIECE = 4 * 2**20


def _trim(full: bool) -> None:
    """Give freed heap back to the system (glibc keeps it otherwise). Reference counting
    has freed a job's arrays already; only cycles wait for a collection. A full one walks
    JAX's objects (tens of milliseconds, longer than a small job), so after each job only
    the youngest generation is collected, and a full collection runs with the caches'
    clearing, above the soft RSS."""
    gc.collect(2 if full else 0)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _orphan_watch(parent: int) -> None:
    """Exit when the server is gone, even in the middle of a computation."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def main() -> None:
    threading.Thread(target=_orphan_watch, args=(os.getppid(),), daemon=True).start()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames on the pipe
    soft_rss = int(os.environ.get("JAXINIT_WORKER_SOFT_RSS", str(768 * 2**20)))

    if level := os.environ.get("JAXINIT_WORKER_LOG_LEVEL"):
        from jaxinit_server.logs import configure

        configure(level, "json" if os.environ.get("JAXINIT_LOG_FORMAT") == "json" else "text", process="worker")
    if cache_dir := os.environ.get("JAXINIT_COMPILATION_CACHE_DIR"):
        from jaxinit_server.core.startup import use_compilation_cache

        use_compilation_cache(cache_dir)  # the server's: programs compiled once serve every worker

    from jaxinit.protocol.codec import to_wire_bytes
    from jaxinit.protocol.errors import InternalError, JaxinitError
    from jaxinit_server.core import engine

    gc.collect()
    gc.freeze()  # what the imports made is kept: no collection walks it again
    write_frame(stdout, {"ready": True, "pid": os.getpid()})
    while True:
        try:
            resolved = read_frame(stdin)
        except EOFError:
            return
        try:
            array, key_data = engine.run(resolved)
            flat = array.reshape(-1)[resolved.start : resolved.stop]
            data = to_wire_bytes(flat)
        except JaxinitError as exc:
            write_frame(stdout, {"ok": False, "error": type(exc).__name__, "message": exc.message})
            continue
        except Exception as exc:  # a bug: the server logs it as an internal error
            print(f"jaxinit worker: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            error = InternalError("internal server error")
            write_frame(stdout, {"ok": False, "error": type(error).__name__, "message": error.message})
            continue
        write_frame(stdout, {"ok": True, "key_data": key_data, "nbytes": len(data)})
        for start in range(0, len(data), PIECE):
            stdout.write(data[start : start + PIECE])
        stdout.flush()
        del array, flat, data
        full = rss_bytes() > soft_rss
        if full:  # per-shape programs and buffers: let them go
            import jax

            jax.clear_caches()  # type: ignore[no-untyped-call]
        _trim(full)
        write_frame(stdout, {"rss": rss_bytes()})


if __name__ == "__main__":
    main()
