"""gRPC server interceptors: requests that do not parse, and bearer-token authentication."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from jaxinit.protocol.errors import InvalidArgument, JaxinitError
from jaxinit_server.auth import OPEN_GRPC_PREFIXES, KeyRing, bearer, grpc_authorization
from jaxinit_server.grpc.status import abort

__all__ = ["AuthInterceptor", "DecodeGuard", "Malformed"]


class Malformed:
    """What a request message that does not parse becomes: the handler, not gRPC's
    machinery, answers it (INVALID_ARGUMENT; gRPC's own answer is UNKNOWN, with the
    parser's exception in it, and an error logged)."""

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error


class DecodeGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Request messages of jaxinit's services are parsed by a deserializer that cannot raise:
    a malformed one reaches a unary handler as a refusal, and a streaming handler as a
    :class:`Malformed` item it answers in the stream."""

    def __init__(self, services: tuple[str, ...]) -> None:
        self._prefixes = tuple(f"/{name}/" for name in services)

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self._prefixes) or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        def safe(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception as exc:  # DecodeError, or anything a parser raises on bytes
                return Malformed(
                    InvalidArgument(
                        f"the request message does not parse as {details.method}'s request type ({type(exc).__name__})"
                    )
                )

        codecs = {"request_deserializer": safe, "response_serializer": handler.response_serializer}
        if handler.request_streaming:
            kind = (
                grpc.stream_stream_rpc_method_handler
                if handler.response_streaming
                else grpc.stream_unary_rpc_method_handler
            )
            return kind(handler.stream_stream or handler.stream_unary, **codecs)
        return _unary_request(handler, codecs)


def _unary_request(handler: Any, codecs: dict[str, Any]) -> Any:
    """``handler`` (one request message) with ``codecs``: a request that did not parse is
    refused with its InvalidArgument before the method sees it."""
    behavior = handler.unary_stream or handler.unary_unary

    if handler.response_streaming:

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, Malformed):
                await abort(context, request.error)
            async for message in behavior(request, context):
                yield message

        return grpc.unary_stream_rpc_method_handler(stream, **codecs)

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            await abort(context, request.error)
        return await behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(unary, **codecs)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Every RPC but health needs ``authorization: Bearer <key>`` (see :mod:`auth`)."""

    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_GRPC_PREFIXES):
            return handler
        try:
            self._keyring.check(bearer(grpc_authorization(details.invocation_metadata)))
        except JaxinitError as exc:
            return _refusal(handler, exc)
        return handler


def _refusal(handler: Any, error: JaxinitError) -> Any:
    """A handler of the same kind as ``handler`` that only fails with ``error``."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(context, error)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await abort(context, error)
        yield  # pragma: no cover - makes this an async generator

    codecs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, **codecs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **codecs)
    return grpc.stream_stream_rpc_method_handler(stream, **codecs)
