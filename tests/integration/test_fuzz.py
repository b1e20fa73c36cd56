"""Fuzzing both APIs, bounded: schemathesis against the served OpenAPI document (every
operation and method; no 5xx, every response as documented), hypothesis-made and
hand-made gRPC messages (wrong types, huge repeated fields, negative or overflowing dims,
NaN/inf arguments, unknown names, bytes that do not parse). Every answer is a result or
a 4xx-class refusal, never INTERNAL/UNKNOWN; the server stays up.

Against the shared server (default caps): arithmetic edge cases (dimensions, offsets and
counts near 2**31, 2**32, 2**61-2**64, 0-size tensors whose other dimensions are huge) over
REST and gRPC, equal to local JAX where small, refused alike on both APIs otherwise; raw
model descriptions near the caps (thousands of parameters, paths past 64 components, names
past 256 characters). After every example the server is alive and logged no error.

JAXINIT_FUZZ_EXAMPLES sets the budget: a short run in the default tiers (15, so that a cold
run, which compiles a program for each new shape it checks against local JAX, stays short);
the release tier runs these fuzzers again with 40 (test_fuzz_full.py), and so does CI."""

from __future__ import annotations

import json
import math
import os
import pathlib
import random
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from in_process import InProcessServer, in_process_server

from helpers import local_jax
from jaxinit._grpc import ERROR_TYPE_KEY
from jaxinit.protocol.catalog import CATALOG
from jaxinit.protocol.codec import DTYPE_NAMES, DTYPES
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc

EXAMPLES = int(os.environ.get("JAXINIT_FUZZ_EXAMPLES", "15"))
# The release tier's budget (schemathesis here, and test_fuzz_full.py).
RELEASE_EXAMPLES = int(os.environ.get("JAXINIT_FUZZ_EXAMPLES", "40"))
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[InProcessServer]:
    # Small caps, so that what passes validation is cheap to generate.
    with in_process_server(
        "--no-request-log",
        "--max-tensor-bytes",
        str(2**20),
        "--max-model-bytes",
        str(4 * 2**20),
        "--max-body-bytes",
        str(2**20),
    ) as srv:
        yield srv
    # Nothing the fuzzers sent made the server log an error, to the end of its drain.
    assert not [line for line in srv.output if " ERROR " in line or "Traceback" in line], "".join(srv.output)


