"""Every bad input gets a clear error: 4xx / the right gRPC code, never a 500 or a hang."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import jax
import numpy as np
import pytest

import jaxinit
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc

# (JSON body, HTTP status, gRPC code, error type, text the message must contain)
BAD: list[tuple[dict[str, Any], int, str, str, str]] = [
    (
        {"initializer": "lecun_nromal", "shape": [2, 2], "key": {"seed": 0}},
        404,
        "NOT_FOUND",
        "UnknownInitializer",
        "unknown initializer 'lecun_nromal'",
    ),
    (
        {"initializer": "normal", "shape": [2], "dtype": "float128", "key": {"seed": 0}},
        400,
        "INVALID_ARGUMENT",
        "UnknownDtype",
        "unknown dtype 'float128'",
    ),
    (
        {"initializer": "normal", "shape": [2, -1], "key": {"seed": 0}},
        400,
        "INVALID_ARGUMENT",
        "InvalidArgument",
        "non-negative",
    ),
    (
        {"initializer": "normal", "shape": [2], "args": {"sigma": 1}, "key": {"seed": 0}},
        400,
        "INVALID_ARGUMENT",
        "InvalidArgument",
        "unexpected argument(s) ['sigma']",
    ),
    (
        {"initializer": "normal", "shape": [2], "args": {"stddev": "big"}, "key": {"seed": 0}},
        400,
        "INVALID_ARGUMENT",
        "InvalidArgument",
        "'stddev' must be a number",
    ),
    (
        {
            "initializer": "variance_scaling",
            "shape": [2, 2],
            "args": {"scale": 1, "mode": "fan_sideways", "distribution": "normal"},
            "key": {"seed": 0},
        },
        400,
        "INVALID_ARGUMENT",
        "InvalidArgument",
        "'mode' must be one of",
    ),
    (
        {"initializer": "variance_scaling", "shape": [2, 2], "args": {"scale": 1}, "key": {"seed": 0}},
        400,
        "INVALID_ARGUMENT",
        "InvalidArgument",
        "missing required argument 'mode'",
    ),
    (
        {"initializer": "zeros", "shape": [2], "args": {"value": 1}},
        400,
        "INVALID_ARGUMENT",
        "InvalidArgument",
        "takes no arguments",
    ),
    ({"initializer": "normal", "shape": [2]}, 400, "INVALID_ARGUMENT", "InvalidArgument", "normal needs a key"),
    (
        {"initializer": "normal", "shape": [2], "key": {"data": [1, 2, 3]}},
        400,
        "INVALID_ARGUMENT",
        "InvalidArgument",
        "threefry2x32 key data must be 2 uint32 words",
    ),
    (
        {"initializer": "normal", "shape": [2], "key": {"data": [1, 2**32]}},
        400,
        "INVALID_ARGUMENT",
        "InvalidArgument",
        "uint32 words",
    ),
    (
        {"initializer": "normal", "shape": [2], "key": {"seed": 1, "impl": "philox"}},
        400,
        "INVALID_ARGUMENT",
        "InvalidArgument",
        "unknown key implementation 'philox'",
    ),
    (
        {"initializer": "normal", "shape": [2], "key": {"seed": 2**63}},
        400,
        "INVALID_ARGUMENT",
        "InvalidArgument",
        "does not fit in int64",
    ),
    (
        {"initializer": "normal", "shape": [2], "key": {"seed": 1, "data": [1, 2]}},
        400,
        "INVALID_ARGUMENT",
        "InvalidArgument",
        "exactly one of a seed or key data",
    ),
    (
        {"initializer": "normal", "shape": [2], "dtype": "float64", "key": {"seed": 0}, "prng": {"enable_x64": False}},
        400,
        "INVALID_ARGUMENT",
        "InvalidArgument",
        "needs enable_x64=true",
    ),
    (
        {"initializer": "normal", "shape": [2], "dtype": "int32", "key": {"seed": 0}},
        400,
        "INVALID_ARGUMENT",
        "JaxError",
        "must be a float or complex dtype",
    ),
    (
        {"initializer": "orthogonal", "shape": [3, 3], "args": {"column_axis": 5}, "key": {"seed": 0}},
        400,
        "INVALID_ARGUMENT",
        "JaxError",
        "",
    ),
    (
        {"initializer": "normal", "shape": [2**20, 2**20], "key": {"seed": 0}},
        413,
        "RESOURCE_EXHAUSTED",
        "TooLarge",
        "this server's limit",
    ),
    (
        {"initializer": "normal", "shape": list(range(1, 70)), "key": {"seed": 0}},
        400,
        "INVALID_ARGUMENT",
        "InvalidArgument",
        "at most 64 dimensions",
    ),
]


def _ids() -> list[str]:
    return [f"{b[3]}-{i}" for i, b in enumerate(BAD)]


def _proto(body: dict[str, Any]) -> pb.GenerateRequest:
    from jaxinit._grpc import value_to_proto

    message = pb.GenerateRequest(
        initializer=body["initializer"],
        shape=body["shape"],
        dtype=body.get("dtype", ""),
        args={k: value_to_proto(v) for k, v in body.get("args", {}).items()},
    )
    key = body.get("key")
    if key is not None:
        if "seed" in key and "data" in key:
            pytest.skip("a oneof cannot carry both a seed and key data: the gRPC schema refuses it")
        if "seed" in key:
            if key["seed"] >= 2**63:
                pytest.skip("an int64 field cannot carry this seed: the gRPC schema refuses it")
            message.key.seed = key["seed"]
        if "data" in key:
            if any(w >= 2**32 for w in key["data"]):
                pytest.skip("a uint32 field cannot carry this word: the gRPC schema refuses it")
            message.key.data.words.extend(key["data"])
        message.key.impl = key.get("impl", "")
    for name, value in body.get("prng", {}).items():
        setattr(message.prng, name, value)
    return message


@pytest.mark.parametrize("case", BAD, ids=_ids())
def test_rest_errors(server: Any, case: tuple[Any, ...]) -> None:
    body, status, code, type_name, text = case
    response = httpx.post(f"{server.http_url}/v1/generate", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["type"]) == (code, type_name)
    assert text in error["message"]
    assert "Traceback" not in error["message"]


@pytest.mark.parametrize("case", BAD, ids=_ids())
def test_grpc_errors(server: Any, case: tuple[Any, ...]) -> None:
    body, status, code, type_name, text = case
    message = _proto(body)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.InitializersStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Generate(message, timeout=60))
    assert info.value.code() == grpc.StatusCode[code]
    assert text in info.value.details()
    assert dict(info.value.trailing_metadata())["jaxinit-error-type"] == type_name


@pytest.mark.parametrize("case", BAD, ids=_ids())
def test_generate_many_keeps_going_past_a_bad_item(server: Any, case: tuple[Any, ...]) -> None:
    """In a stream of many, the bad item gets its error in the stream; the others arrive."""
    body, _, code, type_name, text = case

    def good() -> pb.GenerateRequest:
        return pb.GenerateRequest(initializer="lecun_normal", shape=[3, 4], key=pb.Key(seed=1))

    messages = [good(), _proto(body), good()]
    for i, m in enumerate(messages):
        m.request_id = f"r{i}"
    with grpc.insecure_channel(server.grpc_target) as channel:
        chunks = list(pb_grpc.InitializersStub(channel).GenerateMany(iter(messages), timeout=60))
    errors = [c for c in chunks if c.WhichOneof("payload") == "error"]
    assert [(e.request_id, e.error.code, e.error.type) for e in errors] == [("r1", code, type_name)]
    assert text in errors[0].error.message
    headers = [c.request_id for c in chunks if c.WhichOneof("payload") == "header"]
    assert headers == ["r0", "r2"]


def test_jax_error_message_is_jaxs_verbatim(url: str) -> None:
    """A variance-scaling initializer on a 1-D bias shape: the user reads JAX's own words."""
    try:
        jax.nn.initializers.lecun_normal()(jax.random.key(0), (16,))
    except ValueError as exc:
        expected = str(exc)
    with jaxinit.Client(url) as client, pytest.raises(jaxinit.JaxError) as info:
        client.lecun_normal()(0, (16,))
    assert info.value.message == expected


