"""Bearer-token authentication on both transports: one key ring, health open, keys rotate
by editing the key file, errors say nothing about the keys."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import jaxinit
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc
from jaxinit_server.testing import ServerProcess, running_server

FIRST, SECOND, FROM_ENV = "key-one-7f3a", "key-two-91bc", "env-key-55d0"


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("auth") / "keys.txt"
    path.write_text(f"# api keys\n{FIRST}\n")
    return path


@pytest.fixture(scope="module")
def secured(key_file: pathlib.Path) -> Iterator[ServerProcess]:
    with running_server("--no-warm-up", "--api-keys-file", str(key_file), env={"JAXINIT_API_KEYS": FROM_ENV}) as srv:
        yield srv


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_valid_key_gets_exact_bytes(secured: ServerProcess, transport: str) -> None:
    url = secured.grpc_url if transport == "grpc" else secured.http_url
    for key in (FIRST, FROM_ENV):
        with jaxinit.Client(url, token=key) as client:
            assert client.zeros(0, (2, 3)).tobytes() == bytes(24)
            params = client.init_model(jaxinit.models.Dense(2, 2), 0)
            assert params["kernel"].shape == (2, 2)


@pytest.mark.parametrize("transport", ["grpc", "http"])
@pytest.mark.parametrize("token", [None, "wrong", FIRST + "x", ""])
def test_missing_or_wrong_keys_are_refused(secured: ServerProcess, transport: str, token: str | None) -> None:
    url = secured.grpc_url if transport == "grpc" else secured.http_url
    with jaxinit.Client(url, token=token) as client:
        with pytest.raises(jaxinit.Unauthenticated, match="^missing or invalid bearer token$"):
            client.zeros(0, (2,))
        with pytest.raises(jaxinit.Unauthenticated):
            client.list_initializers()


def test_wire_level_answers(secured: ServerProcess) -> None:
    response = httpx.get(f"{secured.http_url}/v1/generate/zeros", params={"shape": "2"})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"] == {
        "code": "UNAUTHENTICATED",
        "type": "Unauthenticated",
        "message": "missing or invalid bearer token",
    }
    for path in ("/metrics", "/v1/initializers", "/docs"):
        assert httpx.get(f"{secured.http_url}{path}").status_code == 401
    for path in ("/healthz", "/readyz"):  # probes need no key
        assert httpx.get(f"{secured.http_url}{path}").status_code == 200
    basic = httpx.get(f"{secured.http_url}/v1/initializers", headers={"Authorization": f"Basic {FIRST}"})
    assert basic.status_code == 401

    with grpc.insecure_channel(secured.grpc_target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.InitializersStub(channel)
        for method in (
            lambda: list(stub.Generate(pb.GenerateRequest(initializer="zeros", shape=[1]))),
            lambda: stub.ListInitializers(pb.ListInitializersRequest()),
            lambda: list(stub.GenerateMany(iter([pb.GenerateRequest(initializer="zeros", shape=[1])]))),
        ):
            with pytest.raises(grpc.RpcError) as info:
                method()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert info.value.details() == "missing or invalid bearer token"


def test_keys_rotate_by_editing_the_file(secured: ServerProcess, key_file: pathlib.Path) -> None:
    key_file.write_text(f"{FIRST}\n{SECOND}\n")  # add the new key
    deadline = time.monotonic() + 10
    with jaxinit.Client(secured.http_url, token=SECOND) as client:
        while True:
            try:
                client.zeros(0, (1,))
                break
            except jaxinit.Unauthenticated:
                assert time.monotonic() < deadline, "the new key was never accepted"
                time.sleep(0.2)
    key_file.write_text(f"{SECOND}\n")  # retire the old one
    deadline = time.monotonic() + 10
    with jaxinit.Client(secured.grpc_url, token=FIRST) as old:
        while True:
            try:
                old.zeros(0, (1,))
            except jaxinit.Unauthenticated:
                break
            assert time.monotonic() < deadline, "the retired key was still accepted"
            time.sleep(0.2)
    assert not any(FIRST in line or SECOND in line for line in secured.output), "a key reached the log"


def test_no_keys_means_no_auth(server: ServerProcess) -> None:
    with jaxinit.Client(server.http_url, token="anything") as client:
        assert client.zeros(0, (1,)).tobytes() == bytes(4)
