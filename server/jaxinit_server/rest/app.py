"""The REST composition root: the FastAPI app with its middleware, error handlers and
routers over one :class:`Service`."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from jaxinit.protocol.errors import HTTP_STATUSES
from jaxinit_server.auth import KeyRing
from jaxinit_server.core import Service
from jaxinit_server.pools import Deployment
from jaxinit_server.rest.deps import OffLoopJSONRoute
from jaxinit_server.rest.errors import install_error_handlers
from jaxinit_server.rest.middleware import BearerAuth, BodyLimit, ReplicaHeader
from jaxinit_server.rest.routes import generate, health, kserve, models, registry
from jaxinit_server.rest.schemas import ErrorResponse
from jaxinit_server.telemetry import Telemetry

__all__ = ["create_app"]


def create_app(
    service: Service,
    *,
    title: str = "jaxinit",
    telemetry: Telemetry | None = None,
    keyring: KeyRing | None = None,
    max_body_bytes: int = 16 * 2**20,
    deployment: Deployment | None = None,
) -> FastAPI:
    """The REST gateway over ``service``.

    Args:
        telemetry: records requests (``/metrics``); a fresh one by default.
        keyring: when it has keys, a bearer token is needed on all but health.
        max_body_bytes: a larger request body is a 413 before it is read.
        deployment: the pools ``/v1/versions`` lists (default: this server alone).
    """
    # /docs (Swagger UI) and /redoc from assets installed with the server (fastapi-offline
    # vendors them), not a public CDN: they work in an air-gapped cluster.
    app = FastAPIOffline(
        title=title,
        version=service.identity.jaxinit_version,
        description="JAX initializers, bit-identical to the server's JAX. Tensors are raw "
        "little-endian bytes (application/octet-stream), .npy files or JSON.",
        responses={code: {"model": ErrorResponse} for code in HTTP_STATUSES},  # the one error table's
        swagger_ui_parameters={"validatorUrl": None},  # its badge would ask validator.swagger.io
    )
    app.router.route_class = OffLoopJSONRoute
    app.state.service = service
    app.state.telemetry = telemetry = telemetry or Telemetry()
    app.state.keyring = keyring
    app.state.deployment = deployment or Deployment(service.identity.jax_version)
    if keyring is not None and keyring.enabled:
        app.add_middleware(BearerAuth, keyring=keyring)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if telemetry.replica:  # outermost: every response names its replica, a 401 too
        app.add_middleware(ReplicaHeader, replica=telemetry.replica)
    install_error_handlers(app)
    for routes in (health, kserve, registry, generate, models):
        app.include_router(routes.router)
    return app
