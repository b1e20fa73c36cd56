"""Hostile and careless callers against real servers: nothing crashes, freezes or pins a replica.

Each test asserts the process is alive and health answers afterwards. Waits are on
conditions (readiness state, metrics), bounded by generous deadlines, never on a fixed
sleep; so the suite passes on a loaded machine.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import jax
import numpy as np
import pytest
from in_process import InProcessServer, in_process_server

import jaxinit
from jaxinit._grpc import request_to_proto
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc
from jaxinit_server.kserve import grpc_predict_v2_pb2 as kpb
from jaxinit_server.kserve import grpc_predict_v2_pb2_grpc as kpb_grpc
from jaxinit_server.testing import ServerProcess, running_server

# The session's in-process server, one of a test's own, or a process (signals).
Server = ServerProcess | InProcessServer
OVERFLOW = [2**62, 0]  # 0 bytes, but XLA multiplies the other dimensions and aborted on it


def _alive(server: Server) -> None:
    assert server.process.poll() is None, "".join(server.output[-50:])
    assert httpx.get(f"{server.http_url}/healthz", timeout=30).status_code == 200


def _state(server: Server) -> dict[str, Any]:
    return httpx.get(f"{server.http_url}/readyz", timeout=30).json()


def _until(condition: Callable[[], bool], what: str, timeout: float = 120, server: Server | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            detail = f": {_state(server)}\n{''.join(server.output[-30:])}" if server else ""
            raise AssertionError(f"timed out waiting for {what}{detail}")
        time.sleep(0.05)


def _generate_grpc(server: Server, request: pb.GenerateRequest, timeout: float = 60) -> grpc.RpcError | None:
    # A connection of its own, as a separate client would have: grpcio shares one connection
    # among a process's channels, and one connection is one caller with its share
    # (--max-caller-streams/-bytes), which an abandoned call holds until the server has seen
    # it go; sequential calls here must not wait on that release.
    with grpc.insecure_channel(server.grpc_target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        try:
            list(pb_grpc.InitializersStub(channel).Generate(request, timeout=timeout))
        except grpc.RpcError as exc:
            return exc
    return None


def _proto(name: str, shape: list[int], **kwargs: Any) -> pb.GenerateRequest:
    return request_to_proto(jaxinit.Client("grpc://127.0.0.1:1").request(name, 0, tuple(shape), **kwargs))


# --- arithmetic: shapes JAX/XLA cannot represent --------------------------------------


@pytest.mark.parametrize("shape", [OVERFLOW, [0, 2**62, 4], [2**63 - 1, 0], [2**64, 0], [3, 2**62, 0]])
def test_overflowing_shapes_are_400_on_every_route(server: Server, shape: list[int]) -> None:
    url = server.http_url
    posted = httpx.post(f"{url}/v1/generate", json={"initializer": "zeros", "shape": shape}, timeout=30)
    assert posted.status_code == 400, posted.text
    assert "dimension" in posted.json()["error"]["message"]
    got = httpx.get(f"{url}/v1/generate/zeros", params={"shape": ",".join(map(str, shape))}, timeout=30)
    assert got.status_code == 400, got.text
    v2 = httpx.post(
        f"{url}/v2/models/zeros/infer",
        timeout=30,
        json={"inputs": [{"name": "shape", "datatype": "INT64", "shape": [len(shape)], "data": shape}]},
    )
    assert v2.status_code == 400, v2.text
    model = httpx.post(
        f"{url}/v1/models/init",
        timeout=30,
        headers={"Accept": "application/json"},
        json={"model": {"params": [{"path": "a.b", "initializer": "zeros", "shape": shape}]}, "key": {"seed": 0}},
    )
    assert model.status_code == 400, model.text
    if max(shape) < 2**64:  # gRPC's uint64 shape field
        error = _generate_grpc(server, pb.GenerateRequest(initializer="zeros", shape=shape))
        assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        with grpc.insecure_channel(server.grpc_target) as channel:
            answers = list(
                pb_grpc.InitializersStub(channel).GenerateMany(
                    iter(
                        [
                            pb.GenerateRequest(initializer="zeros", shape=shape, request_id="bad"),
                            pb.GenerateRequest(initializer="zeros", shape=[2], request_id="good"),
                        ]
                    ),
                    timeout=60,
                )
            )
        assert answers[0].WhichOneof("payload") == "error" and answers[0].error.code == "INVALID_ARGUMENT"
        assert any(a.request_id == "good" and a.WhichOneof("payload") == "digest" for a in answers)
        if max(shape) < 2**63:  # KServe's int64 shape contents
            with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as caught:
                kpb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                    kpb.ModelInferRequest(
                        model_name="zeros",
                        inputs=[
                            kpb.ModelInferRequest.InferInputTensor(
                                name="shape",
                                datatype="INT64",
                                shape=[len(shape)],
                                contents=kpb.InferTensorContents(int64_contents=shape),
                            )
                        ],
                    ),
                    timeout=60,
                )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _alive(server)


@pytest.mark.parametrize("shape", [[2**40, 0], [0, 2**31, 3], [2**60, 0, 1]])
def test_the_largest_zero_size_shapes_are_answered_without_xla(server: Server, shape: list[int]) -> None:
    for name in ("zeros", "lecun_normal", "orthogonal"):
        response = httpx.get(
            f"{server.http_url}/v1/generate/{name}",
            timeout=30,
            headers={"Accept": "application/x-npy"},
            params={"shape": ",".join(map(str, shape)), "seed": 0},
        )
        init = jax.nn.initializers.zeros if name == "zeros" else getattr(jax.nn.initializers, name)()
        try:  # traced only: running XLA on such a shape is what aborted the server
            expected = jax.eval_shape(lambda k, init=init: init(k, tuple(shape)), jax.random.key(0))
        except Exception:  # JAX refuses it (e.g. orthogonal's n_rows / 0): so must the server
            assert response.status_code == 400, response.text
            continue
        assert response.status_code == 200, response.text
        got = np.load(io.BytesIO(response.content))
        assert got.shape == expected.shape and got.dtype == expected.dtype and got.size == 0
    _alive(server)


# --- bounded input and echo -------------------------------------------------------------


def _nested(depth: int, leaf: Any = 1.0) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def test_hostile_bodies_are_4xx_with_short_messages(server: Server) -> None:
    url = f"{server.http_url}/v1/generate"
    cases: list[tuple[str, bytes | dict[str, Any]]] = [
        ("constant value nested 900 deep", {"initializer": "constant", "shape": [2], "args": {"value": _nested(900)}}),
        (
            "body nested 1,100 deep",
            b'{"initializer": "zeros", "shape": [2], "args": {"value": ' + b"[" * 1100 + b"1" + b"]" * 1100 + b"}}",
        ),
        ("a 15 MiB request_id", {"initializer": "zeros", "shape": [2], "request_id": "x" * (15 * 2**20)}),
        (
            "a 9 MB fold_in list",
            {"initializer": "normal", "shape": [2], "key": {"seed": 0, "fold_in": [7] * 1_500_000}},
        ),
        ("a 1 MB initializer name", {"initializer": "n" * 2**20, "shape": [2]}),
        ("a shape of 100,000 dimensions", {"initializer": "zeros", "shape": [1] * 100_000}),
    ]
    for what, body in cases:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = httpx.post(url, content=content, headers={"Content-Type": "application/json"}, timeout=60)
        assert 400 <= response.status_code < 500, (what, response.status_code, response.text[:300])
        assert len(response.content) < 4096, (what, len(response.content))
    model = {"params": [{"path": ".".join(["m"] * 3000), "initializer": "zeros", "shape": [1]}]}
    response = httpx.post(f"{server.http_url}/v1/models/init", json={"model": model, "key": {"seed": 0}}, timeout=60)
    assert response.status_code == 400 and len(response.content) < 4096, response.text[:300]
    deep = '{"type": "Module", "children": [' * 1100 + "]}" * 1100
    request = pb.InitModelRequest(model_json=deep, key=pb.Key(seed=0))
    with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as caught:
        list(pb_grpc.InitializersStub(channel).InitModel(request, timeout=60))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _alive(server)


def test_an_error_that_quotes_a_huge_value_still_reaches_a_grpc_client_as_jaxinit_error(server: Server) -> None:
    client = jaxinit.Client(server.grpc_url, retries=0)
    with pytest.raises(jaxinit.UnknownInitializer) as caught:
        client.generate("x" * 100_000, 0, (2,))
    assert len(str(caught.value)) < 2048
    error = _generate_grpc(
        server, pb.GenerateRequest(initializer="normal", shape=[2], key=pb.Key(seed=0, fold_in=list(range(100_000))))
    )
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(error.details()) < 2048
    _alive(server)


def test_a_long_request_id_is_refused_not_repeated_in_every_chunk(server: Server) -> None:
    error = _generate_grpc(server, pb.GenerateRequest(initializer="zeros", shape=[2], request_id="r" * 2**20))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    _alive(server)


# --- the event loop never stalls --------------------------------------------------------


def _lag_buckets(server: Server) -> dict[float, float]:
    """The event loop's lag histogram: upper bound -> cumulative count."""
    text = httpx.get(f"{server.http_url}/metrics", timeout=30).text
    out = {}
    for line in text.splitlines():
        if line.startswith("jaxinit_event_loop_lag_seconds_bucket"):
            bound = line.split('le="')[1].split('"')[0]
            out[float("inf") if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return out


@pytest.fixture
def own_server() -> Iterator[InProcessServer]:
    """A server of the test's own: its state (capacity, workers, metrics) is the test's alone."""
    with in_process_server("--whole-workers", "1") as srv:
        yield srv
    assert not [line for line in srv.output if " ERROR " in line or "Traceback" in line], "".join(srv.output[-50:])


def _raw_model(n: int) -> dict[str, Any]:
    return {
        "params": [{"path": f"layer{i}.w{i % 7}", "initializer": "normal", "shape": [1 + i % 5, 3]} for i in range(n)]
    }


@pytest.fixture
def own_process() -> Iterator[ServerProcess]:
    """A server process of the test's own: its event loop shares no interpreter with the test."""
    with running_server("--whole-workers", "1") as srv:
        yield srv
        assert srv.stop() == 0, "".join(srv.output[-50:])


@pytest.mark.release  # hundreds of MiB per request, a minute on two cores
def test_heavy_requests_never_stall_the_event_loop(own_process: ServerProcess) -> None:
    """The heaviest admitted request of each kind is prepared while the loop's lag is measured."""
    own_server = own_process
    url = own_server.http_url
    before = _lag_buckets(own_server)
    heavy: list[Callable[[], httpx.Response]] = [
        # a model at the parameter cap, asking only for its plan
        lambda: httpx.post(
            f"{url}/v1/models/init",
            json={"model": _raw_model(100_000), "key": {"seed": 0}},
            headers={"Accept": "application/json"},
            timeout=600,
        ),
        # a QR that takes seconds, in a worker process
        lambda: httpx.get(f"{url}/v1/generate/orthogonal", params={"shape": "2048,2048", "seed": 0}, timeout=600),
        # JSON at the element cap
        lambda: httpx.get(
            f"{url}/v1/generate/normal",
            params={"shape": "1024,1024", "seed": 0},
            headers={"Accept": "application/json"},
            timeout=600,
        ),
        # a KServe JSON answer at the cap, and a 256 MiB binary one
        lambda: httpx.post(
            f"{url}/v2/models/normal/infer",
            timeout=600,
            json={
                "inputs": [
                    {"name": "shape", "datatype": "INT64", "shape": [2], "data": [1024, 1024]},
                    {"name": "seed", "datatype": "INT64", "shape": [1], "data": [0]},
                ]
            },
        ),
        lambda: httpx.post(
            f"{url}/v2/models/normal/infer",
            timeout=600,
            json={
                "inputs": [
                    {"name": "shape", "datatype": "INT64", "shape": [2], "data": [8192, 8192]},
                    {"name": "seed", "datatype": "INT64", "shape": [1], "data": [0]},
                ],
                "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
            },
        ),
        # a model as .npz and as safetensors, 256 MiB each
        lambda: httpx.post(
            f"{url}/v1/models/init",
            timeout=600,
            headers={"Accept": "application/x-npz"},
            json={
                "model": {"params": [{"path": "a.w", "initializer": "normal", "shape": [8192, 8192]}]},
                "key": {"seed": 0},
            },
        ),
    ]
    for send in heavy:
        response = send()
        assert response.status_code == 200, response.text[:300]
    after = _lag_buckets(own_server)
    samples = after[float("inf")] - before.get(float("inf"), 0.0)
    slow = samples - (after[0.1] - before.get(0.1, 0.0))
    assert samples > 100, "the lag monitor must have run throughout"
    assert slow <= samples / 100, f"{slow} of {samples} loop turns took over 100 ms"
    # Health answered throughout: check it answers now, promptly.
    _alive(own_server)


# --- capacity: priced, isolated, released -------------------------------------------------


def test_idle_sockets_on_huge_streams_do_not_deny_service(own_server: Server) -> None:
    """Eight callers ask for 4 GiB each and never read: they hold a few chunks each, not 4 GiB."""
    held = []
    try:
        for seed in range(8):
            client = httpx.Client(timeout=60)
            stream = client.stream(
                "GET", f"{own_server.http_url}/v1/generate/normal", params={"shape": "32768,32768", "seed": seed}
            )
            response = stream.__enter__()
            assert response.status_code == 200
            held.append((client, stream))
        for url in (own_server.grpc_url, own_server.http_url):
            tensor = jaxinit.Client(url, retries=0).generate("lecun_normal", 1, (64, 64))
            expected = np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(1), (64, 64)))
            assert tensor.array.tobytes() == expected.tobytes()
        assert _state(own_server)["admission"]["bytes"] < 8 * 64 * 2**20
    finally:
        for client, stream in held:
            stream.__exit__(None, None, None)
            client.close()
    _until(lambda: _state(own_server)["admission"]["streams"] == 0, "the abandoned streams' capacity")
    _alive(own_server)


