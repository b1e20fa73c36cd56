"""What every route shares: the service, telemetry and caller as FastAPI dependencies,
JSON bodies parsed off the event loop, and the telemetry envelope of a call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.routing import APIRoute

from jaxinit.protocol.wire import REQUEST_ID_HEADER
from jaxinit_server import jsonio
from jaxinit_server.auth import http_caller
from jaxinit_server.core import Service
from jaxinit_server.core.errors import as_domain_error
from jaxinit_server.disconnects import unless_disconnected
from jaxinit_server.telemetry import Call, Telemetry

__all__ = ["CallerDep", "OffLoopJSONRoute", "ServiceDep", "TelemetryDep", "observe"]


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _telemetry(request: Request) -> Telemetry:
    telemetry: Telemetry = request.app.state.telemetry
    return telemetry


def _caller(request: Request) -> str:
    return http_caller(request)


ServiceDep = Annotated[Service, Depends(_service)]
TelemetryDep = Annotated[Telemetry, Depends(_telemetry)]
# Whom admission charges the call to: its API key with auth on, else its connection.
CallerDep = Annotated[str, Depends(_caller)]


async def observe(call: Call, work: Awaitable[Response], request: Request) -> Response:
    """``work``'s response with the request id, recorded when its last byte is sent; the
    work is cancelled if the client goes away before the response starts."""
    try:
        response = await unless_disconnected(request, work)
    except Exception as exc:
        if (error := as_domain_error(exc)) is not None and error is not exc:
            call.close(error)  # counted as what it is (a 400 or 413), not an internal error
            raise error from None
        call.close(exc)
        raise
    except BaseException as exc:
        call.close(exc)
        raise
    response.headers[REQUEST_ID_HEADER] = call.request_id
    if isinstance(response, StreamingResponse):
        response.body_iterator = _counted(response.body_iterator, call)
    else:
        call.sent(len(response.body))
        call.close()
    return response


async def _counted(body: AsyncIterable[Any], call: Call) -> AsyncIterator[Any]:
    try:
        async for data in body:
            yield data
            call.sent(len(data))
    except BaseException as exc:  # the client went away, or generation failed mid-stream
        call.close(exc)
        raise
    call.close()


class _OffLoopJSONRequest(Request):
    """A request whose JSON body, when large, is parsed on a worker thread by a parser
    that gives the event loop its turns (FastAPI parses bodies with this ``json()``)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            small = len(body) <= jsonio.SMALL
            self._json = jsonio.loads(body) if small else await asyncio.to_thread(jsonio.loads, body)
        return self._json


class OffLoopJSONRoute(APIRoute):
    """A route that reads JSON bodies through :class:`_OffLoopJSONRequest` (every router's)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_off_loop_json(request: Request) -> Response:
            try:
                return await handler(_OffLoopJSONRequest(request.scope, request.receive))
            except Exception as exc:
                # A RecursionError or MemoryError is a refusal (400 / 413): raised as its domain
                # error, it is answered by the app's JaxinitError handler. Left as it is, only
                # the catch-all handler answers it, and Starlette then re-raises it to the
                # server, which logs "Exception in ASGI application" with a traceback.
                if (error := as_domain_error(exc)) is not None and error is not exc:
                    raise error from None
                raise

        return with_off_loop_json
