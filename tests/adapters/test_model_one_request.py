"""A whole model in one HTTP request (``application/vnd.jaxinit.tensors``), in process.

The framed response against local Flax (``model.init`` and ``jax.jit(model.init)``) byte
for byte, beside the gRPC stream and same-host shared memory; ``path=`` writing the
``.safetensors`` file as the bytes arrive (Flax and PyTorch layouts), never leaving a
partial file under its name; a tensor refused mid-model and a stream that fails
mid-model; and a caller that goes away mid-model stopping the server's work.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import httpx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xxhash
from flax.traverse_util import flatten_dict
from flax_models import BLOCK, EXAMPLES, flax_params
from in_process import in_process_server, serve, wait_until

import jaxinit
from helpers import REFETCH_KEYS
from jaxinit._model_file import StreamedFile
from jaxinit.protocol import frames, safetensors, wire
from jaxinit.protocol.errors import InvalidArgument, ServerUnavailable
from jaxinit.protocol.expansion import expand, outputs
from jaxinit_server.core import Limits, Service

SEED = 3


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("shm")
    service = Service(Limits(), workers=2, whole_workers=1, shared_memory_dir=str(root))
    service.ready = True
    try:
        yield service
    finally:
        service.close()


def local(jit: bool) -> dict[str, np.ndarray]:
    """Flax's own init of the block: ``model.init`` or ``jax.jit(model.init)``."""
    if not jit:
        return flax_params("block", "linen", SEED)
    _, linen_cls, _, x = EXAMPLES["block"]
    model = linen_cls()
    tree = jax.jit(model.init)(jax.random.key(SEED), jnp.asarray(x))["params"]
    return {".".join(str(k) for k in path): np.asarray(v) for path, v in flatten_dict(tree).items()}


