"""``jaxinit-server``: gRPC and HTTP in one process.

    jaxinit-server --host 127.0.0.1 --grpc-port 50051 --http-port 8000

Port 0 picks a free port; the bound ports are printed on one line
(``jaxinit-server ready grpc=HOST:PORT http=http://HOST:PORT``, inside a JSON object
with ``--log-format json``) once the server is warmed up and serving. Settings also
come from ``JAXINIT_*`` variables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import sys
import typing
from collections.abc import Iterator, Sequence
from typing import Any

import uvicorn
from pydantic import ValidationError

from jaxinit_server.auth import KeyRing
from jaxinit_server.core import Service, chunked
from jaxinit_server.core.config import Config
from jaxinit_server.grpc.server import create_grpc_server, set_serving
from jaxinit_server.jsonio import collect_garbage
from jaxinit_server.logs import configure as configure_logging
from jaxinit_server.logs import ready_logger
from jaxinit_server.pools import Deployment
from jaxinit_server.rest.app import create_app
from jaxinit_server.settings import Settings
from jaxinit_server.telemetry import Telemetry

__all__ = ["main", "serve"]

log = logging.getLogger("jaxinit_server")


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the environment, overridden by the flags given."""
    parser = argparse.ArgumentParser(prog="jaxinit-server", description=__doc__.split("\n")[0])
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=field.description)
        elif typing.get_origin(field.annotation) is typing.Literal:
            parser.add_argument(flag, choices=typing.get_args(field.annotation), default=None, help=field.description)
        else:
            # `X | None` settings take an X on the command line.
            kind = next((a for a in typing.get_args(field.annotation) if a is not type(None)), field.annotation)
            parser.add_argument(flag, type=typing.cast(Any, kind), default=None, help=field.description)
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    return Settings(**given)


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: this process has one shutdown path."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_service(settings: Settings) -> Service:
    """The service ``settings`` describe (this composition root's; in-process test servers
    build theirs with it too)."""
    return Service(
        Config(
            limits=settings.limits(),
            workers=settings.workers,
            whole_workers=settings.whole_workers,
            worker_rss_bytes=settings.worker_rss_bytes,
            compilation_cache_dir=settings.compilation_cache_path(),
            stall_seconds=settings.stall_seconds,
            log_level=settings.log_level,
            cache_bytes=settings.cache_bytes,
            cache_dir=settings.cache_dir,
            cache_dir_bytes=settings.cache_dir_bytes,
            shared_memory_dir=settings.shared_memory_dir if settings.shared_memory else None,
            shared_memory_lease=settings.shared_memory_lease,
            shared_memory_bytes=settings.shared_memory_bytes,
        )
    )


def build_deployment(settings: Settings, service: Service) -> Deployment:
    """The pools ``/v1/versions`` and ListVersions list (``--pools``; none: this server)."""
    return Deployment(
        service.identity.jax_version,
        settings.pool_list(),
        default_pool=settings.default_pool,
        token=settings.api_token(),
    )


def _bind_http(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted connections only then.
    # Without it every response waited on Nagle and the peer's delayed ACK: about
    # 40 ms per request from an async client (measured: /healthz 23 req/s, 695 with it).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run both servers until ``stop`` is set (or SIGTERM/SIGINT), then drain and return."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)

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
    http_port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(
            service, telemetry=telemetry, keyring=keyring, max_body_bytes=settings.max_body_bytes, deployment=deployment
        ),
        log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers go through the root handler (logs.configure)
        access_log=False,  # one structured line per request instead (jaxinit_server.requests)
        timeout_graceful_shutdown=max(1, math.ceil(settings.grace_seconds)),
        lifespan="off",
        ssl_certfile=settings.tls_cert_file,
        ssl_keyfile=settings.tls_key_file,
    )
    http_server = _HttpServer(config)

    chunked.require_proof()  # every family runs whole until the self-check has proven it here
    await grpc_server.start()
    http_task = asyncio.ensure_future(http_server.serve(sockets=[sock]))
    await set_serving(health, False)
    await asyncio.to_thread(service.warm_up, requests=settings.warm_up)
    service.ready = True
    await set_serving(health, True)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    scheme = "https" if tls else "http"
    grpc_address, http_url = f"{host}:{grpc_port}", f"{scheme}://{host}:{http_port}"
    ready_logger(settings.log_format).info(
        "jaxinit-server ready grpc=%s http=%s", grpc_address, http_url, extra={"grpc": grpc_address, "http": http_url}
    )

    telemetry.watch(service.state)
    lag = asyncio.ensure_future(telemetry.watch_loop())
    stalls = asyncio.ensure_future(service.stalls.run()) if service.stalls else None
    sweeper = asyncio.ensure_future(service.regions.run()) if service.regions else None
    collector = asyncio.ensure_future(collect_garbage(lambda: service.idle and not telemetry.calls_in_flight))
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({stopper, http_task}, return_when=asyncio.FIRST_COMPLETED)
    # Graceful stop, within the grace period whatever is running: report not ready, take no
    # new calls, let in-flight ones finish; near the end cut off what is left (its callers
    # get a retryable 503 / UNAVAILABLE), then close the transports.
    grace = settings.grace_seconds
    deadline = loop.time() + grace
    service.stop_accepting()
    await set_serving(health, False)
    http_server.should_exit = True
    grpc_stopped = asyncio.ensure_future(grpc_server.stop(grace))
    while service.admission.streams and loop.time() < deadline - min(1.0, grace / 5):
        await asyncio.sleep(0.05)
    service.abort()
    await asyncio.wait({grpc_stopped, http_task}, timeout=max(0.0, deadline - loop.time()) + 0.5)
    stopper.cancel()
    lag.cancel()
    collector.cancel()
    if stalls is not None:
        stalls.cancel()
    if sweeper is not None:
        sweeper.cancel()
    service.close()
    telemetry.close()


def _problem(error: Any) -> str:
    """One settings error as a line: the setting (a check of several names its flags
    itself) and pydantic's message without its "Value error, " prefix."""
    message = str(error["msg"]).removeprefix("Value error, ")
    where = ".".join(map(str, error["loc"]))
    return f"{where}: {message}" if where else message


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(argv)
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors())
        print(f"jaxinit-server: invalid settings: {problems}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    os.environ["JAXINIT_LOG_FORMAT"] = settings.log_format  # the whole-tensor workers log alike
    code = 0
    try:
        # Not asyncio.run: its close waits for every executor thread, and a thread still
        # inside a JAX call must not hold the exit past the grace period.
        asyncio.new_event_loop().run_until_complete(serve(settings))
    except OSError as exc:  # a port in use, a certificate not found: one line, in the log's format
        log.error("jaxinit-server: %s", exc)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