def test_oversize_is_refused_before_any_work(url: str) -> None:
    with jaxinit.Client(url) as client, pytest.raises(jaxinit.TooLarge):
        client.zeros(0, (2**40,), "int8")


def test_rest_bad_json_and_bad_types(server: Any) -> None:
    base = f"{server.http_url}/v1/generate"
    cases = [
        httpx.post(base, content=b"{not json", headers={"content-type": "application/json"}),
        httpx.post(base, json={"initializer": "normal", "shape": [1.5], "key": {"seed": 0}}),
        httpx.post(base, json={"initializer": "normal", "shape": [True], "key": {"seed": 0}}),
        httpx.post(base, json={"initializer": "normal", "shape": "3,4", "key": {"seed": 0}}),
        httpx.post(base, json={"initializer": "normal", "shape": [3], "key": {"seed": "7"}}),
        httpx.post(base, json={"initializer": "normal", "shape": [3], "unknown": 1}),
        httpx.post(base, json=[1, 2, 3]),
        httpx.get(f"{server.http_url}/v1/generate/normal", params={"shape": "3,x", "seed": 0}),
        httpx.get(f"{server.http_url}/v1/generate/normal", params={"shape": "3", "seed": "abc"}),
    ]
    for response in cases:
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "INVALID_ARGUMENT"


