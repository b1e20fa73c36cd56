"""Sources (core/source.py): one interface however bytes are made. A pipelined producer
runs its steps on the pool inside its configuration, at most ``depth`` ahead, and is
closed (its step on a thread waited for) when its reader stops early; closers run once."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from jaxinit.protocol.errors import ServerUnavailable
from jaxinit_server.core.source import Made, Pipelined

POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jaxinit-jax")


def _read(source: object, stop_after: int | None = None) -> list[np.ndarray]:
    async def run() -> list[np.ndarray]:
        out = []
        async with contextlib.aclosing(source.pieces()) as pieces:  # type: ignore[attr-defined]
            async for piece in pieces:
                out.append(piece)
                if stop_after is not None and len(out) == stop_after:
                    break
        return out

    return asyncio.run(run())


def test_made_yields_its_array_and_closes_once() -> None:
    closed: list[int] = []
    source = Made((1, 2), np.arange(3), close=lambda: closed.append(1))
    source.also_on_close(lambda: closed.append(2))
    assert [p.tolist() for p in _read(source)] == [[0, 1, 2]]
    source.close()
    source.close()
    assert closed == [1, 2] and source.key_data == (1, 2)


def test_pipelined_steps_run_on_the_pool_inside_the_config_and_stop_with_the_reader() -> None:
    where: list[str] = []
    inside = threading.local()
    made, closed = [], threading.Event()

    @contextlib.contextmanager
    def config() -> Iterator[None]:
        inside.on = True
        try:
            yield
        finally:
            inside.on = False

    def produce() -> Iterator[np.ndarray]:
        try:
            for i in range(100):
                assert getattr(inside, "on", False)  # every step inside its configuration
                where.append(threading.current_thread().name)
                made.append(i)
                yield np.full(4, i)
        finally:
            closed.set()

    timings: dict[str, float] = {}
    source = Pipelined((), produce, POOL, config=config, depth=2, timings=timings)
    pieces = _read(source, stop_after=3)
    assert [int(p[0]) for p in pieces] == [0, 1, 2]
    assert closed.is_set() and len(made) <= 3 + 2 + 1
    assert set(where) <= {t.name for t in threading.enumerate()} and all(w.startswith("jaxinit-jax") for w in where)
    assert timings["generate"] > 0


def test_a_failing_step_fails_the_reader_and_a_shut_pool_is_server_unavailable() -> None:
    def failing() -> Iterator[np.ndarray]:
        yield np.zeros(1)
        raise MemoryError("out of memory")

    with pytest.raises(MemoryError):
        _read(Pipelined((), failing, POOL))
    shut = ThreadPoolExecutor(1)
    shut.shutdown()
    with pytest.raises(ServerUnavailable, match="shutting down"):
        _read(Pipelined((), failing, shut))