def test_abandoned_whole_tensor_work_stops_and_frees_its_worker(own_server: Server) -> None:
    """gRPC callers whose deadline passes during a QR: their worker is killed, not left computing."""
    # A worker up first (no warm-up here), so that the first QR below is computing when its
    # deadline passes, not waiting for a worker to start.
    jaxinit.Client(own_server.grpc_url, retries=0).orthogonal()(1, (8, 8))
    killed = _state(own_server)["whole_tensor_workers"]["killed"]
    for _ in range(3):
        error = _generate_grpc(own_server, _proto("orthogonal", [4096, 4096]), timeout=0.5)
        assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _until(lambda: _state(own_server)["whole_tensor_workers"]["busy"] == 0, "the pool to be free", server=own_server)
    # The first was computing and its worker was killed; the others never got a worker.
    assert _state(own_server)["whole_tensor_workers"]["killed"] >= killed + 1
    # The next whole-tensor request is served at once, not after minutes of abandoned QRs.
    tensor = jaxinit.Client(own_server.grpc_url, retries=0).orthogonal()(5, (64, 32))
    expected = np.asarray(jax.nn.initializers.orthogonal()(jax.random.key(5), (64, 32)))
    assert tensor.tobytes() == expected.tobytes()
    # The same over HTTP: a caller that goes away while its QR runs.
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(
            f"{own_server.http_url}/v1/generate/orthogonal",
            params={"shape": "4096,4096", "seed": 0},
            timeout=httpx.Timeout(30, read=0.5),
        )
    _until(lambda: _state(own_server)["whole_tensor_workers"]["busy"] == 0, "the pool to be free", server=own_server)
    _alive(own_server)