def test_body_without_json_content_type_says_so(server: Any) -> None:
    body = b'{"initializer": "zeros", "shape": [2]}'
    response = httpx.post(
        f"{server.http_url}/v1/generate", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 400
    assert "Content-Type: application/json" in response.json()["error"]["message"]


def test_not_acceptable_and_json_cap(server: Any) -> None:
    body = {"initializer": "normal", "shape": [4], "key": {"seed": 0}}
    response = httpx.post(f"{server.http_url}/v1/generate", json=body, headers={"Accept": "text/html"})
    assert response.status_code == 406
    assert response.json()["error"]["type"] == "NotAcceptable"
    big = {"initializer": "zeros", "shape": [2**21]}
    response = httpx.post(f"{server.http_url}/v1/generate", json=big, headers={"Accept": "application/json"})
    assert response.status_code == 413
    assert "application/octet-stream" in response.json()["error"]["message"]


def test_unknown_path_is_a_json_404(server: Any) -> None:
    response = httpx.get(f"{server.http_url}/v1/nothing")
    assert response.status_code == 404


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_server_down_is_a_clear_error(scheme: str) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        jaxinit.Client(f"{scheme}://127.0.0.1:{port}", timeout=10) as client,
        pytest.raises(jaxinit.ServerUnavailable, match=f"127.0.0.1:{port}"),
    ):
        client.zeros(0, (2,))


def test_client_side_mistakes_are_caught_before_sending(url: str) -> None:
    with jaxinit.Client(url) as client:
        with pytest.raises(jaxinit.InvalidArgument, match=r"lecun_normal\(\)\(key, shape\)"):
            client.lecun_normal(42, (784, 256))
        with pytest.raises(jaxinit.InvalidArgument, match=r"normal\(\)\(key, shape\)"):
            client.normal(jax.random.key(0), (3, 3))
        with pytest.raises(jaxinit.InvalidArgument, match="not an array"):
            np.asarray(client.normal())
        with pytest.raises(AttributeError, match="Did you mean lecun_normal"):
            client.lecun_nromal  # noqa: B018
        with pytest.raises(jaxinit.UnknownDtype):
            client.normal()(0, (2,), "float128")
        with pytest.raises(jaxinit.InvalidArgument, match="shape"):
            client.normal()(0, 5)
        with pytest.raises(jaxinit.InvalidArgument, match="key"):
            client.normal()("seed", (2,))
        with pytest.raises(jaxinit.InvalidArgument, match="uint32 array of shape"):
            client.normal()(np.zeros(4, np.uint32), (2,))
