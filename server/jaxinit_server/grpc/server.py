"""The gRPC composition root: jaxinit's servicer, KServe's, health and reflection on one
server, with the interceptors, bound to its port."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc
from jaxinit_server.auth import KeyRing
from jaxinit_server.core import Service
from jaxinit_server.grpc.interceptors import AuthInterceptor, DecodeGuard
from jaxinit_server.grpc.servicer import SERVICE_NAME, InitializersServicer
from jaxinit_server.kserve import grpc_service as kserve
from jaxinit_server.pools import Deployment
from jaxinit_server.telemetry import Telemetry

__all__ = ["create_grpc_server", "set_serving"]


def create_grpc_server(
    service: Service,
    host: str,
    port: int,
    *,
    telemetry: Telemetry | None = None,
    keyring: KeyRing | None = None,
    tls: tuple[bytes, bytes] | None = None,
    max_message_bytes: int = 16 * 2**20,
    deployment: Deployment | None = None,
) -> tuple[grpc.aio.Server, int, Any]:
    """A gRPC server with the jaxinit service, health and reflection, bound to ``host:port``;
    with ``tls`` (PEM certificate chain, PEM private key), over TLS only.

    Returns:
        (server, bound port, health servicer). Port 0 binds a free port. Not started.
    """
    interceptors: list[Any] = [DecodeGuard((SERVICE_NAME, kserve.SERVICE_NAME))]
    if keyring is not None and keyring.enabled:
        interceptors.insert(0, AuthInterceptor(keyring))
    # A larger request message is refused by gRPC itself with RESOURCE_EXHAUSTED.
    server = grpc.aio.server(
        interceptors=interceptors, options=[("grpc.max_receive_message_length", max_message_bytes)]
    )
    telemetry = telemetry or Telemetry()
    servicer = InitializersServicer(service, telemetry, keyring, deployment=deployment)
    pb_grpc.add_InitializersServicer_to_server(servicer, server)
    kserve.add_to_server(server, service, telemetry, keyring)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            kserve.SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    return server, _bind(server, host, port, tls), health_servicer


def _bind(server: grpc.aio.Server, host: str, port: int, tls: tuple[bytes, bytes] | None) -> int:
    """The port ``server`` is bound to at ``host:port`` (over TLS only, with ``tls``)."""
    if tls is None:
        bound = server.add_insecure_port(f"{host}:{port}")
    else:
        chain, key = tls
        bound = server.add_secure_port(f"{host}:{port}", grpc.ssl_server_credentials([(key, chain)]))
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    return int(bound)


async def set_serving(health_servicer: Any, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)
