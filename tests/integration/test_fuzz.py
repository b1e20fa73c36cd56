"""Fuzzing both APIs, bounded: schemathesis against the served OpenAPI document (every
operation and method; no 5xx, every response as documented), hypothesis-made and
hand-made gRPC messages (wrong types, huge repeated fields, negative or overflowing dims,
NaN/inf arguments, unknown names, bytes that do not parse). Every answer is a result or
a 4xx-class refusal, never INTERNAL/UNKNOWN; the server stays up.

JAXINIT_FUZZ_EXAMPLES raises the budget (default: a short run, for CI)."""

from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxinit._catalog import CATALOG
from jaxinit._codec import DTYPE_NAMES
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc
from jaxinit_server.testing import ServerProcess, running_server

EXAMPLES = int(os.environ.get("JAXINIT_FUZZ_EXAMPLES", "40"))
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[ServerProcess]:
    # Small caps, so that what passes validation is cheap to generate.
    with running_server("--no-warm-up", "--no-request-log", "--max-tensor-bytes", str(2**20),
                        "--max-model-bytes", str(4 * 2**20), "--max-body-bytes", str(2**20)) as srv:
        yield srv
        assert srv.stop() == 0, "".join(srv.output[-50:])
        # Nothing the fuzzers sent made the server log an error.
        assert not [line for line in srv.output if " ERROR " in line or "Traceback" in line], "".join(srv.output)


def test_schemathesis_finds_nothing(fuzzed: ServerProcess, tmp_path: pathlib.Path) -> None:
    tool = pathlib.Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(tool), "run", f"{fuzzed.http_url}/openapi.json", "--checks", "all",
         # A description or a request can match the schema and still not make sense (an
         # empty model, a KServe request without inputs): a 400 there is right.
         "--exclude-checks", "positive_data_acceptance",
         "--max-examples", str(max(5, EXAMPLES // 4)), "--seed", "20261122", "--workers", "1",
         "--request-timeout", "30"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failures" not in result.stdout.split("SUMMARY")[-1].lower()


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**63), 2**63 - 1),
)
values = st.one_of(
    numbers.map(lambda x: pb.Value(float_value=x) if isinstance(x, float) else pb.Value(int_value=x)),
    st.text(max_size=20).map(lambda s: pb.Value(string_value=s)),
    st.booleans().map(lambda b: pb.Value(bool_value=b)),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=300).map(lambda v: pb.Value(int_list=pb.IntList(values=v))),
    st.just(pb.Value(null_value=True)),
    st.just(pb.Value(list_value=pb.NestedList(items=[pb.Value(float_value=math.nan)] * 3))),
)
arg_names = st.sampled_from(["scale", "mode", "distribution", "in_axis", "out_axis", "batch_axis", "stddev",
                             "lower", "upper", "value", "dtype", "column_axis", "bogus", ""])
