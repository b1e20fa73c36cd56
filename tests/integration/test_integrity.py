"""Integrity digests: every tensor answer ends with the xxh3-128 of its bytes (a range's,
for a range), on both transports; the client checks it and refuses a corrupted answer,
here one whose byte a real proxy on the path flipped."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import jax
import numpy as np
import pytest
import xxhash

import jaxinit
from jaxinit._grpc import _Collector, request_to_proto
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc


def _messages(server: Any, **range_: int) -> list[Any]:
    request = jaxinit.Client(server.grpc_url).request("normal", 4, (512, 512))
    if range_:
        request = jaxinit.Request("normal", 4, (512, 512), **range_)
    with grpc.insecure_channel(server.grpc_target) as channel:
        return list(pb_grpc.InitializersStub(channel).Generate(request_to_proto(request), timeout=60))


def test_grpc_answers_end_with_the_digest_of_their_bytes(server: Any) -> None:
    for range_ in ({}, {"offset": 1000, "count": 70_000}):
        messages = _messages(server, **range_)
        kinds = [m.WhichOneof("payload") for m in messages]
        assert kinds[0] == "header" and kinds[-1] == "digest" and set(kinds[1:-1]) == {"data"}
        assert messages[0].header.digest_algorithm == messages[-1].digest.algorithm == "xxh3-128"
        data = b"".join(m.data.data for m in messages[1:-1])
        assert xxhash.xxh3_128(data).digest() == messages[-1].digest.digest
    expected = np.asarray(jax.nn.initializers.normal()(jax.random.key(4), (512, 512))).reshape(-1)
    assert data == expected[1000:71_000].tobytes()


def test_the_grpc_client_refuses_a_flipped_byte(server: Any) -> None:
    """The server's own messages, one byte of one data chunk flipped, fed to the client's
    collector: without the digest check the tensor would be accepted."""
    messages = _messages(server)
    collector = _Collector()
    for m in messages[:-1]:
        assert collector.feed(m) is None  # the tensor is not handed over before its digest
    tensor = _Collector()
    for m in messages[:-1]:
        tensor.feed(m)
    assert tensor.feed(messages[-1]) is not None  # intact: accepted
    middle = messages[len(messages) // 2]
    flipped = bytearray(middle.data.data)
    flipped[1234] ^= 0x01
    middle.data.data = bytes(flipped)
    corrupted = _Collector()
    for m in messages[:-1]:
        corrupted.feed(m)
    with pytest.raises(jaxinit.IntegrityError, match="digest"):
        corrupted.feed(messages[-1])


@contextlib.contextmanager
def _flipping_proxy(upstream_port: int, at: int) -> Iterator[int]:
    """A TCP proxy on loopback that flips one bit of the byte at position ``at`` of each
    connection's answer (server to client); everything else passes unchanged."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flip: bool) -> None:
        seen = 0
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if flip and seen <= at < seen + len(data):
                    data = bytearray(data)
                    data[at - seen] ^= 0x01
                seen += len(data)
                writer.write(bytes(data))
                await writer.drain()
        writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(pipe(client_r, up_w, False), pipe(up_r, client_w, True))

    stop = asyncio.Event()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        await stop.wait()
        server.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:  # connections the client kept alive
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


def test_the_http_client_refuses_a_byte_flipped_on_the_path(server: Any) -> None:
    http_port = int(server.http_url.rsplit(":", 1)[1])
    with _flipping_proxy(http_port, at=300_000) as port:
        url = f"http://127.0.0.1:{port}"
        # Raw bytes (what curl asks for) pass the proxy flipped and unnoticed...
        body = {"initializer": "normal", "shape": [512, 512], "key": {"seed": 4}}
        raw = httpx.post(f"{url}/v1/generate", json=body, timeout=30).content
        expected = np.asarray(jax.nn.initializers.normal()(jax.random.key(4), (512, 512))).tobytes()
        assert len(raw) == len(expected) and raw != expected
        # ...the client asks for the digested form, and refuses the answer.
        with jaxinit.Client(url, retries=0) as client, pytest.raises(jaxinit.IntegrityError, match="digest"):
            client.normal()(4, (512, 512))
    with jaxinit.Client(server.http_url) as client:  # without the proxy: exact
        assert client.normal()(4, (512, 512)).tobytes() == expected


def test_the_http_digest_covers_a_range(server: Any) -> None:
    body = {"initializer": "normal", "shape": [512, 512], "key": {"seed": 4}, "offset": 10, "count": 999}
    response = httpx.post(
        f"{server.http_url}/v1/generate", json=body, timeout=30, headers={"Accept": "application/vnd.jaxinit.tensor"}
    )
    assert response.headers["x-jaxinit-digest-algorithm"] == "xxh3-128"
    data, digest = response.content[:-16], response.content[-16:]
    expected = np.asarray(jax.nn.initializers.normal()(jax.random.key(4), (512, 512))).reshape(-1)[10:1009]
    assert data == expected.tobytes() and xxhash.xxh3_128(data).digest() == digest
    assert int(response.headers["content-length"]) == 999 * 4 + 16
