"""TensorStream, in-process: the bytes and digest of what the engine's producer makes, a
producer thread that stops when the sender does, the ticket given back however sending
ends, and a tensor the server gave up on cut off with a retryable error."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from jaxinit.protocol.codec import to_wire_bytes
from jaxinit.protocol.digest import new_hasher
from jaxinit.protocol.errors import ServerUnavailable
from jaxinit.protocol.keys import Key
from jaxinit.protocol.provenance import Provenance
from jaxinit_server.core import engine
from jaxinit_server.core.admission import Admission
from jaxinit_server.core.request import GenerateParams, Limits, PrngDefaults, resolve
from jaxinit_server.core.source import Made, Pipelined
from jaxinit_server.core.stream import TensorStream, gather

N = 10 * 2**20  # elements: ten producer pieces of 2**20
POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jaxinit-jax")  # the one JAX pool's stand-in


def _resolved(count: int = N) -> object:
    return resolve(GenerateParams("zeros", (count,), dtype="float32"), Limits(), PrngDefaults(True, False))


class Producer:
    """A Generation's producer that counts the pieces it made and whether it was closed."""

    def __init__(self, pieces: int = 10, size: int = 2**20) -> None:
        self.pieces, self.size = pieces, size
        self.made = 0
        self.closed = threading.Event()

    def __call__(self) -> Iterator[np.ndarray]:
        try:
            for i in range(self.pieces):
                self.made += 1
                yield np.full(self.size, i, dtype=np.float32)
        finally:
            self.closed.set()


def _stream(producer: Producer, depth: int = 2, **kwargs: object) -> TensorStream:
    resolved = _resolved(producer.pieces * producer.size)
    timings: dict[str, float] = {}
    source = Pipelined((), producer, POOL, depth=depth, timings=timings)
    return TensorStream(resolved, source, Provenance(), timings=timings, **kwargs)  # type: ignore[arg-type]


def test_chunks_are_the_bytes_in_order_and_the_digest_is_theirs() -> None:
    producer = Producer()
    stream = _stream(producer)

    async def read() -> bytes:
        out = bytearray()
        async for offset, data in stream.chunks(3 * 2**20 // 2):
            assert offset == len(out)
            out += data
        return bytes(out)

    sent = asyncio.run(read())
    want = b"".join(to_wire_bytes(np.full(2**20, i, dtype=np.float32)) for i in range(10))
    assert sent == want
    hasher = new_hasher()
    hasher.update(want)
    assert stream.digest() == hasher.digest()
    assert "generate" in stream.timings


def test_the_producer_stops_when_the_sender_does_and_the_ticket_comes_back() -> None:
    """A caller that goes after two pieces: the producer thread is closed, at most the
    pipeline's depth ahead, and the stream's capacity is given back."""
    admission = Admission(4, 2**30)
    producer = Producer(pieces=1000)
    stream = _stream(producer, ticket=admission.admit(10), depth=2)

    async def read_two() -> None:
        chunks = stream.chunks(2**22)
        await anext(chunks)
        await anext(chunks)
        await chunks.aclose()  # type: ignore[attr-defined]

    asyncio.run(read_two())
    assert producer.closed.wait(30), "the producer thread did not stop"
    assert producer.made <= 2 + 2 + 1
    assert admission.streams == 0
    with pytest.raises(RuntimeError):
        stream.digest()  # nothing to vouch for: not every byte was sent


def test_aborted_streams_end_with_a_retryable_error() -> None:
    aborted = threading.Event()
    stream = _stream(Producer(), aborted=aborted)

    async def read() -> None:
        async for _ in stream.chunks(2**20):
            aborted.set()

    with pytest.raises(ServerUnavailable, match="retry"):
        asyncio.run(read())


def test_array_and_gather_give_the_whole_and_close() -> None:
    producer = Producer(pieces=3, size=5)
    stream = _stream(producer)
    array = asyncio.run(stream.array())
    assert array.shape == (15,) and array.tolist() == [float(i) for i in range(3) for _ in range(5)]
    assert producer.closed.is_set()
    made = engine.prepare(
        resolve(GenerateParams("lecun_normal", (64, 32), key=Key(seed=1)), Limits(), PrngDefaults(True, False))
    )
    assert made.array is not None
    source = Made(made.key_data, made.array)
    assert asyncio.run(gather(source, "float32")) is made.array  # made already: no thread, no copy


def test_a_failing_producer_fails_the_stream() -> None:
    def failing() -> Iterator[np.ndarray]:
        yield np.zeros(4, np.float32)
        time.sleep(0.01)
        raise MemoryError("out of memory")

    resolved = _resolved(8)
    stream = TensorStream(resolved, Pipelined((), failing, POOL), Provenance())

    async def read() -> None:
        async for _ in stream.chunks(64):
            pass

    with pytest.raises(MemoryError):
        asyncio.run(read())
