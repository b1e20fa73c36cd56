"""The error body of every jaxinit route (``{"error": {"code", "type", "message"}}``), with
its status from the one error table, and the handlers that put every refusal in it."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jaxinit.protocol.errors import InternalError, InvalidArgument, JaxinitError, error_from_wire, mapping_for
from jaxinit.protocol.wire import REQUEST_ID_HEADER
from jaxinit_server.core.errors import as_domain_error

__all__ = ["error_body", "error_response", "install_error_handlers", "is_v2"]

log = logging.getLogger("jaxinit_server.rest")


def is_v2(path: str) -> bool:
    """A KServe v2 path: its errors are the protocol's ``{"error": "<message>"}``, which its
    clients (tritonclient) print as a string."""
    return path == "/v2" or path.startswith("/v2/")


def error_body(error: JaxinitError, path: str = "") -> dict[str, Any]:
    """The one error body: jaxinit's (code, type, message), or the v2 protocol's on a v2 path."""
    if is_v2(path):
        return {"error": error.message}
    return {"error": {"code": mapping_for(error).grpc_code, "type": type(error).__name__, "message": error.message}}


def error_response(
    error: JaxinitError, headers: dict[str, str] | None = None, status_code: int | None = None, path: str = ""
) -> JSONResponse:
    """``error`` as its status (the table's, unless ``status_code``) and the body for ``path``;
    an Overloaded's retry-after as ``Retry-After`` in whole seconds."""
    if (retry_after := getattr(error, "retry_after", None)) is not None:
        headers = {**(headers or {}), "Retry-After": str(max(1, math.ceil(retry_after)))}
    status = status_code if status_code is not None else mapping_for(error).http_status
    return JSONResponse(error_body(error, path), status_code=status, headers=headers)


def _logged(request: Request, exc: RequestValidationError, error: JaxinitError) -> dict[str, str] | None:
    """Log a request refused before its route ran (its body or query did not parse) as the
    route would have: what the caller asked for, its request id (echoed), the error."""
    telemetry = getattr(request.app.state, "telemetry", None)
    route = request.scope.get("route")
    if telemetry is None or route is None:
        return None
    call = telemetry.call("http", getattr(route, "name", "-"), request.headers.get(REQUEST_ID_HEADER))
    asked = exc.body if isinstance(exc.body, dict) else {}
    query = request.query_params
    call.asked(
        asked.get("initializer", request.path_params.get("initializer")),
        asked.get("shape", query.get("shape")),
        asked.get("dtype", query.get("dtype")),
    )
    call.close(error)
    return {REQUEST_ID_HEADER: call.request_id}


def install_error_handlers(app: FastAPI) -> None:
    """Domain errors, body validation, the framework's own refusals and anything unexpected,
    all in jaxinit's error body (never a stack trace)."""

    @app.exception_handler(JaxinitError)
    async def _domain_error(request: Request, exc: JaxinitError) -> JSONResponse:
        return error_response(exc, path=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()
        )
        if request.method == "POST" and "json" not in request.headers.get("content-type", ""):
            problems += "; send the body as JSON, with the header Content-Type: application/json"
        error = InvalidArgument(f"invalid request: {problems}")
        return error_response(error, headers=_logged(request, exc, error), path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _framework_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Refusals the framework makes before a handler (a body that is not JSON, an unknown
        # path, a wrong method) in jaxinit's error body, with their own status.
        error = error_from_wire(str(exc.detail), http_status=exc.status_code)
        headers = getattr(exc, "headers", None)
        return error_response(error, headers=headers, status_code=exc.status_code, path=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if (error := as_domain_error(exc)) is not None:  # e.g. a body nested past the stack
            return error_response(error, path=request.url.path)
        log.error("internal error on %s", request.url.path, exc_info=exc)
        return error_response(InternalError("internal server error"), path=request.url.path)
