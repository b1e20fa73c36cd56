"""The result cache and single flight (core/results.py, core/stored.py), in this process
through ``Service.generate``: no sockets, no server process.

Probes the cache as an attacker would (issue 23): stored bytes changed behind the
server's back are never served (the hit is checked, evicted, counted and made again);
the wire digest of a stored answer is the one fixed when it was made; tiny tensors own
exactly the bytes they are counted as; readers of evicted tensors keep counting against
the capacity; afterwards every answer still equals local JAX.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from helpers import local_jax
from jaxinit.protocol.catalog import CATALOG
from jaxinit.protocol.errors import ServerUnavailable
from jaxinit.protocol.keys import Key
from jaxinit_server.core import GenerateParams, Limits, Service
from jaxinit_server.core.results import HIT, MISS, NONE
from jaxinit_server.core.source import Made
from jaxinit_server.core.stored import OVERHEAD_BYTES
from jaxinit_server.core.stream import TensorStream

ARGS: dict[str, dict[str, Any]] = {
    "constant": {"value": 0.3},
    "variance_scaling": {"scale": 1.5, "mode": "fan_avg", "distribution": "truncated_normal"},
}


def _service(cache_bytes: int = 64 * 2**20, **kwargs: Any) -> Service:
    service = Service(Limits(max_tensor_bytes=2**27), cache_bytes=cache_bytes, **kwargs)
    service.ready = True
    return service


@pytest.fixture
def service() -> Iterator[Service]:
    service = _service()
    try:
        yield service
    finally:
        service.close()


def params(name: str, seed: int | None, shape: tuple[int, ...], **kwargs: Any) -> GenerateParams:
    key = Key(seed=seed) if seed is not None else None
    return GenerateParams(name, shape, args=ARGS.get(name, {}), key=key, **kwargs)


async def fetch(service: Service, p: GenerateParams) -> tuple[bytes, str, bytes]:
    """(bytes, how it was made, the digest sent) of one answer, sent whole as a stream is."""
    tensor = await service.generate(service.prepare(p))
    data = b"".join([bytes(piece) async for _, piece in tensor.chunks(2**20)])
    return data, tensor.cache, tensor.digest()


async def settled(service: Service) -> None:
    """Wait until no generation is in flight (they end just after their last piece is sent)."""
    while service.results._flights:
        await asyncio.sleep(0.005)


def expected(name: str, seed: int | None, shape: tuple[int, ...]) -> bytes:
    return np.ascontiguousarray(local_jax(name, ARGS.get(name, {}), seed, shape, None)).tobytes()


def test_every_family_made_then_hit_then_a_range_of_the_hit(service: Service) -> None:
    async def run() -> None:
        for name in sorted(CATALOG):
            seed = 7 if CATALOG[name].uses_key else None
            want = expected(name, seed, (3, 4, 5))
            first = await fetch(service, params(name, seed, (3, 4, 5)))
            await settled(service)
            again = await fetch(service, params(name, seed, (3, 4, 5)))
            part = await fetch(service, params(name, seed, (3, 4, 5), offset=7, count=20))
            assert first[0] == again[0] == want and first[2] == again[2], name
            assert (first[1], again[1], part[1]) == (MISS, HIT, HIT), name
            itemsize = len(want) // 60
            assert part[0] == want[7 * itemsize : 27 * itemsize], name

    asyncio.run(run())


@pytest.mark.parametrize("shape", [(16, 16), (1024, 512)], ids=["small", "sealed"])
def test_stored_bytes_changed_behind_the_servers_back_are_never_served(service: Service, shape: Any) -> None:
    """A cached tensor whose bytes no longer match the digests fixed when they were made:
    the next hit finds it, evicts it, logs and counts it, and the caller gets the tensor
    made again, exact. A sealed one cannot be changed at all, not even by the server."""
    want = expected("normal", 3, shape)

    async def run() -> None:
        assert (await fetch(service, params("normal", 3, shape)))[1] == MISS
        await settled(service)
        (entry,) = service.results._entries.values()
        if entry.stored.sealed:
            assert entry.stored.fd is not None
            with pytest.raises(OSError) as refused:
                os.pwrite(entry.stored.fd, b"\0", 0)
            assert refused.value.errno == errno.EPERM
            entry.stored.sealed = False  # pretend it was not (a kernel without seals): checked as small ones are
        corrupted = entry.stored.array.copy()
        corrupted.view(np.uint8)[5] ^= 0xFF
        entry.stored.array = corrupted  # as a stray write into the buffer would leave it
        data, how, _ = await fetch(service, params("normal", 3, shape))
        assert data == want and how == NONE
        assert service.results.counts["integrity_failures"] == 1
        assert (await fetch(service, params("normal", 3, shape)))[:2] == (want, MISS)

    asyncio.run(run())


def test_the_wire_digest_of_a_stored_answer_is_the_one_fixed_when_it_was_made(service: Service) -> None:
    """Bytes that changed after they were checked still cannot go out with a digest of
    their own: the answer ends with a retryable error instead."""

    async def run() -> None:
        resolved = service.prepare(params("zeros", None, (64,))).resolved

        class Stored(Made):  # stored bytes whose digest was fixed as something else
            def fixed_digest(self) -> bytes:
                return b"\0" * 16

        tensor = TensorStream(resolved, Stored((), np.ones(64, np.float32)), service.identity.provenance(resolved, ()))
        with pytest.raises(ServerUnavailable, match="integrity"):
            _ = [piece async for piece in tensor.chunks(1024)]

    asyncio.run(run())


def test_tiny_tensors_own_exactly_the_bytes_they_are_counted_as() -> None:
    """Issue 23: a (2, 2) answer was a view of a 4,096-element chunk, counted as 16 bytes."""
    service = _service(cache_bytes=2**20)

    async def run() -> None:
        for seed in range(300):
            data, how, _ = await fetch(service, params("normal", seed, (2, 2)))
            assert how == MISS and len(data) == 16
        entries = list(service.results._entries.values())
        assert len(entries) == 2**20 // (16 + OVERHEAD_BYTES) or len(entries) == 300
        for entry in entries:
            base = entry.array.base
            assert base is None or getattr(base, "nbytes", 16) == 16
        assert service.results.held_bytes == sum(e.counted for e in entries) <= 2**20

    try:
        asyncio.run(run())
    finally:
        service.close()


def test_readers_of_evicted_tensors_count_until_they_are_done() -> None:
    """A slow reader keeps an evicted tensor alive: its bytes stay counted (draining), so
    new tensors are made alone rather than pile up past the capacity; once the reader is
    done, the memory is counted free again. Every answer exact."""
    service = _service(cache_bytes=5 * 2**20)
    shape = (1024, 1024)  # 4 MiB

    async def run() -> None:
        await fetch(service, params("normal", 1, shape))
        await settled(service)
        slow = await service.generate(service.prepare(params("normal", 1, shape)))  # a hit, not read yet
        assert slow.cache == HIT
        other = await fetch(service, params("normal", 2, shape))  # evicts 1: its reader holds it
        assert other[0] == expected("normal", 2, shape)
        results = service.results
        assert results.draining_bytes == 4 * 2**20 + OVERHEAD_BYTES
        assert results.held_bytes <= 5 * 2**20 and other[1] == NONE  # no room for both: made alone
        data = b"".join([bytes(p) async for _, p in slow.chunks(2**20)])
        assert data == expected("normal", 1, shape)
        assert results.draining_bytes == 0
        assert (await fetch(service, params("normal", 2, shape)))[1] == MISS

    try:
        asyncio.run(run())
    finally:
        service.close()


def test_concurrent_callers_share_one_generation_and_a_leaver_stops_nobody(service: Service) -> None:
    shape = (2048, 1024)
    want = expected("lecun_normal", 21, shape)

    async def run() -> None:
        tensors = [await service.generate(service.prepare(params("lecun_normal", 21, shape))) for _ in range(4)]
        assert [t.cache for t in tensors] == [MISS, "shared", "shared", "shared"]
        tensors[0].close()  # the caller that started it leaves
        datas = await asyncio.gather(*(_read(t) for t in tensors[1:]))
        assert all(d == want for d in datas)
        await settled(service)
        assert (await fetch(service, params("lecun_normal", 21, shape)))[1] == HIT
        assert service.results.reserved_bytes == 0 and not service.results._flights

    asyncio.run(run())


async def _read(tensor: TensorStream) -> bytes:
    return b"".join([bytes(p) async for _, p in tensor.chunks(2**20)])


def test_a_generation_whose_callers_all_leave_frees_everything(service: Service) -> None:
    async def run() -> None:
        tensor = await service.generate(service.prepare(params("uniform", 44, (4096, 2048))))
        assert tensor.cache == MISS
        tensor.close()
        while service.results._flights or service.results.reserved_bytes or service.admission.streams:
            await asyncio.sleep(0.01)
        data, how, _ = await fetch(service, params("uniform", 44, (4096, 2048)))
        assert data == expected("uniform", 44, (4096, 2048)) and how in (MISS, HIT)

    asyncio.run(run())


def test_the_cache_is_bounded_least_recently_used_first_and_off_at_zero() -> None:
    bounded, off = _service(cache_bytes=9 * 2**20), _service(cache_bytes=0)
    shape = (1024, 1024)

    async def run() -> None:
        hows = []
        for seed in (1, 2, 1, 3, 1, 2):
            hows.append((await fetch(bounded, params("normal", seed, shape)))[1])
            await settled(bounded)
        assert hows == [MISS, MISS, HIT, MISS, HIT, MISS]
        assert bounded.results.held_bytes <= 9 * 2**20 and bounded.results.counts["evicted"] >= 2
        assert (await fetch(bounded, params("normal", 4, (2048, 2048))))[1] == NONE  # larger than the cache
        answers = [await fetch(off, params("he_normal", 3, (64, 64))) for _ in range(2)]
        assert [a[1] for a in answers] == [NONE, NONE] and answers[0][0] == expected("he_normal", 3, (64, 64))

    try:
        asyncio.run(run())
    finally:
        bounded.close()
        off.close()


def test_many_distinct_requests_start_no_thread_each(tmp_path: Any) -> None:
    """Issue 23: a thread per cached tensor for the disk cache. 200 distinct tensors, 16 at
    a time, with a disk cache: the thread count stays flat, every answer exact."""
    service = _service(cache_bytes=8 * 2**20, cache_dir=str(tmp_path))
    before = threading.active_count()

    async def run() -> None:
        async def one(seed: int) -> None:
            data, _, _ = await fetch(service, params("normal", seed, (64, 256)))
            assert data == expected("normal", seed, (64, 256))

        for start in range(0, 200, 16):
            await asyncio.gather(*(one(s) for s in range(start, start + 16)))

    try:
        asyncio.run(run())
        assert threading.active_count() <= before + 12  # the JAX pool and the disk cache's few
    finally:
        service.close()
