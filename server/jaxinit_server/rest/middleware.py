"""ASGI middleware: bearer-token auth, the request-body cap, and the replica header."""

from __future__ import annotations

from typing import Any

from jaxinit.protocol.errors import JaxinitError, TooLarge, Unauthenticated
from jaxinit.protocol.wire import REPLICA_HEADER
from jaxinit_server.auth import OPEN_HTTP_PATHS, KeyRing, bearer, http_authorization
from jaxinit_server.rest.errors import error_response

__all__ = ["BearerAuth", "BodyLimit", "ReplicaHeader"]


class BearerAuth:
    """ASGI middleware: every path but health needs ``Authorization: Bearer <key>``."""

    def __init__(self, app: Any, keyring: KeyRing) -> None:
        self.app = app
        self.keyring = keyring

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_HTTP_PATHS:
            try:
                self.keyring.check(bearer(http_authorization(scope.get("headers") or ())))
            except JaxinitError as exc:
                challenge = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
                response = error_response(exc, headers=challenge, path=scope["path"])
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is refused with 413, by its
    Content-Length before it is read, or as soon as a streamed body passes the cap."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> TooLarge:
        return TooLarge(f"the request body is over {self.max_bytes} bytes, the server's limit (--max-body-bytes)")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await error_response(self._error(), headers={"Connection": "close"}, path=scope["path"])(
                scope, receive, send
            )
            return
        seen, over = 0, False

        async def counted() -> Any:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # the app sees the caller gone; the 413 is ours
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def unless_over(message: Any) -> None:
            if not over:
                await send(message)

        try:
            await self.app(scope, counted, unless_over)
        except Exception:
            if not over:
                raise
        if over:
            await error_response(self._error(), headers={"Connection": "close"}, path=scope["path"])(
                scope, receive, send
            )


class ReplicaHeader:
    """ASGI middleware: ``x-jaxinit-replica`` on every response (which replica answered)."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode("latin-1", "replace"))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, named)
