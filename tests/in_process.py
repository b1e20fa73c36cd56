"""Both servers of ``jaxinit-server`` in this process: the gRPC server and the REST app on
free loopback ports, over one :class:`Service`, on an event loop of their own (a thread).

For tests of what a caller sees over real sockets (the client, GET/POST forms, errors,
limits) where the server's process is not under test: no JAX import or warm-up per server,
and the test can wait on the service's own state (``server.service.state()``) instead of
polling an endpoint. Signals, crashes, the command line and the ready line stay in
``tests/integration`` with a real process (``running_server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc.aio
import httpx
import uvicorn

from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc
from jaxinit_server.auth import KeyRing
from jaxinit_server.core import Limits, Service
from jaxinit_server.grpc.server import create_grpc_server, set_serving
from jaxinit_server.logs import formatter
from jaxinit_server.main import _bind_http, _HttpServer, build_deployment, build_service, parse_settings
from jaxinit_server.rest.app import create_app
from jaxinit_server.settings import Settings
from jaxinit_server.telemetry import Telemetry

__all__ = ["InProcessServer", "grpc_call", "in_process_server", "rest_call", "serve", "wait_until"]

T = TypeVar("T")


class _Lines(logging.Handler):
    """The server's log records as text lines (what a process's output would show)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines
        # The server's JSON form: every field a record carries (the request log's) is there.
        self.setFormatter(formatter("json"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record) + "\n")


class _Alive:
    """What tests ask a server process (``poll()``: None while serving), for a thread."""

    def __init__(self, thread: threading.Thread) -> None:
        self._thread = thread
        self.pid = os.getpid()  # its memory is this process's

    def poll(self) -> int | None:
        return None if self._thread.is_alive() else 0


@dataclass
class InProcessServer:
    service: Service
    telemetry: Telemetry
    grpc_target: str
    http_url: str
    process: _Alive
    output: list[str] = field(default_factory=list)

    @property
    def grpc_url(self) -> str:
        scheme = "grpcs" if self.http_url.startswith("https:") else "grpc"
        return f"{scheme}://{self.grpc_target}"

    def state(self) -> dict[str, Any]:
        """The service's state, as ``/readyz`` reports it."""
        return self.service.state()


@contextlib.contextmanager
def ready_service(limits: Limits) -> Iterator[Service]:
    """A Service under ``limits``, ready (no warm-up), closed when done: what an adapter
    test serves in process."""
    service = Service(limits)
    service.ready = True
    try:
        yield service
    finally:
        service.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Wait for ``condition`` (a state of the service, never a duration); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def in_process_server(*args: str, settings: Settings | None = None) -> Iterator[InProcessServer]:
    """Serve ``jaxinit-server``'s flags (``args``, as on its command line; no warm-up, ports 0,
    127.0.0.1) from this process until the block ends, then drain and close."""
    settings = settings or parse_settings(
        ["--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--no-warm-up", *args]
    )
    started: list[InProcessServer] = []
    failed: list[BaseException] = []
    up = threading.Event()
    holder: dict[str, Any] = {}
    lines: list[str] = []
    handler = _Lines(lines)
    # What the process would print: its own loggers, and uvicorn's and asyncio's errors.
    loggers = [logging.getLogger(name) for name in ("jaxinit_server", "uvicorn", "asyncio")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
    loggers[0].setLevel(getattr(logging, settings.log_level.upper()))

    async def serve() -> None:
        stop = asyncio.Event()
        holder["stop"] = (asyncio.get_running_loop(), stop)
        service = build_service(settings)
        telemetry = Telemetry(log_requests=settings.request_log, replica=settings.replica)
        keyring = KeyRing((settings.api_keys or "").split(","), settings.api_keys_file)
        tls = settings.tls()
        deployment = build_deployment(settings, service)
        grpc_server, grpc_port, health = create_grpc_server(
            service,
            settings.host,
            settings.grpc_port,
            telemetry=telemetry,
            keyring=keyring,
            tls=tls,
            max_message_bytes=settings.max_body_bytes,
            deployment=deployment,
        )
        sock = _bind_http(settings.host, settings.http_port)
        http = _HttpServer(
            uvicorn.Config(
                create_app(
                    service,
                    telemetry=telemetry,
                    keyring=keyring,
                    max_body_bytes=settings.max_body_bytes,
                    deployment=deployment,
                ),
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=max(1, math.ceil(settings.grace_seconds)),
                lifespan="off",
                ssl_certfile=settings.tls_cert_file,
                ssl_keyfile=settings.tls_key_file,
            )
        )
        await grpc_server.start()
        http_task = asyncio.ensure_future(http.serve(sockets=[sock]))
        while not http.started and not http_task.done():
            await asyncio.sleep(0.005)
        if settings.warm_up:
            await asyncio.to_thread(service.warm_up)
        service.ready = True
        await set_serving(health, True)
        telemetry.watch(service.state)
        tasks = [asyncio.ensure_future(telemetry.watch_loop())]
        if service.stalls:
            tasks.append(asyncio.ensure_future(service.stalls.run()))
        if service.regions:
            tasks.append(asyncio.ensure_future(service.regions.run()))
        scheme = "https" if tls else "http"
        port = sock.getsockname()[1]
        started.append(
            InProcessServer(
                service,
                telemetry,
                f"127.0.0.1:{grpc_port}",
                f"{scheme}://127.0.0.1:{port}",
                _Alive(threading.current_thread()),
                lines,
            )
        )
        up.set()
        await stop.wait()
        service.stop_accepting()
        await set_serving(health, False)
        http.should_exit = True
        await grpc_server.stop(settings.grace_seconds)
        service.abort()
        await asyncio.wait({http_task}, timeout=settings.grace_seconds + 1)
        for task in tasks:
            task.cancel()
        # Calls cut off at the stop (an abandoned stream's reader, say) end here, not at exit.
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        service.close()
        telemetry.close()

    def run() -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # reported to the test that started it
            failed.append(exc)
        finally:
            loop.close()
            up.set()

    thread = threading.Thread(target=run, name="jaxinit-in-process-server", daemon=True)
    thread.start()
    try:
        up.wait()
        if failed:
            raise failed[0]
        yield started[0]
    finally:
        if "stop" in holder and thread.is_alive():
            loop, stop = holder["stop"]
            loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        for logger, old in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(old)
    if failed:
        raise failed[0]


def serve(service: Service, work: Callable[[str, httpx.ASGITransport], Awaitable[T]]) -> T:
    """``work(grpc_url, asgi_transport)`` on this thread's own event loop, against a gRPC
    server of ``service`` on a free loopback port and its REST app through httpx's ASGI
    transport (with the shared-memory claim socket served, when it offers shared memory)."""

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


def rest_call(service: Service, work: Callable[[httpx.AsyncClient], Awaitable[T]], timeout: float = 5.0) -> T:
    """``work(http)``: an httpx client of ``service``'s REST app through the ASGI transport
    (an exception the app re-raises fails the test: httpx's default)."""

    async def main() -> T:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process", timeout=timeout) as http:
            return await work(http)

    return asyncio.run(main())


def grpc_call(service: Service, work: Callable[[pb_grpc.InitializersStub], Awaitable[T]]) -> T:
    """``work(stub)``: a raw stub of a gRPC server of ``service`` on a free loopback port."""

    async def main() -> T:
        server, port, _ = create_grpc_server(service, "127.0.0.1", 0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await work(pb_grpc.InitializersStub(channel))
        finally:
            await server.stop(grace=None)

    return asyncio.run(main())
