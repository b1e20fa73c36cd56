"""The service facade, in process: what it describes, how it names answers (ETag,
provenance), what it admits and refuses, and tensors and models streamed from it with
local JAX's bytes. Only routes that run in this process (chunked, fill); the whole-tensor
pool is test_whole.py's."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import pytest
from flax_models import EXAMPLES, flax_params

from helpers import local_jax
from jaxinit import models as m
from jaxinit.protocol.catalog import CATALOG
from jaxinit.protocol.codec import DTYPE_NAMES
from jaxinit.protocol.digest import new_hasher
from jaxinit.protocol.errors import JaxError, Overloaded, PermissionDenied, ServerUnavailable
from jaxinit.protocol.keys import KEY_IMPLS, Key
from jaxinit_server.core import GenerateParams, InitModelParams, Limits, Service, TensorStream, engine
from jaxinit_server.core.request import resolve


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    svc = Service(Limits(), whole_workers=1, cache_bytes=0)  # no warm_up: no worker process starts
    try:
        yield svc
    finally:
        svc.close()


def _sent(stream: TensorStream, chunk_bytes: int = 4096) -> bytes:
    async def collect() -> bytes:
        parts = []
        async for offset, data in stream.chunks(chunk_bytes):
            assert offset == sum(len(p) for p in parts)
            parts.append(bytes(data))
        return b"".join(parts)

    return asyncio.run(collect())


def _generate(service: Service, params: GenerateParams, **kwargs: Any) -> TensorStream:
    resolved = service.prepare(params)

    async def go() -> TensorStream:
        return await service.generate(resolved, **kwargs)

    return asyncio.run(go())


def test_describe_is_the_catalog_dtypes_keys_and_this_jax(service: Service) -> None:
    described = service.describe()
    assert [i["name"] for i in described["initializers"]] == list(CATALOG)
    normal = next(i for i in described["initializers"] if i["name"] == "normal")
    assert normal["arguments"][0] == {
        "name": "stddev",
        "type": "float",
        "required": False,
        "default_json": "0.01",
        "choices": [],
        "doc": "standard deviation",
    }
    assert described["dtypes"] == list(DTYPE_NAMES) and described["key_impls"] == list(KEY_IMPLS)
    server = described["server"]
    assert server["jax_version"] == jax.__version__ and server["backend"] == jax.default_backend()
    assert server["enable_x64"] == bool(jax.config.jax_enable_x64)
    assert described["shared_memory"] is None
    json.dumps(described)  # plain data, as REST and gRPC send it


def test_prepare_resolves_with_this_jaxs_defaults(service: Service) -> None:
    params = GenerateParams("normal", (3, 4), key=Key(seed=1))
    assert service.prepare(params).resolved == resolve(params, service.limits, service.identity.defaults)


def test_the_etag_names_the_request_on_this_jax(service: Service) -> None:
    one = service.prepare(GenerateParams("normal", (3, 4), key=Key(seed=1)))
    tag = service.etag(one)
    text = f"{one.resolved.canonical}\n{service.identity.fingerprint}"
    assert tag == '"' + hashlib.sha256(text.encode()).hexdigest()[:40] + '"'
    assert service.etag(service.prepare(GenerateParams("normal", (3, 4), key=Key(seed=1), request_id="x"))) == tag
    assert service.etag(service.prepare(GenerateParams("normal", (3, 4), key=Key(seed=2)))) != tag


def test_no_shared_memory_without_a_directory(service: Service) -> None:
    with pytest.raises(PermissionDenied, match="offers no shared memory"):
        service.shared_memory("any token")


@pytest.mark.parametrize(
    ("name", "shape", "args", "dtype", "route"),
    [
        ("normal", (300, 200), {}, "float32", engine.CHUNKED),
        ("lecun_normal", (64, 48), {}, "bfloat16", engine.CHUNKED),
        ("zeros", (10, 3), {}, "int8", engine.FILL),
        ("constant", (4, 6), {"value": [1.5, 2, 3, 4, 5, 6]}, None, engine.FILL),
        ("normal", (0, 7), {}, "float32", engine.EMPTY),
    ],
)
def test_a_tensor_is_local_jaxs_bytes_with_its_provenance(
    service: Service, name: str, shape: tuple[int, ...], args: dict, dtype: str | None, route: str
) -> None:
    params = GenerateParams(name, shape, args=args, dtype=dtype, key=Key(seed=7))
    resolved = service.prepare(params).resolved
    assert engine.route(resolved) == route
    stream = _generate(service, params)
    data = _sent(stream, chunk_bytes=1000)
    expected = local_jax(name, args, 7, shape, dtype)
    assert isinstance(expected, np.ndarray)
    assert data == expected.tobytes()
    hasher = new_hasher()
    hasher.update(data)
    assert stream.digest() == hasher.digest()
    p = stream.provenance
    assert (p.canonical_request, p.request_digest) == (resolved.canonical, resolved.digest)
    assert (p.jax_version, p.backend) == (jax.__version__, jax.default_backend())
    if CATALOG[name].uses_key:
        assert p.key_impl == "threefry2x32"
        assert p.key_data == tuple(np.asarray(jax.random.key_data(jax.random.key(7))).tolist())
    else:
        assert (p.key_impl, p.key_data) == ("", ())
    assert stream.cache == "none"  # this service keeps nothing
    assert service.idle and service.admission.bytes == 0  # the capacity came back with the last byte


def test_a_range_is_its_slice_of_the_tensor(service: Service) -> None:
    whole = local_jax("normal", {}, 3, (100, 50), None)
    assert isinstance(whole, np.ndarray)
    stream = _generate(service, GenerateParams("normal", (100, 50), key=Key(seed=3), offset=1234, count=2000))
    assert stream.sent_shape == (2000,)
    assert _sent(stream) == whole.reshape(-1)[1234:3234].tobytes()


def test_an_identical_request_repeated_comes_from_the_cache_with_the_same_bytes() -> None:
    svc = Service(Limits(), whole_workers=1)
    try:
        params = GenerateParams("normal", (256, 64), key=Key(seed=9))
        resolved = svc.prepare(params)

        async def twice() -> list[tuple[str, bytes]]:
            out = []
            for _ in range(2):
                stream = await svc.generate(resolved)
                out.append((stream.cache, (await stream.array()).tobytes()))
            return out

        (first, made), (second, again) = asyncio.run(twice())
        assert (first, second) == ("miss", "hit")
        assert made == again
        assert svc.idle
    finally:
        svc.close()


def test_over_the_servers_streams_a_request_is_overloaded_at_once() -> None:
    svc = Service(Limits(max_streams=1), whole_workers=1, cache_bytes=0)
    try:
        resolved = svc.prepare(GenerateParams("normal", (8,), key=Key(seed=0)))
        ticket = svc.admit(resolved)
        with pytest.raises(Overloaded) as info:
            svc.admit(resolved)
        assert info.value.retry_after is not None
        ticket.release()
        svc.admit(resolved).release()
        assert svc.state()["admission"]["streams"] == 0
    finally:
        svc.close()


def test_one_caller_is_held_to_its_share_and_others_go_on() -> None:
    svc = Service(Limits(max_caller_streams=1), whole_workers=1, cache_bytes=0)
    try:
        resolved = svc.prepare(GenerateParams("normal", (8,), key=Key(seed=0)))
        held = svc.admit(resolved, caller="a")
        with pytest.raises(Overloaded, match="this caller"):
            svc.admit(resolved, caller="a")
        other = svc.admit(resolved, caller="b")
        assert svc.state()["admission"]["callers"] == 2
        held.release()
        other.release()
        assert svc.idle
    finally:
        svc.close()


def test_a_stopping_service_refuses_new_work_and_an_aborted_one_cuts_off_streams() -> None:
    svc = Service(Limits(), whole_workers=1, cache_bytes=0)
    try:
        svc.ready = True
        params = GenerateParams("normal", (64, 64), key=Key(seed=0))
        in_flight = _generate(svc, params)
        svc.stop_accepting()
        assert (svc.ready, svc.state()["ready"]) == (False, False)
        with pytest.raises(ServerUnavailable, match="shutting down"):
            svc.admit(svc.prepare(params))
        svc.abort()
        with pytest.raises(ServerUnavailable):
            _sent(in_flight)
        assert svc.idle  # the cut-off stream gave its capacity back
    finally:
        svc.close()


def test_state_shows_the_pools_and_the_caps(service: Service) -> None:
    state = service.state()
    assert set(state) == {
        "ready",
        "whole_tensor_workers",
        "chunking",
        "stalled_readers_disconnected",
        "results",
        "shared_memory",
        "admission",
    }
    assert state["whole_tensor_workers"]["size"] == 1
    assert state["admission"]["max_streams"] == service.limits.max_streams
    json.dumps(state)


MODEL = m.Module(m.Dense(4, 8), m.Dense(8, 3, bias_init="ones"))


def test_a_model_streams_flax_linens_values() -> None:
    svc = Service(Limits(), whole_workers=1, cache_bytes=0)
    try:

        async def stream() -> dict[str, bytes]:
            model = await svc.prepare_model(InitModelParams(EXAMPLES["mlp"][0], Key(seed=0)))
            await svc.check_model(model)
            ticket = svc.admit_model(model)
            out = {}
            async for name, tensor in svc.generate_model(model, ticket=ticket):
                assert isinstance(tensor, TensorStream)
                out[name] = (await tensor.array()).tobytes()
            return out

        got = asyncio.run(stream())
        want = {name: array.tobytes() for name, array in flax_params("mlp", "linen", 0).items()}
        assert got == want
        assert svc.idle
    finally:
        svc.close()


def test_a_model_jax_would_refuse_is_refused_before_any_byte(service: Service) -> None:
    async def check() -> None:
        model = await service.prepare_model(InitModelParams(m.Dense(3, 2, bias_init="orthogonal"), Key(seed=0)))
        await service.check_model(model)

    with pytest.raises(JaxError, match=r"^bias: orthogonal initializer requires at least a 2D shape"):
        asyncio.run(check())
    assert service.idle


def test_model_file_metadata_says_what_made_it(service: Service) -> None:
    async def prepare() -> Any:
        return await service.prepare_model(InitModelParams(MODEL, Key(seed=5), layout="torch"))

    model = asyncio.run(prepare())
    metadata = service.model_metadata(model)
    assert metadata["format"] == "pt" and metadata["layout"] == "torch" and metadata["mode"] == "linen"
    assert json.loads(metadata["root_key"]) == {"seed": 5, "impl": "threefry2x32"}
    assert metadata["model_digest"] == model.digest and metadata["jax_version"] == jax.__version__
    assert all(isinstance(v, str) for v in metadata.values())