requests = st.builds(
    pb.GenerateRequest,
    request_id=st.text(max_size=8),
    initializer=st.one_of(st.sampled_from(sorted(CATALOG)), st.text(max_size=12)),
    args=st.dictionaries(arg_names, values, max_size=4),
    shape=st.lists(st.one_of(st.integers(-3, 70), st.integers(-(2**63), 2**63 - 1)), max_size=70),
    dtype=st.one_of(st.sampled_from(DTYPE_NAMES), st.sampled_from(["", "float128", "int4", "Float32"]),
                    st.text(max_size=8)),
    key=st.one_of(
        st.builds(pb.Key, seed=st.integers(-(2**63), 2**63 - 1),
                  impl=st.sampled_from(["", "threefry2x32", "rbg", "philox4x32", "nope"]),
                  fold_in=st.lists(st.integers(0, 2**32 - 1), max_size=100)),
        st.builds(pb.Key, data=st.builds(pb.KeyData, words=st.lists(st.integers(0, 2**32 - 1), max_size=9)),
                  impl=st.sampled_from(["", "threefry2x32", "rbg", "unsafe_rbg", "threefry4x32"])),
    ),
    offset=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    count=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(message=requests)
def test_grpc_generate_answers_or_refuses_cleanly(fuzzed: ServerProcess, message: pb.GenerateRequest) -> None:
    with grpc.insecure_channel(fuzzed.grpc_target) as channel:
        try:
            list(pb_grpc.InitializersStub(channel).Generate(message, timeout=60))
        except grpc.RpcError as exc:
            assert exc.code() in REFUSALS, (exc.code(), exc.details(), message)
            assert "Traceback" not in (exc.details() or "")


@settings(max_examples=max(5, EXAMPLES // 4), deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
@given(batch=st.lists(requests, min_size=1, max_size=5))
def test_grpc_generate_many_answers_every_item(fuzzed: ServerProcess, batch: list[pb.GenerateRequest]) -> None:
    """One answer per item, a tensor or an error, in order; a bad item never ends the stream."""
    for i, message in enumerate(batch):
        message.request_id = f"r{i}"
    with grpc.insecure_channel(fuzzed.grpc_target) as channel:
        answers = list(pb_grpc.InitializersStub(channel).GenerateMany(iter(batch), timeout=120))
    ends = [a.request_id for a in answers if a.WhichOneof("payload") in ("error", "digest")]
    assert ends == [f"r{i}" for i in range(len(batch))]
    codes = {a.error.code for a in answers if a.WhichOneof("payload") == "error"}
    assert codes <= {c.name for c in REFUSALS}, codes


def test_hand_made_malformed_messages(fuzzed: ServerProcess) -> None:
    garbage = [b"\x0a\xff\xff\xff\xff\x0f", b"\xff" * 64, b"\x22\x05\x01\x02", bytes(range(256))]
    with grpc.insecure_channel(fuzzed.grpc_target) as channel:
        for method in ("Generate", "InitModel"):
            raw = channel.unary_stream(f"/jaxinit.v1.Initializers/{method}",
                                       request_serializer=bytes, response_deserializer=bytes)
            for blob in garbage:
                with pytest.raises(grpc.RpcError) as caught:
                    list(raw(blob, timeout=10))
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        # In a stream: the bad message gets its error there, the good ones still arrive.
        many = channel.stream_stream("/jaxinit.v1.Initializers/GenerateMany",
                                     request_serializer=bytes, response_deserializer=pb.TensorChunk.FromString)
        good = pb.GenerateRequest(request_id="ok", initializer="zeros", shape=[3]).SerializeToString()
        answers = list(many(iter([good, garbage[0], good]), timeout=30))
        kinds = [(a.request_id, a.WhichOneof("payload")) for a in answers]
        assert kinds.count(("ok", "digest")) == 2 and ("", "error") in kinds
        # A huge repeated field, wrong-typed values and unknown names: refusals, not crashes.
        stub = pb_grpc.InitializersStub(channel)
        # NaN/inf arguments are JAX's business: it answers (with inf/NaN values, as local JAX does).
        inf = pb.GenerateRequest(initializer="normal", shape=[4], key=pb.Key(seed=0),
                                 args={"stddev": pb.Value(float_value=math.inf)})
        assert [m.WhichOneof("payload") for m in stub.Generate(inf, timeout=30)][-1] == "digest"
        for message in (
            pb.GenerateRequest(initializer="zeros", shape=[1] * 100_000),
            pb.GenerateRequest(initializer="normal", shape=[2**62, 4], key=pb.Key(seed=0)),
            pb.GenerateRequest(initializer="normal", shape=[-1], key=pb.Key(seed=0)),
            pb.GenerateRequest(initializer="variance_scaling", shape=[4, 4], key=pb.Key(seed=0),
                               args={"scale": pb.Value(string_value="2"), "mode": pb.Value(int_value=3),
                                     "distribution": pb.Value(string_value="cauchy")}),
            pb.GenerateRequest(initializer="__import__", shape=[1]),
            pb.GenerateRequest(initializer="normal", shape=[4], key=pb.Key(seed=0, fold_in=[1] * 100_000)),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.Generate(message, timeout=30))
            assert caught.value.code() in REFUSALS, (caught.value.code(), caught.value.details())
        for model in ('{"type": "Dense"', '{"type": "Dense", "features": -1}', '[]' * 10, '{"params": [{}]}'):
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.InitModel(pb.InitModelRequest(model_json=model, key=pb.Key(seed=0)), timeout=30))
            assert caught.value.code() in REFUSALS, (caught.value.code(), caught.value.details())
