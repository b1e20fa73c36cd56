"""One JAX executor (core/production.py): every JAX call of the server process (preparing,
each further chunk, a whole tensor's hand-off from its worker, a model's checks) runs on
the one pool of ``workers`` threads; no producer thread of its own, no asyncio default pool."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from jaxinit.protocol.keys import Key
from jaxinit_server.core import GenerateParams, InitModelParams, Limits, Service, chunked, engine
from jaxinit_server.core.source import Made, Pipelined

WORKERS = 2


@pytest.fixture
def service() -> Iterator[Service]:
    svc = Service(Limits(), workers=WORKERS, whole_workers=1, cache_bytes=0)
    try:
        yield svc
    finally:
        svc.close()


def test_every_jax_call_runs_on_the_one_pool_of_workers_threads(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran_on: set[str] = set()
    threads: set[threading.Thread] = set()  # the threads themselves: other services' pools share names
    real_prepare, real_chunks, real_validate = engine.prepare, chunked.chunks, engine.validate

    def prepare(*args: object, **kwargs: object) -> engine.Generation:
        ran_on.add(threading.current_thread().name)
        threads.add(threading.current_thread())
        return real_prepare(*args, **kwargs)  # type: ignore[arg-type]

    def chunks(*args: object, **kwargs: object) -> Iterator[np.ndarray]:
        for piece in real_chunks(*args, **kwargs):  # type: ignore[arg-type]
            ran_on.add(threading.current_thread().name)  # each chunk, where it was made
            threads.add(threading.current_thread())
            yield piece

    def validate(*args: object, **kwargs: object) -> None:
        ran_on.add(threading.current_thread().name)
        threads.add(threading.current_thread())
        real_validate(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "prepare", prepare)
    monkeypatch.setattr(chunked, "chunks", chunks)
    monkeypatch.setattr(engine, "validate", validate)
    before = {t.name for t in threading.enumerate()}

    async def run() -> None:
        # a chunked stream of several chunks, read by four callers at once
        asks = [GenerateParams("normal", (4096, 1024), key=Key(seed=seed)) for seed in range(4)]
        streams = [await service.generate(service.prepare(p)) for p in asks]

        async def read(stream: object) -> None:
            async for _ in stream.chunks(2**20):  # type: ignore[attr-defined]
                pass

        await asyncio.gather(*(read(s) for s in streams))
        model = await service.prepare_model(
            InitModelParams({"params": [{"path": "w", "shape": [8, 8], "initializer": "lecun_normal"}]}, Key(seed=0))
        )
        await service.check_model(model)

    asyncio.run(run())
    assert ran_on and all(name.startswith("jaxinit-jax") for name in ran_on), ran_on
    assert len(threads) <= WORKERS  # (other services of this process have pools of their own)
    new = {t.name for t in threading.enumerate()} - before
    assert not {name for name in new if "producer" in name or name.startswith("asyncio")}, new


def test_a_chunked_answer_is_pipelined_on_the_pool_and_a_small_one_is_made_already(service: Service) -> None:
    async def run() -> tuple[object, object]:
        big = await service.production.make(service.prepare(GenerateParams("normal", (2048, 1024), key=Key(seed=1))))
        small = await service.production.make(service.prepare(GenerateParams("normal", (8, 8), key=Key(seed=1))))
        big.close()
        small.close()
        return big, small

    big, small = asyncio.run(run())
    assert isinstance(big, Pipelined) and isinstance(small, Made)
    assert isinstance(small.array, np.ndarray) and small.array.size == 64