@pytest.mark.release
def test_schemathesis_finds_nothing(fuzzed: InProcessServer, tmp_path: pathlib.Path) -> None:
    tool = pathlib.Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [
            str(tool),
            "run",
            f"{fuzzed.http_url}/openapi.json",
            "--checks",
            "all",
            # A description or a request can match the schema and still not make sense (an
            # empty model, a KServe request without inputs): a 400 there is right.
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            str(max(5, RELEASE_EXAMPLES // 4)),
            "--seed",
            "20261122",
            "--workers",
            "1",
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failures" not in result.stdout.split("SUMMARY")[-1].lower()


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**63), 2**63 - 1),
)
values = st.one_of(
    numbers.map(lambda x: pb.Value(float_value=x) if isinstance(x, float) else pb.Value(int_value=x)),
    st.text(max_size=20).map(lambda s: pb.Value(string_value=s)),
    st.booleans().map(lambda b: pb.Value(bool_value=b)),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=300).map(lambda v: pb.Value(int_list=pb.IntList(values=v))),
    st.just(pb.Value(null_value=True)),
    st.just(pb.Value(list_value=pb.NestedList(items=[pb.Value(float_value=math.nan)] * 3))),
)
arg_names = st.sampled_from(
    [
        "scale",
        "mode",
        "distribution",
        "in_axis",
        "out_axis",
        "batch_axis",
        "stddev",
        "lower",
        "upper",
        "value",
        "dtype",
        "column_axis",
        "bogus",
        "",
    ]
)
requests = st.builds(
    pb.GenerateRequest,
    request_id=st.text(max_size=8),
    initializer=st.one_of(st.sampled_from(sorted(CATALOG)), st.text(max_size=12)),
    args=st.dictionaries(arg_names, values, max_size=4),
    shape=st.lists(st.one_of(st.integers(-3, 70), st.integers(-(2**63), 2**63 - 1)), max_size=70),
    dtype=st.one_of(
        st.sampled_from(DTYPE_NAMES), st.sampled_from(["", "float128", "int4", "Float32"]), st.text(max_size=8)
    ),
    key=st.one_of(
        st.builds(
            pb.Key,
            seed=st.integers(-(2**63), 2**63 - 1),
            impl=st.sampled_from(["", "threefry2x32", "rbg", "philox4x32", "nope"]),
            fold_in=st.lists(st.integers(0, 2**32 - 1), max_size=100),
        ),
        st.builds(
            pb.Key,
            data=st.builds(pb.KeyData, words=st.lists(st.integers(0, 2**32 - 1), max_size=9)),
            impl=st.sampled_from(["", "threefry2x32", "rbg", "unsafe_rbg", "threefry4x32"]),
        ),
    ),
    offset=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    count=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(message=requests)
def test_grpc_generate_answers_or_refuses_cleanly(fuzzed: InProcessServer, message: pb.GenerateRequest) -> None:
    with grpc.insecure_channel(fuzzed.grpc_target) as channel:
        try:
            list(pb_grpc.InitializersStub(channel).Generate(message, timeout=60))
        except grpc.RpcError as exc:
            assert exc.code() in REFUSALS, (exc.code(), exc.details(), message)
            assert "Traceback" not in (exc.details() or "")


@settings(max_examples=max(5, EXAMPLES // 4), deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(batch=st.lists(requests, min_size=1, max_size=5))
def test_grpc_generate_many_answers_every_item(fuzzed: InProcessServer, batch: list[pb.GenerateRequest]) -> None:
    """One answer per item, a tensor or an error, in order; a bad item never ends the stream."""
    for i, message in enumerate(batch):
        message.request_id = f"r{i}"
    with grpc.insecure_channel(fuzzed.grpc_target) as channel:
        answers = list(pb_grpc.InitializersStub(channel).GenerateMany(iter(batch), timeout=120))
    ends = [a.request_id for a in answers if a.WhichOneof("payload") in ("error", "digest")]
    assert ends == [f"r{i}" for i in range(len(batch))]
    codes = {a.error.code for a in answers if a.WhichOneof("payload") == "error"}
    assert codes <= {c.name for c in REFUSALS}, codes


def test_hand_made_malformed_messages(fuzzed: InProcessServer) -> None:
    garbage = [b"\x0a\xff\xff\xff\xff\x0f", b"\xff" * 64, b"\x22\x05\x01\x02", bytes(range(256))]
    with grpc.insecure_channel(fuzzed.grpc_target) as channel:
        for method in ("Generate", "InitModel"):
            raw = channel.unary_stream(
                f"/jaxinit.v1.Initializers/{method}", request_serializer=bytes, response_deserializer=bytes
            )
            for blob in garbage:
                with pytest.raises(grpc.RpcError) as caught:
                    list(raw(blob, timeout=10))
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        # In a stream: the bad message gets its error there, the good ones still arrive.
        many = channel.stream_stream(
            "/jaxinit.v1.Initializers/GenerateMany",
            request_serializer=bytes,
            response_deserializer=pb.TensorChunk.FromString,
        )
        good = pb.GenerateRequest(request_id="ok", initializer="zeros", shape=[3]).SerializeToString()
        answers = list(many(iter([good, garbage[0], good]), timeout=30))
        kinds = [(a.request_id, a.WhichOneof("payload")) for a in answers]
        assert kinds.count(("ok", "digest")) == 2 and ("", "error") in kinds
        # A huge repeated field, wrong-typed values and unknown names: refusals, not crashes.
        stub = pb_grpc.InitializersStub(channel)
        # NaN/inf arguments are JAX's business: it answers (with inf/NaN values, as local JAX does).
        inf = pb.GenerateRequest(
            initializer="normal", shape=[4], key=pb.Key(seed=0), args={"stddev": pb.Value(float_value=math.inf)}
        )
        assert [m.WhichOneof("payload") for m in stub.Generate(inf, timeout=30)][-1] == "digest"
        for message in (
            pb.GenerateRequest(initializer="zeros", shape=[1] * 100_000),
            pb.GenerateRequest(initializer="normal", shape=[2**62, 4], key=pb.Key(seed=0)),
            pb.GenerateRequest(initializer="normal", shape=[-1], key=pb.Key(seed=0)),
            pb.GenerateRequest(
                initializer="variance_scaling",
                shape=[4, 4],
                key=pb.Key(seed=0),
                args={
                    "scale": pb.Value(string_value="2"),
                    "mode": pb.Value(int_value=3),
                    "distribution": pb.Value(string_value="cauchy"),
                },
            ),
            pb.GenerateRequest(initializer="__import__", shape=[1]),
            pb.GenerateRequest(initializer="normal", shape=[4], key=pb.Key(seed=0, fold_in=[1] * 100_000)),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.Generate(message, timeout=30))
            assert caught.value.code() in REFUSALS, (caught.value.code(), caught.value.details())
        for model in ('{"type": "Dense"', '{"type": "Dense", "features": -1}', "[]" * 10, '{"params": [{}]}'):
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.InitModel(pb.InitModelRequest(model_json=model, key=pb.Key(seed=0)), timeout=30))
            assert caught.value.code() in REFUSALS, (caught.value.code(), caught.value.details())


# --- Arithmetic edge cases against the shared server (default caps: 4 GiB tensors) -------------

# Dimensions where 32- and 64-bit arithmetic wraps, signed or not; gRPC's shape is int64, so
# the last three go over REST only (JSON has no integer limit).
EDGE = [2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1, 2**32, 2**32 + 1, 2**61, 2**62, 2**63 - 1]
REST_EDGE = [2**63, 2**64 - 1, 2**64]
SMALL = 4  # every dimension at most this: at most 4**6 = 4096 elements, checked against local JAX
EDGE_DTYPES = [None, "float32", "bfloat16", "float16", "float64", "int8", "uint8", "int32", "complex64"]
EDGE_FAMILIES = {"zeros": {}, "normal": {}, "lecun_normal": {}, "orthogonal": {}, "constant": {"value": 1.5}}
READ_LIMIT = 2**20  # a body is read only when announced below this; otherwise headers only
EDGE_TIMEOUT = httpx.Timeout(30.0, connect=10.0)  # the answer's status line comes within this
ANSWERS = {200, 400, 404, 413, 429}
OVERLOADED = "OVERLOADED"  # RESOURCE_EXHAUSTED with the error type Overloaded: REST's 429
GRPC_AS_HTTP = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
}

# Mostly no range (a range past the end is a 400, whatever else the request says).
edge_counts = st.one_of(st.none(), st.none(), st.none(), st.integers(0, 6), st.sampled_from([*EDGE, 2**64 - 1, 2**64]))


@st.composite
def edge_shapes(draw: st.DrawFn) -> list[int]:
    """Rank 0-6: small dimensions (0 included), and none, one or two near a wrap-around point."""
    shape = draw(st.lists(st.integers(0, SMALL), max_size=6))
    for edge in draw(
        st.lists(st.one_of(st.sampled_from(EDGE), st.sampled_from(EDGE), st.sampled_from(REST_EDGE)), max_size=2)
    ):
        shape.insert(draw(st.integers(0, len(shape))), edge)
    return shape[:6]


@st.composite
def edge_requests(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(sorted(EDGE_FAMILIES)))
    body: dict[str, Any] = {
        "initializer": name,
        "shape": draw(edge_shapes()),
        "args": EDGE_FAMILIES[name],
        "key": {"seed": draw(st.integers(0, 2**31)), "impl": draw(st.sampled_from(["threefry2x32", "rbg"]))},
    }
    if (dtype := draw(st.sampled_from(EDGE_DTYPES))) is not None:
        body["dtype"] = dtype
    if (partitionable := draw(st.sampled_from([None, False, True]))) is not None:
        body["prng"] = {"threefry_partitionable": partitionable}
    for field in ("offset", "count"):
        if (value := draw(edge_counts)) is not None:
            body[field] = value
    return body


def _local(body: dict[str, Any]) -> np.ndarray | Exception:
    """Local JAX on a small shape (every dimension <= SMALL)."""
    key = (
        body["key"]["seed"]
        if body["key"]["impl"] == "threefry2x32"
        else ("seed", body["key"]["seed"], body["key"]["impl"])
    )
    return local_jax(
        body["initializer"],
        body["args"],
        key,
        tuple(body["shape"]),
        body.get("dtype"),
        partitionable=body.get("prng", {}).get("threefry_partitionable"),
    )


def _abstract(body: dict[str, Any]) -> Any:
    """What JAX says of a huge shape without making it: ``jax.eval_shape`` (tracing only)."""
    dtype = body.get("dtype")
    partitionable = body.get("prng", {}).get("threefry_partitionable")
    if partitionable is None:
        partitionable = bool(jax.config.jax_threefry_partitionable)
    x64 = dtype in ("float64", "complex128", "int64", "uint64") or bool(jax.config.jax_enable_x64)
    name, shape = body["initializer"], tuple(body["shape"])
    builder = getattr(jax.nn.initializers, name)
    init = builder if name == "zeros" else builder(**body["args"])
    with jax.threefry_partitionable(partitionable), jax.enable_x64(x64):
        key = jax.random.key(body["key"]["seed"], impl=body["key"]["impl"])
        return jax.eval_shape(lambda k: init(k, shape) if dtype is None else init(k, shape, DTYPES[dtype]), key)


def _bounded(response: httpx.Response) -> bytes | None:
    """The body when announced small (at most READ_LIMIT bytes read in any case), else None."""
    length = response.headers.get("content-length")
    if length is not None and int(length) >= READ_LIMIT:
        return None
    data = bytearray()
    for piece in response.iter_bytes():
        data += piece
        if len(data) > READ_LIMIT:
            return None
    return bytes(data)


def _error_type(data: bytes | None) -> str:
    """' TooLarge' for a jaxinit error body (for hypothesis's statistics)."""
    try:
        return " " + json.loads(data or b"")["error"]["type"]
    except (ValueError, KeyError, TypeError):
        return ""


# grpcio's own ERROR (with a traceback) when a client cancels a Generate stream while the
# servicer writes a message: known, see test_grpc_cancel_mid_stream_logs_no_error.
CANCEL_RACE = "ExecuteBatchError raised in core by servicer method"
CANCEL_RACE_END = "grpc._cython.cygrpc.ExecuteBatchError:"


def _errors(lines: list[str], *, known: bool = True) -> list[str]:
    """The error lines of a server's log (``known``: but the cancel race's, and its traceback)."""
    found, skipping = [], False
    for line in lines:
        if known and CANCEL_RACE in line:
            skipping = True
        elif skipping:
            skipping = not line.startswith(CANCEL_RACE_END)
        elif " ERROR " in line or "Traceback" in line:
            found.append(line)
    return found


def _alive(server: InProcessServer, since: int) -> None:
    """The server runs, answers /healthz, and logged no error since output line ``since``."""
    assert server.process.poll() is None, "".join(server.output[-50:])
    assert httpx.get(f"{server.http_url}/healthz", timeout=30).status_code == 200
    logged = server.output[since:]
    assert not _errors(logged), "".join(logged[-50:])


def _grpc_outcome(server: InProcessServer, body: dict[str, Any]) -> tuple[Any, bytes | None]:
    """(status, the bytes when the tensor is small) of the same request over gRPC Generate;
    OVERLOADED for a RESOURCE_EXHAUSTED that says "retry" (the REST 429)."""
    message = pb.GenerateRequest(
        initializer=body["initializer"],
        shape=body["shape"],
        dtype=body.get("dtype", ""),
        key=pb.Key(seed=body["key"]["seed"], impl=body["key"]["impl"]),
    )
    for name, value in body["args"].items():
        message.args[name].float_value = value
    if "prng" in body:
        message.prng.threefry_partitionable = body["prng"]["threefry_partitionable"]
    for field in ("offset", "count"):
        if field in body:
            setattr(message, field, body[field])
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = pb_grpc.InitializersStub(channel).Generate(message, timeout=60)
        try:
            first = next(call)
            assert first.WhichOneof("payload") == "header", first
            if first.header.total_bytes >= READ_LIMIT:
                return grpc.StatusCode.OK, None
            data = b"".join(m.data.data for m in call if m.WhichOneof("payload") == "data")
            return grpc.StatusCode.OK, data
        except grpc.RpcError as exc:
            assert "Traceback" not in (exc.details() or "")
            kind = dict(exc.trailing_metadata() or ()).get(ERROR_TYPE_KEY, "")
            return (OVERLOADED if kind == "Overloaded" else exc.code()), None
        finally:
            call.cancel()


def _edge(name: str, shape: list[int], dtype: str | None = None, **extra: Any) -> dict[str, Any]:
    body = {
        "initializer": name,
        "shape": shape,
        "args": EDGE_FAMILIES[name],
        "key": {"seed": 1, "impl": "threefry2x32"},
        **extra,
    }
    return body if dtype is None else {**body, "dtype": dtype}


@settings(max_examples=2 * EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=edge_requests())
# Always tried: answers of 4 GiB (fill, chunked, legacy chunked: headers only), 0-size tensors
# whose other dimensions multiply past 2**62, a range at the far end of a huge tensor.
@example(body=_edge("zeros", [2**32 - 1], "uint8"))
@example(body=_edge("normal", [2**31 - 1], "bfloat16"))
@example(body=_edge("lecun_normal", [2**31 - 1, 1], "float16", prng={"threefry_partitionable": False}))
@example(body=_edge("constant", [2**32 - 1], "uint8", offset=2**32 - 3, count=2))
@example(body=_edge("normal", [2**31 - 1], "bfloat16", offset=2**31 - 5, count=4))
@example(body=_edge("zeros", [0, 2**63 - 1], "int8"))
@example(body=_edge("orthogonal", [2**31, 2**31, 0], "uint8"))
@example(body=_edge("orthogonal", [0, 2**61], "int8"))
@example(body=_edge("normal", [2**62, 0, 2], "int8"))
@example(body=_edge("lecun_normal", [2**31, 0, 2**31], "bfloat16"))
@example(body=_edge("normal", [3, 2**62]))
@example(body=_edge("zeros", [2**64, 0]))
@example(body=_edge("normal", [4], offset=2**64, count=2**64))
def test_arithmetic_edges_answer_or_refuse(server: InProcessServer, body: dict[str, Any]) -> None:
    """Dimensions, offsets and counts near 2**31, 2**32, 2**61-2**64: a tensor equal to local JAX's,
    or a refusal (400, 404, 413, 429); never a 5xx, never a dead server."""
    since = len(server.output)
    shape = body["shape"]
    small = all(d <= SMALL for d in shape)
    with (
        httpx.Client(base_url=server.http_url, timeout=EDGE_TIMEOUT) as client,
        client.stream(
            "POST",
            "/v1/generate",
            json=body,
            headers={"accept": "application/octet-stream"},
        ) as response,
    ):
        status, data = response.status_code, _bounded(response)
        headers = response.headers
    assert status in ANSWERS, (status, data and data[:500], body)
    event(f"REST {status}{_error_type(data) if status != 200 else ''}, {'small' if small else 'huge'} shape")
    if status == 200:
        count = int(headers["x-jaxinit-count"])
        assert int(headers["content-length"]) == count * DTYPES[headers["x-jaxinit-dtype"]].itemsize
        assert headers["x-jaxinit-shape"] == ",".join(map(str, shape))
    if small:
        expected = _local(body)
        total = math.prod(shape)
        start = body.get("offset", 0)
        stop = total if body.get("count") is None else start + body["count"]
        if status != 429:
            refused = isinstance(expected, Exception) or start > total or stop > total
            assert status == (400 if refused else 200), (status, data, body, expected)
        if status == 200:
            assert isinstance(expected, np.ndarray)
            assert data == np.ascontiguousarray(expected).reshape(-1)[start:stop].tobytes(), body
    elif status == 200:
        abstract = _abstract(body)  # JAX accepts it: same shape and dtype
        assert abstract.shape == tuple(shape) and str(abstract.dtype) == headers["x-jaxinit-dtype"], body
        if data is not None:
            assert len(data) == int(headers["content-length"])
    elif status == 400 and _error_type(data) == " JaxError":  # JAX refuses it too
        with pytest.raises(Exception):  # noqa: B017 (whatever JAX raises)
            _abstract(body)
    _alive(server, since)
    if all(d < 2**63 for d in shape) and all(body.get(f, 0) < 2**64 for f in ("offset", "count")):
        code, grpc_data = _grpc_outcome(server, body)
        event(f"gRPC {getattr(code, 'name', code)}")
        assert code in (grpc.StatusCode.OK, OVERLOADED) or code in REFUSALS, (code, body)
        if status != 429 and code != OVERLOADED:  # the same answer on both APIs, unless busy
            assert GRPC_AS_HTTP[code] == status, (code, status, body)
        if grpc_data is not None and data is not None:
            assert grpc_data == data, body
        _alive(server, since)


# --- Raw model descriptions near the caps (plan only) ------------------------------------------

NAME_CHARS = "abcdefghijklmnopqrstuvwxyz_0123456789ABCXYZ"
ODD_CHARS = "-/ é中\u200b\\\"'"
MODEL_DIMS = [1, 2, 3, 8, 0, 2**31 - 1, 2**32, 2**62, 2**63 - 1]
MODEL_BODY_CHARS = 24 * 2**20  # what the generator builds at most (the server's cap is 16 MiB)


@st.composite
def raw_models(draw: st.DrawFn) -> dict[str, Any]:
    """A raw-form model ({"params": [...]}) of up to a few thousand parameters, built from a few
    drawn knobs (hypothesis would take long to draw thousands of values one by one)."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.sampled_from([1, 2, 17, 300, 1500, 3000]))
    max_parts = draw(st.sampled_from([1, 3, 8, 63, 64, 65, 70]))
    max_chars = draw(st.sampled_from([1, 12, 64, 255, 256, 257, 300]))
    odd = draw(st.booleans())
    huge = draw(st.booleans())
    inits = draw(st.sampled_from([["zeros"], ["lecun_normal", "zeros", "normal"], ["orthogonal", "nope"]]))
    params, size = [], 0
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, max_parts)):
            alphabet = NAME_CHARS + (ODD_CHARS if odd else "")
            parts.append("".join(rng.choices(alphabet, k=rng.randint(1, max_chars))))
        dims = MODEL_DIMS if huge else MODEL_DIMS[:4]
        param: dict[str, Any] = {
            "path": ".".join(parts),
            "initializer": rng.choice(inits),
            "shape": [rng.choice(dims) for _ in range(rng.randint(0, 4))],
        }
        if rng.random() < 0.1:
            param["dtype"] = rng.choice(["float32", "bfloat16", "int8", "float128"])
        size += len(param["path"]) + 80
        if size > MODEL_BODY_CHARS:
            break
        params.append(param)
    return {"params": params}


@settings(max_examples=max(5, EXAMPLES // 2), deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(model=raw_models(), layout=st.sampled_from(["flax", "torch"]))
def test_raw_models_near_the_caps_plan_or_refuse(server: InProcessServer, model: dict[str, Any], layout: str) -> None:
    """Paths of 1-70 components (the cap is 64), names up to 300 characters (the cap is 256),
    thousands of parameters, huge shapes: the plan, or a 4xx; never a 5xx, never a dead server."""
    since = len(server.output)
    body = {"model": model, "key": {"seed": 0}, "layout": layout}
    response = httpx.post(
        f"{server.http_url}/v1/models/init", json=body, headers={"accept": "application/json"}, timeout=EDGE_TIMEOUT
    )
    assert response.status_code == 200 or 400 <= response.status_code < 500, (
        response.status_code,
        response.text[:1000],
    )
    assert response.status_code in ANSWERS, (response.status_code, response.text[:1000])
    event(f"model {response.status_code}{_error_type(response.content) if response.status_code != 200 else ''}")
    if response.status_code == 200:
        paths = {p["path"] for p in model["params"]}
        names = [t["name"] for t in response.json()["tensors"]]
        assert names and (layout == "torch" or set(names) <= paths), names[:5]
    _alive(server, since)