def torch_layout(flax: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The block's Flax arrays as PyTorch's modules hold them (the expansion's layout)."""
    return {o.name: o.finish(flax[o.param.name]) for o in outputs(expand(BLOCK), "torch")}


def assert_same(got: dict[str, Any], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want) or sorted(got) == sorted(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        assert np.ascontiguousarray(got[name]).tobytes() == np.ascontiguousarray(array).tobytes(), name


class Counted(httpx.AsyncBaseTransport):
    """An ASGI transport that records each request's method, path and Accept."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.seen: list[tuple[str, str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path, request.headers.get("accept", "")))
        return await self.inner.handle_async_request(request)


@pytest.mark.parametrize("jit", [False, True], ids=["init", "jit-init"])
def test_http_one_request_and_grpc_equal_local_flax(service: Service, jit: bool) -> None:
    want = local(jit)

    async def work(grpc_url: str, transport: httpx.ASGITransport) -> None:
        counted = Counted(transport)
        async with jaxinit.AsyncClient("http://in-process", transport=counted, shared_memory=False) as http:
            got = await http.init_model(BLOCK, SEED, flat=True, jit=jit)
        assert counted.seen == [("POST", "/v1/models/init", wire.TENSORS)]  # the whole model: one request
        assert_same(got, want)
        assert got.metadata["jit"] == str(jit).lower() and not got.shared_memory
        async with jaxinit.AsyncClient(grpc_url, shared_memory=False) as grpc:
            assert_same(await grpc.init_model(BLOCK, SEED, flat=True, jit=jit), want)

    serve(service, work)


def test_blocking_client_over_one_request() -> None:
    """The blocking client reads the same framed body (a real socket: a served app)."""
    with in_process_server("--workers", "2") as server, jaxinit.Client(server.http_url, shared_memory=False) as client:
        assert_same(client.init_model(BLOCK, SEED, flat=True), local(False))
        nested = client.init_model(BLOCK, SEED, layout="torch")
        assert_same(nested.flat(), torch_layout(local(False)))


@pytest.mark.parametrize("layout", ["flax", "torch"])
@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_path_writes_the_file_as_bytes_arrive(
    service: Service, tmp_path: pathlib.Path, layout: str, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is local Flax's bytes (PyTorch's layout: transposed by the server, one tensor
    at a time), byte for byte what writing the finished model would give; the arrays
    returned are a private mapping of it; no temporary file is left beside it."""
    flax = local(False)
    want = flax if layout == "flax" else torch_layout(flax)
    path = tmp_path / f"{transport}-{layout}.safetensors"
    finished: list[Any] = []
    finish = StreamedFile.finish

    def spy(self: StreamedFile, *args: Any) -> Any:
        finished.append(finish(self, *args))
        return finished[-1]

    monkeypatch.setattr(StreamedFile, "finish", spy)

    async def work(grpc_url: str, transport_: httpx.ASGITransport) -> None:
        url, kwargs = (grpc_url, {}) if transport == "grpc" else ("http://in-process", {"transport": transport_})
        async with jaxinit.AsyncClient(url, shared_memory=False, **kwargs) as client:
            got = await client.init_model(BLOCK, SEED, flat=True, layout=layout, path=path)
        assert_same(got, want)
        data = path.read_bytes()
        arrays, metadata = safetensors.loads(data)
        assert data == safetensors.dumps(dict(got), metadata)  # as the in-memory writer writes it
        assert_same(arrays, want)
        # The file carries its provenance, and its request and digests for jaxinit verify.
        assert {k: v for k, v in metadata.items() if k not in REFETCH_KEYS} == got.metadata
        assert metadata["layout"] == layout
        # the protocol's digest, of the bytes as written
        assert json.loads(metadata["digests.xxh3-128"]) == {
            name: xxhash.xxh3_128(np.ascontiguousarray(np.asarray(a)).tobytes()).hexdigest() for name, a in want.items()
        }
        assert finished and all(f is not None for f in finished)  # written as the bytes arrived, not whole
        first = next(iter(got))
        got[first][...] = 0  # copy-on-write: the file keeps its bytes
        assert path.read_bytes() == data

    serve(service, work)
    assert os.listdir(tmp_path) == [path.name]


def test_path_with_the_safetensors_package(service: Service, tmp_path: pathlib.Path) -> None:
    """The streamed file reads back with the safetensors package itself (and torch)."""
    st = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "block.safetensors"

    async def work(grpc_url: str, transport: httpx.ASGITransport) -> None:
        async with jaxinit.AsyncClient("http://in-process", transport=transport, shared_memory=False) as client:
            await client.init_model(BLOCK, SEED, flat=True, path=path)

    serve(service, work)
    assert_same(st.load_file(str(path)), local(False))


@pytest.mark.parametrize("path", [False, True], ids=["memory", "path"])
def test_a_whole_model_through_shared_memory(service: Service, tmp_path: pathlib.Path, path: bool) -> None:
    """A same-host caller gets every tensor through shared memory over the one HTTP request
    (and over gRPC), exact; with ``path=`` each region is copied into the file."""
    want = local(True)
    target = tmp_path / "shm.safetensors" if path else None

    async def work(grpc_url: str, transport: httpx.ASGITransport) -> None:
        for url, kwargs in (("http://in-process", {"transport": transport}), (grpc_url, {})):
            async with jaxinit.AsyncClient(url, shared_memory=True, **kwargs) as client:
                got = await client.init_model(BLOCK, SEED, flat=True, jit=True, path=target)
            assert got.shared_memory, url
            assert_same(got, want)
            if target is not None:
                assert_same(safetensors.loads(target.read_bytes())[0], want)

    serve(service, work)
    assert service.regions is not None and service.regions.state()["unclaimed"] == 0


def test_a_refused_token_falls_back_to_the_stream(service: Service) -> None:
    async def work(grpc_url: str, transport: httpx.ASGITransport) -> None:
        async with jaxinit.AsyncClient("http://in-process", transport=transport, shared_memory=True) as client:
            shared = client._transport.shared
            shared.discover(service.describe())
            assert shared.token is not None
            shared.token = "0" * 64  # another replica's, say
            got = await client.init_model(BLOCK, SEED, flat=True)
        assert not got.shared_memory
        assert_same(got, local(False))

    serve(service, work)


def _failing(service: Service, name: str, error: Exception, monkeypatch: pytest.MonkeyPatch) -> None:
    """``service`` failing the model tensor ``name`` with ``error`` once its header is due."""
    generate = service.generate

    async def failing(resolved: Any, **kwargs: Any) -> Any:
        output = kwargs.get("output")
        if output is not None and output.name == name:
            raise error
        return await generate(resolved, **kwargs)

    monkeypatch.setattr(service, "generate", failing)


def test_a_tensor_refused_mid_model_is_a_clear_error(
    service: Service, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error frame in the tensor's place: the client raises it, naming the tensor, and
    removes the partial file; the raw body shows the tensors around it still came."""
    _failing(service, "Dense_1.kernel", InvalidArgument("refused by the test"), monkeypatch)
    path = tmp_path / "m.safetensors"

    async def work(grpc_url: str, transport: httpx.ASGITransport) -> None:
        for url, kwargs in (("http://in-process", {"transport": transport}), (grpc_url, {})):
            async with jaxinit.AsyncClient(url, shared_memory=False, **kwargs) as client:
                with pytest.raises(InvalidArgument, match=r"Dense_1\.kernel: refused by the test"):
                    await client.init_model(BLOCK, SEED, path=path)
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as raw:
            body = {"model": BLOCK, "key": {"seed": SEED}}
            response = await raw.post("/v1/models/init", json=body, headers={"Accept": wire.TENSORS})
        assert response.status_code == 200
        seen = [(kind, bytes(p)) for kind, p in frames.FrameReader().feed(response.content) if kind != frames.DATA]
        errors = [frames.json_payload(kind, p) for kind, p in seen if kind == frames.ERROR]
        assert errors == [
            {
                "name": "Dense_1.kernel",
                "code": "INVALID_ARGUMENT",
                "type": "InvalidArgument",
                "message": "refused by the test",
            }
        ]
        headers = [frames.json_payload(kind, p)["name"] for kind, p in seen if kind == frames.HEADER]
        assert "Dense_1.bias" in headers and "head.kernel" in headers  # the others follow
        assert seen[-1] == (frames.END, b"")

    serve(service, work)
    assert os.listdir(tmp_path) == []


def test_a_stream_that_fails_mid_model_ends_with_its_error(
    service: Service, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure that ends the stream after its status line comes as the end frame's error:
    retryable (ServerUnavailable) errors are retried, then raised; no file is left."""
    _failing(service, "Dense_0.kernel", ServerUnavailable("the test stops this server"), monkeypatch)
    path = tmp_path / "m.safetensors"

    async def work(grpc_url: str, transport: httpx.ASGITransport) -> None:
        async with jaxinit.AsyncClient(
            "http://in-process", transport=transport, shared_memory=False, retries=1, retry_backoff=0
        ) as client:
            with pytest.raises(ServerUnavailable, match="Dense_0.kernel: the test stops this server"):
                await client.init_model(BLOCK, SEED, path=path)

    serve(service, work)
    assert os.listdir(tmp_path) == []


def test_a_caller_gone_mid_model_stops_the_server_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller that reads one frame and closes the connection: the server stops making the
    model's tensors (none is made after it is gone) and gives its capacity back."""
    big = jaxinit.models.raw(
        *({"path": f"layer_{i}.kernel", "initializer": "normal", "shape": [1024, 1024]} for i in range(64))
    )
    with in_process_server("--workers", "2") as server:
        made: list[str] = []
        generate = server.service.generate

        async def counting(resolved: Any, **kwargs: Any) -> Any:
            made.append(kwargs["output"].name if kwargs.get("output") is not None else "")
            return await generate(resolved, **kwargs)

        monkeypatch.setattr(server.service, "generate", counting)
        with httpx.Client(base_url=server.http_url, timeout=60) as raw:
            body = {"model": big, "key": {"seed": 1}}
            with raw.stream("POST", "/v1/models/init", json=body, headers={"Accept": wire.TENSORS}) as response:
                assert response.status_code == 200
                reader = frames.FrameReader()
                for data in response.iter_raw():
                    if any(kind == frames.HEADER for kind, _ in reader.feed(data)):
                        break
        wait_until(lambda: server.service.admission.streams == 0, "the model's capacity given back")
        # Made: the tensors sent and the two made ahead of them, not the model's 64.
        assert len(made) < 64, len(made)


def test_a_server_without_the_framed_answer_is_asked_tensor_by_tensor(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older server answers the framed media type with 406: the client then asks for the
    plan and each tensor (1 + N requests), with the same bytes."""
    from jaxinit_server.rest.routes import models as route

    monkeypatch.setattr(route, "MODEL_MEDIA_TYPES", (wire.SAFETENSORS, wire.NPZ, wire.JSON))

    async def work(grpc_url: str, transport: httpx.ASGITransport) -> None:
        counted = Counted(transport)
        async with jaxinit.AsyncClient("http://in-process", transport=counted, shared_memory=False) as http:
            got = await http.init_model(BLOCK, SEED, flat=True)
        assert_same(got, local(False))
        paths = [path for _, path, _ in counted.seen]
        assert paths[:2] == ["/v1/models/init", "/v1/models/init"] and len(paths) == 2 + len(got)

    serve(service, work)