def test_a_range_of_a_whole_tensor_family_is_priced_as_the_whole_tensor(server: Server) -> None:
    """count=1 of a 1 GiB rbg normal asks 4 bytes but computes 1 GiB (~3 GiB at its peak)."""
    body = {"initializer": "normal", "shape": [2**28], "key": {"seed": 0, "impl": "rbg"}, "count": 1}
    too_big = httpx.post(f"{server.http_url}/v1/generate", json=body, timeout=60)
    assert too_big.status_code == 413, too_big.text
    assert "--max-inflight-bytes" in too_big.json()["error"]["message"]
    small = httpx.post(f"{server.http_url}/v1/generate", json={**body, "shape": [2**20]}, timeout=60)
    assert small.status_code == 200 and len(small.content) == 4
    _alive(server)


def test_stalled_readers_are_disconnected_and_their_capacity_freed() -> None:
    """Two callers hold the server's two streams and stop reading: after --stall-seconds
    they are cut off and everyone else is served again."""
    with in_process_server("--stall-seconds", "2", "--max-streams", "2", "--whole-workers", "1") as srv:
        client = httpx.Client(timeout=60)
        stream = client.stream("GET", f"{srv.http_url}/v1/generate/normal", params={"shape": "32768,32768", "seed": 0})
        assert stream.__enter__().status_code == 200
        channel = grpc.insecure_channel(srv.grpc_target)
        call = pb_grpc.InitializersStub(channel).Generate(_proto("normal", [32768, 32768]), timeout=300)
        assert next(call).WhichOneof("payload") == "header"
        try:
            assert _state(srv)["admission"]["streams"] == 2
            _until(lambda: _state(srv)["admission"]["streams"] == 0, "the stalled readers to be cut off")
            assert _state(srv)["stalled_readers_disconnected"] >= 2
            tensor = jaxinit.Client(srv.grpc_url, retries=0).generate("normal", 3, (32, 32))
            expected = np.asarray(jax.nn.initializers.normal()(jax.random.key(3), (32, 32)))
            assert tensor.array.tobytes() == expected.tobytes()
        finally:
            call.cancel()
            channel.close()
            with contextlib.suppress(httpx.HTTPError):
                stream.__exit__(None, None, None)
            client.close()
        _alive(srv)


# --- shutdown --------------------------------------------------------------------------


def test_sigterm_ends_within_the_grace_period_and_callers_get_a_retryable_503() -> None:
    with running_server("--whole-workers", "1", "--grace-seconds", "1") as srv:
        answers: list[httpx.Response | BaseException] = []

        def ask() -> None:
            try:
                answers.append(
                    httpx.get(
                        f"{srv.http_url}/v1/generate/orthogonal", timeout=120, params={"shape": "4096,4096", "seed": 0}
                    )
                )
            except BaseException as exc:
                answers.append(exc)

        caller = threading.Thread(target=ask)
        caller.start()
        _until(lambda: _state(srv)["whole_tensor_workers"]["busy"] == 1, "the QR to start")
        started = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)
        code = srv.process.wait(60)
        stopped = time.monotonic() - started
        caller.join(60)
        assert code == 0, "".join(srv.output[-50:])
        assert stopped < 1 + 4, f"stopped {stopped:.1f} s after SIGTERM with a 1 s grace period"
        assert len(answers) == 1 and isinstance(answers[0], httpx.Response), answers
        assert answers[0].status_code == 503, answers[0].text
        assert answers[0].json()["error"]["type"] == "ServerUnavailable"
