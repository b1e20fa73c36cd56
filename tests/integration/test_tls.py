"""TLS on both transports from certificate and key files, with a CA the test makes: the
client trusts it through ``ca_bundle``, refuses a server it cannot verify, and a plaintext
caller gets nowhere; tokens then travel encrypted."""

from __future__ import annotations

import pathlib
import ssl
from collections.abc import Iterator

import grpc
import httpx
import jax
import numpy as np
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from in_process import InProcessServer, in_process_server

import jaxinit

TOKEN = "tls-key-4e1d"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    folder = tmp_path_factory.mktemp("pki")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": folder / "ca.pem", "chain": folder / "server.pem", "key": folder / "server.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    paths["chain"].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return paths


@pytest.fixture(scope="module")
def tls_server(pki: dict[str, pathlib.Path]) -> Iterator[InProcessServer]:
    with in_process_server(
        "--tls-cert-file",
        str(pki["chain"]),
        "--tls-key-file",
        str(pki["key"]),
        "--api-keys",
        TOKEN,
    ) as srv:
        yield srv


def test_ready_line_says_https_and_grpcs(tls_server: InProcessServer) -> None:
    assert tls_server.http_url.startswith("https://") and tls_server.grpc_url.startswith("grpcs://")


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_exact_bytes_over_tls_with_the_ca_bundle(
    tls_server: InProcessServer, pki: dict[str, pathlib.Path], transport: str
) -> None:
    url = tls_server.grpc_url if transport == "grpc" else tls_server.http_url
    with jaxinit.Client(url, ca_bundle=str(pki["ca"]), token=TOKEN) as client:
        got = client.lecun_normal()(3, (17, 9))
    expected = np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(3), (17, 9)))
    assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_server_the_client_cannot_verify_is_refused(tls_server: InProcessServer, transport: str) -> None:
    url = tls_server.grpc_url if transport == "grpc" else tls_server.http_url
    other = trustme.CA()  # trusts a CA that did not sign the server's certificate
    with (
        other.cert_pem.tempfile() as wrong_ca,
        jaxinit.Client(url, ca_bundle=wrong_ca, token=TOKEN, retries=0, timeout=10) as client,
        pytest.raises(jaxinit.ServerUnavailable),
    ):
        client.lecun_normal()(3, (4, 4))


def test_plaintext_callers_get_nowhere(tls_server: InProcessServer) -> None:
    host, port = tls_server.http_url.removeprefix("https://").rsplit(":", 1)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{host}:{port}/healthz", timeout=5)
    with grpc.insecure_channel(tls_server.grpc_target) as channel, pytest.raises(grpc.RpcError) as caught:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_health_over_tls_without_a_token(tls_server: InProcessServer, pki: dict[str, pathlib.Path]) -> None:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    assert httpx.get(f"{tls_server.http_url}/readyz", verify=context, timeout=5).status_code == 200
    credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
    with grpc.secure_channel(tls_server.grpc_target, credentials) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_half_a_tls_configuration_is_refused(pki: dict[str, pathlib.Path]) -> None:
    with (
        pytest.raises(ValueError, match="both --tls-cert-file and --tls-key-file"),
        in_process_server("--tls-cert-file", str(pki["chain"])),
    ):
        pass


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_the_cli_over_tls(
    tls_server: InProcessServer, pki: dict[str, pathlib.Path], tmp_path: pathlib.Path, transport: str
) -> None:
    from jaxinit.cli import main

    url = tls_server.grpc_url if transport == "grpc" else tls_server.http_url
    out = tmp_path / "w.npy"
    code = main(
        [
            "--url",
            url,
            "--ca-bundle",
            str(pki["ca"]),
            "--token",
            TOKEN,
            "--retries",
            "0",
            "get",
            "lecun_normal",
            "--shape",
            "17,9",
            "--seed",
            "3",
            "-o",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    expected = np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(3), (17, 9)))
    assert np.load(out).tobytes() == expected.tobytes()
