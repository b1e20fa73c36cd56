"""Servers of a Service in this process: a grpc.aio server on a free loopback port and the
REST app through httpx's ASGI transport (with the shared-memory claim socket served, when
the Service offers shared memory)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

from jaxinit_server.core import Service
from jaxinit_server.grpc.server import create_grpc_server
from jaxinit_server.rest.app import create_app
from jaxinit_server.telemetry import Telemetry

__all__ = ["serve"]

T = TypeVar("T")


def serve(service: Service, work: Callable[[str, httpx.ASGITransport], Awaitable[T]]) -> T:
    """``work(grpc_url, asgi_transport)`` against servers of ``service`` made for it."""

    async def main() -> T:
        telemetry = Telemetry()
        telemetry.watch(service.state)
        server, port, _ = create_grpc_server(service, "127.0.0.1", 0, telemetry=telemetry)
        await server.start()
        claims = asyncio.ensure_future(service.regions.run()) if service.regions else None
        try:
            app = create_app(service, telemetry=telemetry)
            return await work(f"grpc://127.0.0.1:{port}", httpx.ASGITransport(app=app))
        finally:
            if claims is not None:
                claims.cancel()
            await server.stop(grace=None)

    return asyncio.run(main())
